"""A pooled keep-alive HTTP/1.1 client for one upstream, over asyncio protocols.

The http mode sends every request to the same host and port, so this client is nothing more:
no URL handling, no redirects, no cookies, no decompression. A request is written as it is
given (a small whole body in the same write as its head; a streamed one as the client's bytes
arrive, chunked when its length is unknown), the response is parsed by httptools (llhttp) and
its body handed over chunk by chunk, reading paused while the consumer is behind. A connection
goes back to the pool only when its response was read to the end, the request was sent whole
and both sides allow keep-alive.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as tls
import time
from collections.abc import Sequence
from typing import Protocol, cast

import httptools

from ..forwarding import HOP_BY_HOP

HIGH_WATER = 256 * 1024
"""Response bytes buffered for a slow consumer before reading from the upstream pauses."""

IDLE_TIMEOUT = 30.0
"""An idle pooled connection older than this is closed rather than reused."""

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_CHUNK_END = b"0\r\n\r\n"
_NO_TOKENS: frozenset[str] = frozenset()

# What a response header is to the client's parsing (lower-case name → kind); any other name
# is returned to the client as it came.
_CONTENT_LENGTH, _CONTENT_TYPE, _DATE, _TRANSFER_ENCODING, _CONNECTION, _HOP = range(6)
_HEADER_KINDS: dict[bytes, int] = {
    **{name.encode(): _HOP for name in HOP_BY_HOP},
    b"content-length": _CONTENT_LENGTH,
    b"content-type": _CONTENT_TYPE,
    b"date": _DATE,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
}


def encode(text: str) -> bytes:
    """Header text to bytes: the inverse of the server's decoding, so any byte round-trips."""
    return text.encode("utf-8", "surrogateescape")


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def line_name(line: bytes) -> str:
    """The lower-case name of a header line ``Name: value``."""
    return decode(line.partition(b":")[0]).lower()


class UpstreamError(Exception):
    """The upstream refused, dropped or broke the connection, or sent a malformed response."""


class BodySource(Protocol):
    """A request body that streams: the client's bytes as they arrive."""

    async def next_chunk(self) -> bytes:
        """The next bytes of the body, ``b""`` at its end. May raise to abort the request."""


class UpstreamResponse:
    """One response: its head at once, its body read with :meth:`read_chunk`.

    Call :meth:`release` when done with it (also after an error): it returns the connection
    to the pool or closes it.
    """

    __slots__ = (
        "status",
        "raw_reason",
        "version",
        "raw_headers",
        "returned",
        "content_length",
        "chunked",
        "typed",
        "dated",
        "connection_tokens",
        "keep_alive",
        "complete",
        "_headers",
        "_connection",
        "_chunks",
        "_buffered",
        "_waiter",
        "_error",
    )

    def __init__(self, connection: UpstreamConnection) -> None:
        self.status = 0
        self.raw_reason = b""
        self.version = "1.1"
        self.raw_headers: list[tuple[bytes, bytes]] = []
        """As received, in order, hop-by-hop ones included."""
        self.returned: list[bytes] = []
        """The header lines (``Name: value``, without CRLF) a proxy returns as they came: not
        the hop-by-hop ones nor Content-Length (see :mod:`...forwarding`), but still those the
        Connection header names (:attr:`connection_tokens`), which may come after them."""
        self.content_length: int | None = None
        self.chunked = False
        self.typed = False
        """It has a Content-Type."""
        self.dated = False
        """It has a Date."""
        self._headers: list[tuple[str, str]] | None = None
        self.connection_tokens: frozenset[str] | set[str] = _NO_TOKENS
        """The header names its Connection header lists (lower case): hop-by-hop too."""
        self.keep_alive = False
        self.complete = False
        """The whole body has arrived (it may still be buffered here, unread)."""
        self._connection: UpstreamConnection | None = connection
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    @property
    def reason(self) -> str:
        return decode(self.raw_reason)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """:attr:`raw_headers` as text (decoded on first use: a relay needs only the bytes)."""
        if self._headers is None:
            self._headers = [(decode(name), decode(value)) for name, value in self.raw_headers]
        return self._headers

    def returned_lines(self) -> list[bytes]:
        """:attr:`returned` without the headers the Connection header names."""
        tokens = self.connection_tokens
        if not tokens:
            return self.returned
        return [line for line in self.returned if line_name(line) not in tokens]

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet read."""
        return self._buffered

    @property
    def upgraded(self) -> bool:
        return self.status == 101

    async def read_chunk(self) -> bytes:
        """Whatever body bytes have arrived (waiting for some), ``b""`` at the end.

        Raises:
            UpstreamError: the upstream broke off before the end of the body.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._take_buffered()
        if self._connection is not None:
            self._connection.consumer_caught_up()
        return data

    def read_whole_nowait(self) -> bytes | None:
        """The whole body if it has all arrived (read at once, no waiting), else None."""
        if not self.complete or self._error is not None:
            return None
        return self._take_buffered()

    def _take_buffered(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return data

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (``limit`` bounds it: longer raises :class:`ValueError`)."""
        parts = []
        size = 0
        while chunk := await self.read_chunk():
            size += len(chunk)
            if limit is not None and size > limit:
                raise ValueError(f"response body longer than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Return the connection to the pool if it can carry another request, else close it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            reusable = self.complete and self.keep_alive and self._error is None
            connection.finished(reusable and not self._chunks)

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """For a ``101``: the raw connection, out of the pool, and the bytes that followed the
        head. The caller owns (and closes) it from now on."""
        connection, self._connection = self._connection, None
        assert connection is not None and connection.transport is not None and self.upgraded
        connection.closed = True  # to the pool: it is no longer an HTTP connection
        connection.pool.forget(connection)
        return connection.transport, connection.after_upgrade

    # -- fed by the connection --------------------------------------------------------------

    def _feed(self, data: bytes) -> int:
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()
        return self._buffered

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self.complete:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection: writes requests, parses responses with httptools."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.after_upgrade = b""
        self._response: UpstreamResponse | None = None
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._head_only = False
        self._received_any = False
        self._reading_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._sender: asyncio.Task[None] | None = None
        self._sent_whole = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._head is None and self._response is None:
            self._abort(UpstreamError("the upstream sent bytes nobody asked for"))
            return
        self._received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            self.after_upgrade = data[offset:]
            self.transport.pause_reading()  # type: ignore[union-attr]  # the tunnel resumes
        except httptools.HttpParserError as exc:
            self._abort(UpstreamError(f"malformed response from the upstream: {exc}"))

    def eof_received(self) -> bool | None:
        return False  # close: a half-closed upstream connection is of no further use

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        response = self._response
        if response is not None and not response.complete and self._head is None:
            if response.content_length is None and not response.chunked:
                response._finish()  # a body delimited by the end of the connection
                self._response = None
        self._fail(self._lost_error(exc))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._response = UpstreamResponse(self)

    def on_status(self, reason: bytes) -> None:
        assert self._response is not None
        self._response.raw_reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self._response
        assert response is not None
        response.raw_headers.append((name, value))
        kind = _HEADER_KINDS.get(name.lower())
        if kind is None:  # most headers: returned as they came
            response.returned.append(name + b": " + value)
        elif kind == _CONTENT_LENGTH:
            response.content_length = int(value) if value.isdigit() else None
        elif kind == _CONTENT_TYPE:
            response.typed = True
            response.returned.append(name + b": " + value)
        elif kind == _DATE:
            response.dated = True
            response.returned.append(name + b": " + value)
        elif kind == _TRANSFER_ENCODING:
            response.chunked = b"chunked" in value.lower()
        elif kind == _CONNECTION:
            response.connection_tokens = response.connection_tokens | {
                t.strip().lower() for t in decode(value).split(",")
            }

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        status = self.parser.get_status_code()
        response.status = status
        response.version = self.parser.get_http_version()
        if 100 <= status < 200 and status != 101:
            self._response = None  # an interim answer (100 Continue): the real one follows
            return
        response.keep_alive = self.parser.should_keep_alive()
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(response)
        if self._head_only:
            # A HEAD's answer has no body whatever its Content-Length says; llhttp cannot be
            # told so, hence a fresh parser for the next response.
            self.parser = httptools.HttpResponseParser(self)
            self._message_complete(response)

    def on_body(self, body: bytes) -> None:
        response = self._response
        assert response is not None
        if response._feed(body) > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        response = self._response
        if response is not None:
            response.keep_alive = response.keep_alive and self.parser.should_keep_alive()
            self._message_complete(response)

    def _message_complete(self, response: UpstreamResponse) -> None:
        self._response = None
        response._finish()

    # -- used by the pool and the response --------------------------------------------------

    def consumer_caught_up(self) -> None:
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def send(
        self,
        method: str,
        head: bytes,
        body: bytes | bytearray | None,
        stream: BodySource | None,
        chunked: bool,
    ) -> asyncio.Future[UpstreamResponse]:
        """Write a request and return the future of its response's head."""
        assert self.transport is not None
        loop = self.loop
        self._head = head_future = loop.create_future()
        self._head_only = method == "HEAD"
        self._received_any = False
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        if stream is None:
            self._sent_whole = True
        else:
            self._sent_whole = False
            self._sender = loop.create_task(self._send_stream(stream, chunked))
        return head_future

    def usable(self, now: float, idle_timeout: float) -> bool:
        """Fit to carry another request: open (its end not even announced) and not idle for
        so long that the upstream may be closing it right now."""
        transport = self.transport
        return (
            not self.closed
            and transport is not None
            and not transport.is_closing()
            and now - self.idle_since < idle_timeout
        )

    def may_resend(self, method: str, error: BaseException) -> bool:
        """``error`` came of an idle connection the upstream closed just as it was reused,
        before any byte of an answer: a request of an idempotent ``method`` (its body sent
        whole) may go again, on a new connection."""
        return (
            isinstance(error, UpstreamError)
            and method in IDEMPOTENT
            and self.reused
            and self.closed
            and not self._received_any
        )

    async def _send_stream(self, stream: BodySource, chunked: bool) -> None:
        transport = self.transport
        assert transport is not None
        try:
            while chunk := await stream.next_chunk():
                if self.closed:
                    return
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                if self._writing_paused:
                    await self._drained()
            if chunked and not self.closed:
                transport.write(_CHUNK_END)
            self._sent_whole = True
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the client's body failed: the request cannot complete
            self._abort(exc)

    async def _drained(self) -> None:
        self._drain = self.loop.create_future()
        await self._drain

    def finished(self, response_read_whole: bool) -> None:
        """The caller is done with the current response (``response_read_whole``: to its end,
        and it allows keep-alive)."""
        sender, self._sender = self._sender, None
        reusable = (
            response_read_whole
            and self._sent_whole
            and self._response is None
            and not self.closed
            and self._head is None
        )
        if sender is not None and not sender.done():
            sender.cancel()
            reusable = False
        if not reusable:
            self.close()
            return
        self.consumer_caught_up()
        self.reused = True
        self.pool.keep(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()

    # -- failures ---------------------------------------------------------------------------

    def _abort(self, error: BaseException) -> None:
        self._fail(error)
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: BaseException) -> None:
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(error)
        response = self._response
        if response is not None:
            response._fail(error)
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(error)

    def _lost_error(self, exc: Exception | None) -> UpstreamError:
        if exc is None:
            return UpstreamError("the upstream closed the connection")
        return UpstreamError(f"the connection to the upstream broke: {exc}")


class UpstreamPool:
    """Keep-alive connections to one ``host:port``, newest idle one reused first."""

    def __init__(
        self,
        host: str,
        port: int,
        idle_timeout: float = IDLE_TIMEOUT,
        *,
        ssl: tls.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self.ssl = ssl
        """TLS to the upstream when given (the gateway's https functions)."""
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()
        self.opened = 0
        """Connections made so far (a measure of how well keep-alive works)."""

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | bytearray | None = None,
        *,
        stream: BodySource | None = None,
        content_length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request; return its response once the head has arrived.

        ``body`` is sent whole with a Content-Length; else ``stream`` is sent as it comes,
        with ``content_length`` if known, else chunked. ``headers`` must not frame the body
        (no Content-Length or Transfer-Encoding): this method does. A cancelled or failed
        request closes its connection.

        Raises:
            UpstreamError: no connection, or it broke before the response's head.
            Whatever ``stream`` raised, when the client's body failed first.
        """
        chunked = stream is not None and content_length is None
        head = request_head(method, target, headers, body, stream, content_length)
        return await self.send(method, head, body, stream, chunked)

    async def send(
        self,
        method: str,
        head: bytes,
        body: bytes | bytearray | None = None,
        stream: BodySource | None = None,
        chunked: bool = False,
    ) -> UpstreamResponse:
        """:meth:`request` with the head already written out, its framing included (a
        Content-Length for ``body``; ``chunked`` for a ``stream`` of unknown length)."""
        connection = self.take_idle() or await self._connect()
        try:
            return await connection.send(method, head, body, stream, chunked)
        except UpstreamError as error:
            connection.close()
            if stream is not None or not connection.may_resend(method, error):
                raise
        except BaseException:
            connection.close()
            raise
        # The upstream closed an idle connection just as it was reused: once more on a new one.
        connection = await self._connect()
        try:
            return await connection.send(method, head, body, None, False)
        except BaseException:
            connection.close()
            raise

    async def open(
        self, method: str, target: str, headers: Sequence[tuple[str, str]]
    ) -> UpstreamResponse:
        """Send an upgrade request (its ``headers`` include ``Connection`` and ``Upgrade``)
        on a new connection; a ``101`` answer can then be :meth:`UpstreamResponse.detach`-ed."""
        head = request_head(method, target, headers, None, None, None)
        connection = await self._connect()
        try:
            return await connection.send(method, head, None, None, False)
        except BaseException:
            connection.close()
            raise

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or carrying a request."""
        return len(self._open)

    def close(self) -> None:
        for connection in list(self._open):
            connection.close()

    def take_idle(self) -> UpstreamConnection | None:
        """An idle connection fit for a request (out of the pool until it is kept again)."""
        now = time.monotonic()  # (get_running_loop costs a getpid() on Python 3.11)
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.usable(now, self.idle_timeout):
                return connection
            connection.close()
        return None

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_connection(
                lambda: UpstreamConnection(self), self.host, self.port, ssl=self.ssl
            )
        except OSError as exc:
            reason = exc.strerror or str(exc) or exc.__class__.__name__
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {reason}") from exc
        self._open.add(protocol)
        self.opened += 1
        return protocol

    # -- called by connections --------------------------------------------------------------

    def keep(self, connection: UpstreamConnection) -> None:
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)


def request_head(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes | bytearray | None,
    stream: BodySource | None,
    content_length: int | None,
) -> bytes:
    """A request's head: ``headers`` as given, then the framing of its body, as
    :meth:`UpstreamPool.request` describes it."""
    lines = [f"{method} {target} HTTP/1.1", *map(": ".join, headers)]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    elif stream is not None:
        if content_length is not None:
            lines.append(f"Content-Length: {content_length}")
        else:
            lines.append("Transfer-Encoding: chunked")
    lines += ("", "")  # the blank line that ends the head
    return encode("\r\n".join(lines))
