"""One client connection: httptools (llhttp) parses, one handler task per request, in order.

The hot path is uvicorn's: parser callbacks build the request, ``on_headers_complete`` starts
its handler, and responses are written straight to the transport. Requests pipelined behind one
in flight wait in a queue and are answered in order. The handler task is cancelled when the
client goes away (aiohttp's ``handler_cancellation``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import httptools
from multidict import CIMultiDict

from .express import NOTE, Call, Express, Note
from .request import WHOLE_BODY_LIMIT, BodyStream, Request
from .response import Response, StreamResponse

log = logging.getLogger("watchdog.http")

Handler = Callable[[Request], Awaitable[StreamResponse]]
BadRequestLog = Callable[[str | None, str], None]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PIPELINE_LIMIT = 16  # queued requests that pause reading from the client
_UPGRADE_BUFFER_LIMIT = 64 * 1024
_LINGER_LIMIT = 1024 * 1024  # unwanted body bytes read and dropped to keep a connection


class Limits:
    """What one connection may send and how long it may take. (A plain class: a dataclass
    costs a millisecond of start-up to build.)"""

    __slots__ = ("head_timeout", "max_line", "max_field", "max_head", "line_status")

    def __init__(
        self,
        head_timeout: float | None,
        max_line: int,
        max_field: int,
        max_head: int,
        line_status: int = 414,
    ) -> None:
        self.head_timeout = head_timeout
        """How long a client may take to send a request head, and stay idle between them."""
        self.max_line = max_line
        """Longest request target (414 past it)."""
        self.max_field = max_field
        """Longest header line (431 past it)."""
        self.max_head = max_head
        """Longest request head in all (431 past it)."""
        self.line_status = line_status
        """The answer to a request target past ``max_line``."""


class ServerState:
    """What the connections of one listener share."""

    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        bad_request: BadRequestLog,
        express: Express | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.bad_request = bad_request
        self.express = express
        self.connections: set[HttpProtocol] = set()
        self.draining = False


class _Refused(Exception):
    """The request head breaks a limit: answer ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HttpProtocol(asyncio.Protocol):
    """The server side of one HTTP/1.x connection."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._limits = state.limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._sockname = ""
        self._closed = False
        self.finished: asyncio.Future[None] = self._loop.create_future()
        # The head being parsed.
        self._url = b""
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._head_size = 0  # raw bytes received in the head, bounding what llhttp buffers
        self._header_bytes = 0
        self._in_head = False
        self._body: BodyStream | None = None
        self._expect_continue = False
        # Requests parsed, in order: the one being handled first.
        self._pipeline: deque[Request] = deque()
        self._task: asyncio.Task[None] | Call | None = None  # the request in flight
        self._held: Call | None = None  # a head the express may take, its body arriving
        self._held_parts: list[bytes] = []
        self._head_sent = False  # for the request being handled
        self._lingering: tuple[Request, StreamResponse] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None  # loop time a head has been awaited since
        self._parsing = True  # False after an upgrade or a refused head: bytes are not HTTP
        self._after_head = bytearray()
        self._detached = False
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- the transport's side -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, though they are ones.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, tuple) else None
        sock = transport.get_extra_info("sockname")
        self._sockname = f"{sock[0]}:{sock[1]}" if isinstance(sock, tuple) else ""
        self._state.connections.add(self)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._state.connections.discard(self)
        self._cancel_timer()
        if self._body is not None:
            self._body.set_exception(ConnectionResetError("the client closed the connection"))
        for queued in self._pipeline:
            queued.content.set_exception(ConnectionResetError("the client closed the connection"))
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the connection"))
        if self._task is not None and not self._detached:
            self._cancel_task()
            if isinstance(self._task, Call):
                self._task = None  # (a task is done when its cancellation has run)
        self._check_finished()

    def data_received(self, data: bytes) -> None:
        if not self._parsing:
            self._after_head += data
            if len(self._after_head) > _UPGRADE_BUFFER_LIMIT:
                self.pause_reading()
            return
        if self._in_head:
            self._head_size += len(data)
            if self._head_size > self._limits.max_head + self._limits.max_field:
                self._refuse(431, "request header block too large")
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._parsing = False
            self._after_head += data[int(upgrade.args[0]) :]
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.status, refused.reason)
            else:
                raise
        except httptools.HttpParserError as exc:
            self._refuse(400, str(exc) or "malformed request")
        if self._held is not None:  # its body is still arriving: the ordinary path waits for it
            self._enqueue(self._request_of(self._release_held(), complete=False))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = CIMultiDict()
        self._in_head = True
        self._head_size = 0
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_line:
            status = self._limits.line_status
            raise _Refused(status, f"request target longer than {self._limits.max_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        if size > self._limits.max_field:
            raise _Refused(431, f"header line longer than {self._limits.max_field} bytes")
        self._header_bytes += size + 4  # with ": " and CRLF
        if self._header_bytes > self._limits.max_head:
            raise _Refused(431, f"header block longer than {self._limits.max_head} bytes")
        self._headers.add(name.decode("latin-1"), value.decode("utf-8", errors="surrogateescape"))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._waiting_since = None
        if self._state.express is not None and self._task is None and not self._pipeline:
            self._held = self._express_call()
            if self._held is not None:
                return  # taken (or not) once its body is here: on_message_complete
        self._enqueue(self._request())

    def _enqueue(self, request: Request) -> None:
        self._pipeline.append(request)
        if self._task is None:
            self._start_next()
        elif len(self._pipeline) > _PIPELINE_LIMIT:
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self._held is not None:
            self._held_parts.append(body)
            return
        body_stream = self._body
        if body_stream is not None:
            body_stream.feed_data(body)
            if (body_stream.discarded or 0) > _LINGER_LIMIT:
                self._close()  # too much unwanted body to wait for the end of

    def on_message_complete(self) -> None:
        if self._held is not None:
            self._offer(self._release_held())
            return
        if self._body is not None:
            self._body.feed_eof()
            self._body = None
        self._expect_continue = False
        lingering, self._lingering = self._lingering, None
        if lingering is not None:
            self._after_response(*lingering)

    def _express_call(self) -> Call | None:
        """The head as the express takes it, when it is one: HTTP/1.x with a Host, no body or
        a small one of a known length, no upgrade, no ``Expect``."""
        parser = self._parser
        headers = self._headers
        version = _EXPRESS_VERSIONS.get(parser.get_http_version())
        host = headers.get("Host")
        if version is None or not host:
            return None
        if "Transfer-Encoding" in headers or "Expect" in headers or "Upgrade" in headers:
            return None  # a body of unknown length, a wait for 100 Continue, an upgrade
        method = parser.get_method().decode("ascii")
        length = _content_length(headers)
        if method == "CONNECT" or length is not None and length > WHOLE_BODY_LIMIT:
            return None
        return Call(
            method,
            self._url.decode("utf-8", "surrogateescape"),
            version,
            headers,
            host,
            parser.should_keep_alive(),
            length,
            self._remote,
            self,
        )

    def _release_held(self) -> Call:
        call = self._held
        assert call is not None
        parts = self._held_parts
        if parts:
            call.body = parts[0] if len(parts) == 1 else b"".join(parts)
            self._held_parts = []
        self._held = None
        return call

    def _offer(self, call: Call) -> None:
        """A call whole in hand: to the express, or on the ordinary path if it declines."""
        assert self._state.express is not None
        self._task = call
        if not self._state.express.take(call):
            self._task = None
            self._enqueue(self._request_of(call, complete=True))

    def _request_of(self, call: Call, *, complete: bool) -> Request:
        """The ordinary request of a call (its body whole when ``complete``, else only the
        start of it: the rest feeds the stream as it arrives)."""
        assert self._transport is not None
        body_exists = bool(call.content_length)
        content = BodyStream(self, eof=complete or not body_exists)
        if call.body:
            content.feed_data(call.body)
        if not content.complete:
            self._body = content
        return Request(
            method=call.method,
            raw_path=call.raw_path,
            version=call.version,
            headers=call.headers,
            content=content,
            body_exists=body_exists,
            content_length=call.content_length,
            keep_alive=call.keep_alive,
            upgrade=False,
            transport=self._transport,
            connection=self,
            remote=self._remote,
            sockname=self._sockname,
        )

    def _request(self) -> Request:
        assert self._transport is not None
        parser = self._parser
        headers = self._headers
        version = _version(parser.get_http_version())
        if version >= (1, 1) and "Host" not in headers:
            raise _Refused(400, "missing Host header")
        length = _content_length(headers)
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        body_exists = chunked or bool(length)
        content = BodyStream(self, eof=not body_exists)
        self._body = content if body_exists else None
        self._expect_continue = (
            body_exists
            and version >= (1, 1)
            and headers.get("Expect", "").lower() == "100-continue"
        )
        connection_tokens = headers.get("Connection", "").lower()
        return Request(
            method=parser.get_method().decode("ascii"),
            raw_path=self._url.decode("utf-8", errors="surrogateescape"),
            version=version,
            headers=headers,
            content=content,
            body_exists=body_exists,
            content_length=length,
            keep_alive=parser.should_keep_alive(),
            upgrade="upgrade" in connection_tokens and "Upgrade" in headers,
            transport=self._transport,
            connection=self,
            remote=self._remote,
            sockname=self._sockname,
        )

    # -- handling -------------------------------------------------------------------------

    def _start_next(self) -> None:
        request = self._pipeline[0]
        self._head_sent = False
        self._task = self._loop.create_task(self._handle(request))
        if self._reading_paused and len(self._pipeline) <= _PIPELINE_LIMIT:
            self.resume_reading()

    async def _handle(self, request: Request) -> None:
        try:
            response = await self._state.handler(request)
        except (asyncio.CancelledError, ConnectionError):
            # Cancelled: the client went away, or draining is over. ConnectionError: the
            # client went away, or its body broke off malformed, while the handler read it.
            self._abort()
            self._task_done()
            return
        except Exception:
            log.exception("Error handling %s %s", request.method, request.path)
            if self._head_sent:  # too late for a 500: an incomplete answer says it
                self._abort()
                self._task_done()
                return
            response = Response(status=500, text="Internal Server Error\n")
            response.force_close()
        if self._detached:
            self._task_done()
            return
        try:
            if not response.prepared:
                await response.prepare(request)
            if not response.finished:
                self._abort()  # a stream the handler left unfinished cannot be ended cleanly
        except (ConnectionError, asyncio.CancelledError):
            self._abort()
        self._task_done()
        self._after_response(request, response)

    def _cancel_task(self) -> None:
        """Cancel the request in hand (the client went away, or draining is over). A task
        cancelled before its first step never runs the handler, whose ``finally`` blocks
        would have let go of what an express handed over with the request: that, and the
        task's own end, happen here instead."""
        task = self._task
        assert task is not None
        task.cancel()
        if not isinstance(task, asyncio.Task):
            return  # an express's call, told by its cancel
        if inspect.getcoroutinestate(task.get_coro()) != inspect.CORO_CREATED:  # type: ignore[arg-type]
            return
        request = self._pipeline[0]
        self._task_done()
        note = request.state.get(NOTE)
        if isinstance(note, Note):
            note.abandon()

    def _task_done(self) -> None:
        self._task = None
        if self._pipeline:
            self._pipeline.popleft()
        self._check_finished()

    def _after_response(self, request: Request, response: StreamResponse) -> None:
        if self._closed:
            return
        if not request.content.complete and self._parsing and not self._expect_continue:
            self._linger(request, response)
            return
        self._next(
            response.keep_alive is not False and request.keep_alive and request.content.complete
        )

    def _next(self, keep_alive: bool) -> None:
        """An answer is out: on to the next request, or close (not ``keep_alive``)."""
        if not keep_alive or not (self._parsing or self._pipeline) or self._state.draining:
            self._close()
            return
        if self._pipeline:
            self._start_next()
        elif self._parsing:
            self._await_head()
        else:
            self._close()  # a refused head or an upgrade that was answered without one

    # -- the express's side ---------------------------------------------------------------

    def express_done(self, call: Call, keep_alive: bool) -> None:
        if self._task is call:
            self._task = None
        self._check_finished()
        if not self._closed:
            self._next(keep_alive and call.keep_alive)

    def cut(self) -> None:
        self._abort()

    def hand_off(self, call: Call, note: Note | None) -> None:
        if self._task is not call or self._closed:
            if note is not None:
                note.abandon()
            return
        request = self._request_of(call, complete=True)
        if note is not None:
            request.state[NOTE] = note
        self._task = None
        self._pipeline.appendleft(request)
        self._start_next()

    def _linger(self, request: Request, response: StreamResponse) -> None:
        """Read and drop the rest of a body the handler did not want, then go on as if it had
        (:meth:`on_message_complete`): closing with unread bytes would make the kernel reset
        the connection, and the client could lose the answer it is reading. The head timeout
        and :data:`_LINGER_LIMIT` bound how long and how much."""
        self._lingering = (request, response)
        request.content.discard()
        self._await_head()

    @property
    def channel(self) -> HttpProtocol:
        return self

    def write_head(self, head: bytes, body: bytes | bytearray | memoryview | None) -> None:
        transport = self._writable()
        self._head_sent = True
        transport.write(head + body if body else head)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._writable().write(data)

    def write_chunk(self, data: bytes | bytearray | memoryview) -> None:
        self._writable().writelines((b"%x\r\n" % len(data), data, b"\r\n"))

    def _writable(self) -> asyncio.Transport:
        """The transport, unless the client went away or a handler cut the connection (an
        answer returned after that is never sent).

        Raises:
            ConnectionResetError: the connection is closed or closing.
        """
        transport = self._transport
        if transport is None or self._closed or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        return transport

    @property
    def congested(self) -> bool:
        return self._write_paused

    async def drain(self) -> None:
        if self._closed:
            raise ConnectionResetError("the client closed the connection")
        if not self._write_paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiter = waiter
        try:
            await waiter
        finally:
            self._drain_waiter = None

    # -- FlowControl: what body streams pause and resume ----------------------------------

    def pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._closed:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._closed:
            self._reading_paused = False
            self._transport.resume_reading()

    def body_wanted(self) -> None:
        if self._expect_continue and not self._head_sent and not self._closed:
            assert self._transport is not None
            self._expect_continue = False
            self._transport.write(_CONTINUE)

    # -- upgrades -------------------------------------------------------------------------

    def detach(self, protocol: asyncio.BaseProtocol) -> bytes:
        assert self._transport is not None
        self._detached = True
        self._parsing = False
        self._cancel_timer()
        rest = bytes(self._after_head)
        self._after_head.clear()
        self._transport.set_protocol(protocol)
        self.resume_reading()
        return rest

    # -- shutdown and limits --------------------------------------------------------------

    def shutdown(self) -> None:
        """Draining: close now if idle, else after the response in flight."""
        if self._task is None and not self._closed:
            self._close()

    def abort(self) -> None:
        """Draining is over: cancel the handler and cut the connection."""
        if self._task is not None:
            self._cancel_task()
        self._abort()

    def _refuse(self, status: int, reason: str) -> None:
        """A head the server does not accept: log it, answer, close. Reading stops."""
        self._parsing = False
        self._held = None
        self._state.bad_request(self._remote, reason)
        self.pause_reading()
        if self._body is not None:
            self._body.set_exception(ConnectionResetError("malformed request"))
            self._body = None
        if self._task is not None:
            return  # the response in flight goes out first, then the connection closes
        response = Response(status=status, text=reason + "\n")
        response.force_close()
        head = response.head_bytes(_REFUSAL_CONTEXT, len(response.body))
        self.write_head(head, response.body)
        self._close()

    def _await_head(self) -> None:
        """Start the head timeout. One timer per connection, re-armed only when it fires:
        far cheaper than a new timer per request on a keep-alive connection."""
        timeout = self._limits.head_timeout
        if timeout is None or self._closed:
            return
        self._waiting_since = now = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(now + timeout, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        timeout = self._limits.head_timeout
        if self._waiting_since is None or timeout is None or self._closed:
            return  # a request is in hand; the next wait for a head arms the timer again
        deadline = self._waiting_since + timeout
        if self._loop.time() >= deadline - 0.001:  # timers may fire a little early
            self._close()  # the client took too long to send a head
        else:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self) -> None:
        self._cancel_timer()
        if self._transport is not None and not self._closed:
            self._transport.close()

    def _abort(self) -> None:
        self._cancel_timer()
        if self._transport is not None and not self._closed and not self._detached:
            self._transport.abort()

    def _check_finished(self) -> None:
        if (self._closed or self._detached) and self._task is None and not self.finished.done():
            self._state.connections.discard(self)
            self.finished.set_result(None)


class _Unparsed:
    """The request a refusal answers, as far as framing is concerned: none was parsed."""

    method = "GET"
    version = (1, 1)
    keep_alive = False


_REFUSAL_CONTEXT = _Unparsed()

_VERSIONS: dict[str, tuple[int, int]] = {"1.1": (1, 1), "1.0": (1, 0), "0.9": (0, 9)}
_EXPRESS_VERSIONS = {text: version for text, version in _VERSIONS.items() if version >= (1, 0)}


def _version(text: str) -> tuple[int, int]:
    version = _VERSIONS.get(text)
    if version is None:
        major, _, minor = text.partition(".")
        version = (int(major or 0), int(minor or 0))
    return version


def _content_length(headers: CIMultiDict[str]) -> int | None:
    value = headers.get("Content-Length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None  # llhttp refuses a malformed length before this point
