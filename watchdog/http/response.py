"""Responses: a head, then a body either whole (:class:`Response`) or written as it comes
(:class:`StreamResponse`). Framing (Content-Length, chunked, Connection) is decided here, once,
when the head goes out."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict

if TYPE_CHECKING:
    from .request import Request


Headers = CIMultiDict[str] | Mapping[str, str] | Iterable[tuple[str, str]]
"""What a response's headers may be given as: a multidict, a mapping or (name, value) pairs."""


class Framing(Protocol):
    """What of a request decides its response's framing."""

    @property
    def method(self) -> str: ...

    @property
    def version(self) -> tuple[int, int]: ...

    @property
    def keep_alive(self) -> bool: ...


_REASONS: dict[int, str] = {status.value: status.phrase for status in HTTPStatus}
_NO_BODY_STATUSES = frozenset({204, 304})
# Framing is the server's: a mode's own value would contradict the body actually sent.
_FRAMING = ("Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive")
COALESCE_LIMIT = 64 * 1024  # a larger body is written apart from its head, never copied to it
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class Channel(Protocol):
    """What a response writes through: the connection that received its request."""

    def write_head(self, head: bytes, body: bytes | bytearray | memoryview | None) -> None: ...

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def write_chunk(self, data: bytes | bytearray | memoryview) -> None: ...

    @property
    def congested(self) -> bool:
        """The transport's buffer is above its high-water mark: :meth:`drain` would wait."""

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark.

        Raises:
            ConnectionResetError: the client went away.
        """


def reason_for(status: int) -> str:
    return _REASONS.get(status, "Unknown")


_STATUS_LINES: dict[int, str] = {}


def _status_line(status: int, reason: str | None) -> str:
    if reason is not None:
        return f"HTTP/1.1 {status} {reason}\r\n"
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason_for(status)}\r\n"
    return line


def has_no_body(status: int) -> bool:
    return status < 200 or status in _NO_BODY_STATUSES


class StreamResponse:
    """A response whose body is written piece by piece after :meth:`prepare`."""

    __slots__ = (
        "status",
        "reason",
        "headers",
        "content_length",
        "_chunked",
        "_keep_alive",
        "_channel",
        "_head_only",
        "_eof",
    )

    def __init__(
        self,
        status: int = 200,
        reason: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers: CIMultiDict[str] = CIMultiDict(headers or ())
        self.content_length: int | None = None
        self._chunked = False
        self._keep_alive: bool | None = None  # None: as the request allows
        self._channel: Channel | None = None
        self._head_only = False
        self._eof = False

    def set_status(self, status: int, reason: str | None = None) -> None:
        self.status = status
        self.reason = reason

    def enable_chunked_encoding(self) -> None:
        self._chunked = True

    def force_close(self) -> None:
        """Close the connection after this response."""
        self._keep_alive = False

    @property
    def keep_alive(self) -> bool | None:
        return self._keep_alive

    @property
    def prepared(self) -> bool:
        return self._channel is not None

    @property
    def finished(self) -> bool:
        return self._eof

    @property
    def chunked(self) -> bool:
        return self._chunked

    async def prepare(self, request: Request) -> None:
        """Send the status and headers (once; later calls do nothing)."""
        if self._channel is not None:
            return
        channel = request.channel
        self._head_only = request.method == "HEAD" or has_no_body(self.status)
        self._channel = channel
        channel.write_head(self.head_bytes(request), None)
        await channel.drain()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send part of the body; waits while the client is slow to take it."""
        channel = self._channel
        assert channel is not None, "write before prepare"
        if not data or self._head_only:
            return
        if self._chunked:
            channel.write_chunk(data)
        else:
            channel.write(data)
        await channel.drain()

    async def write_eof(self) -> None:
        """End the body (the last chunk, when chunked) and wait for it to be taken."""
        channel = self._channel
        assert channel is not None, "write_eof before prepare"
        if self._eof:
            return
        self._eof = True
        if self._chunked and not self._head_only:
            channel.write(b"0\r\n\r\n")
        await channel.drain()

    def head_bytes(self, request: Framing, body_length: int | None = None) -> bytes:
        """The response head, choosing the framing: no body (HEAD, 1xx, 204, 304), a
        Content-Length, chunked (HTTP/1.1), or the end of the connection (HTTP/1.0)."""
        headers = self.headers
        for name in _FRAMING:
            if name in headers:
                del headers[name]
        length = self.content_length if body_length is None else body_length
        no_body = has_no_body(self.status)
        keep_alive = request.keep_alive and self._keep_alive is not False
        if no_body:
            self._chunked = False
        elif length is not None and not self._chunked:
            headers["Content-Length"] = str(length)
        elif request.version >= (1, 1):
            self._chunked = True
            if not self._head_only:
                headers["Transfer-Encoding"] = "chunked"
        else:
            self._chunked = False  # HTTP/1.0 has no chunks: the end of the body is the close
            keep_alive = keep_alive and self._head_only
        self._keep_alive = keep_alive
        connection = _connection(keep_alive, request.version)
        if connection is not None:
            headers["Connection"] = connection
        if "Date" not in headers:
            headers["Date"] = http_date()
        lines = [_status_line(self.status, self.reason)]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        lines.append("\r\n")
        return "".join(lines).encode("utf-8", errors="surrogateescape")


class Response(StreamResponse):
    """A response whose body is whole in memory; sent with its head in one write."""

    __slots__ = ("body",)

    def __init__(
        self,
        status: int = 200,
        *,
        body: bytes | bytearray = b"",
        text: str | None = None,
        headers: Headers | None = None,
        content_type: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(status, reason, headers)
        if text is not None:
            body = text.encode()
            if content_type is None and "Content-Type" not in self.headers:
                content_type = "text/plain; charset=utf-8"
            elif content_type is not None and "charset" not in content_type:
                content_type += "; charset=utf-8"
        self.body: bytes | bytearray = body
        if content_type is not None:
            self.headers["Content-Type"] = content_type

    async def prepare(self, request: Request) -> None:
        """Send head and body (at once when the body is small) and end the response."""
        if self._channel is not None:
            return
        self.write_whole(request)
        await request.channel.drain()

    def write_whole(self, request: Request) -> None:
        """Hand head, body and end to the transport without waiting: a response is usually
        taken at once, and a wait (with its deadline) is only needed when the client's buffer
        is full (``channel.congested``)."""
        channel = request.channel
        self._channel = channel
        self._head_only = request.method == "HEAD" or has_no_body(self.status)
        self._chunked = False
        body = self.body
        if body and not self.typed:
            self.headers["Content-Type"] = DEFAULT_CONTENT_TYPE
        head = self.head_bytes(request, None if has_no_body(self.status) else len(body))
        if self._head_only or not body:
            channel.write_head(head, None)
        elif len(body) > COALESCE_LIMIT:
            channel.write_head(head, None)
            channel.write(body)
        else:
            channel.write_head(head, body)
        self._eof = True

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        raise RuntimeError("a Response is sent whole; use StreamResponse to write a body")

    @property
    def typed(self) -> bool:
        """It has a Content-Type (else a body is sent as ``application/octet-stream``)."""
        return "Content-Type" in self.headers


class RelayedResponse(Response):
    """A whole answer relayed from an upstream, its header lines as the upstream sent them
    (``Name: value`` in bytes, without framing: a proxy drops Content-Length,
    Transfer-Encoding and the hop-by-hop ones). Its head is :func:`relayed_head`'s: no text
    headers are built and edited on the way (most of the cost of a small proxied answer's
    head). Headers set on ``headers`` after construction follow the lines."""

    __slots__ = ("raw_reason", "lines", "dated", "_typed")

    def __init__(
        self,
        status: int,
        raw_reason: bytes,
        lines: list[bytes],
        body: bytes,
        *,
        dated: bool,
        typed: bool,
    ) -> None:
        super().__init__(status, body=body)
        self.raw_reason = raw_reason
        self.lines = lines
        self.dated = dated
        self._typed = typed

    @property
    def typed(self) -> bool:
        return self._typed or "Content-Type" in self.headers

    def head_bytes(self, request: Framing, body_length: int | None = None) -> bytes:
        keep_alive = request.keep_alive and self._keep_alive is not False
        self._keep_alive = keep_alive
        lines = self.lines
        if self.headers:
            lines = lines + [_line(name, value) for name, value in self.headers.items()]
        return relayed_head(
            self.status,
            self.raw_reason,
            lines,
            request,
            dated=self.dated,
            body_length=body_length,
            keep_alive=keep_alive,
        )


def _line(name: str, value: str) -> bytes:
    return f"{name}: {value}".encode("utf-8", errors="surrogateescape")


_RELAYED_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}
_CONNECTION_LINES = {value: b"Connection: " + value.encode() for value in ("close", "keep-alive")}
_STATUS_LINE_CACHE_SIZE = 64


def relayed_head(
    status: int,
    reason: bytes,
    lines: Sequence[bytes],
    request: Framing,
    *,
    dated: bool,
    body_length: int | None,
    keep_alive: bool | None = None,
) -> bytes:
    """The head of a relayed answer, in bytes as it came: ``lines`` (``Name: value``) carry no
    framing, which is added here as :meth:`StreamResponse.head_bytes` decides it for a body of
    ``body_length`` bytes (a Content-Length; the Connection the request needs, or
    ``keep_alive`` says), with a Date unless ``dated``."""
    key = (status, reason)
    status_line = _RELAYED_STATUS_LINES.get(key)
    if status_line is None:
        status_line = b"HTTP/1.1 %d %s" % key
        if len(_RELAYED_STATUS_LINES) < _STATUS_LINE_CACHE_SIZE:
            _RELAYED_STATUS_LINES[key] = status_line
    parts = [status_line, *lines]
    if body_length is not None and not has_no_body(status):
        parts.append(b"Content-Length: %d" % body_length)
    keep = request.keep_alive if keep_alive is None else keep_alive
    connection = _connection(keep, request.version)
    if connection is not None:
        parts.append(_CONNECTION_LINES[connection])
    if not dated:
        parts.append(http_date_line())
    parts += (b"", b"")  # the blank line that ends the head
    return b"\r\n".join(parts)


def _connection(keep_alive: bool, version: tuple[int, int]) -> str | None:
    """The Connection header a response needs, if any: HTTP/1.1 keeps the connection unless
    told, HTTP/1.0 closes it unless told."""
    if not keep_alive:
        return "close"
    return "keep-alive" if version < (1, 1) else None


_date_second = -1
_date_value = ""
_date_line = b""


def http_date() -> str:
    """The Date header, formatted once a second."""
    global _date_second, _date_value, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
        _date_line = b"Date: " + _date_value.encode()
    return _date_value


def http_date_line() -> bytes:
    """``Date: ...`` (:func:`http_date`) as a head line in bytes."""
    http_date()
    return _date_line
