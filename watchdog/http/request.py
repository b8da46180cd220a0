"""A request as the server hands it to a handler: its head, parsed, and its body as a stream."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote

from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from .response import Channel

BODY_HIGH_WATER = 256 * 1024  # buffered body bytes that pause reading from the client
BODY_LOW_WATER = 64 * 1024
WHOLE_BODY_LIMIT = 64 * 1024
"""A request or response body of at most this size with a known length is read whole and
sent together with its head: one write (one system call) instead of head, body and end apart,
which is most of a small proxied request's cost. Longer or unknown-length bodies stream."""


class FlowControl(Protocol):
    """How a body stream stops and restarts the bytes arriving from the client."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def body_wanted(self) -> None:
        """The handler is waiting for body bytes (the moment for ``100 Continue``)."""


class Connection(FlowControl, Protocol):
    """The connection a request arrived on, as the request needs it."""

    @property
    def channel(self) -> Channel: ...

    def detach(self, protocol: asyncio.BaseProtocol) -> bytes: ...


class BodyStream:
    """The request body as it arrives: bounded buffering, reading paused past a high-water mark.

    ``readany`` returns b"" at the end; it raises ``ConnectionResetError`` if the client went
    away before the end, so that a truncated body is never taken for a whole one."""

    __slots__ = (
        "_chunks",
        "_size",
        "_eof",
        "_error",
        "_waiter",
        "_flow",
        "_paused",
        "_wanted",
        "discarded",
    )

    def __init__(self, flow: FlowControl | None, *, eof: bool = False) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = eof
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._flow = flow
        self._paused = False
        self._wanted = False
        self.discarded: int | None = None  # bytes dropped since discard(); None: not dropping

    # -- the server's side ----------------------------------------------------------------

    def feed_data(self, data: bytes) -> None:
        if self.discarded is not None:
            self.discarded += len(data)
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > BODY_HIGH_WATER and not self._paused and self._flow is not None:
            self._paused = True
            self._flow.pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._resume()
        self._wake()

    def set_exception(self, error: BaseException) -> None:
        if not self._eof:
            self._error = error
        self._resume()
        self._wake()

    def discard(self) -> None:
        """The handler is done: drop what is buffered and whatever more arrives."""
        self._chunks.clear()
        self._size = 0
        self.discarded = 0
        self._resume()

    @property
    def complete(self) -> bool:
        """The whole body has arrived (it may not all have been read)."""
        return self._eof

    # -- the handler's side ---------------------------------------------------------------

    def is_eof(self) -> bool:
        return self._eof and not self._chunks

    def read_nowait(self) -> bytes:
        """Whatever is buffered now (b"" if nothing)."""
        if not self._chunks:
            return b""
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._resume()
        return data

    async def readany(self) -> bytes:
        """The next bytes of the body, as soon as there are any; b"" at its end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            await self._wait()
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._paused and self._size < BODY_LOW_WATER:
            self._resume()
        return data

    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    # -- internals ------------------------------------------------------------------------

    async def _wait(self) -> None:
        if not self._wanted and self._flow is not None:
            self._wanted = True
            self._flow.body_wanted()
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resume(self) -> None:
        if self._paused and self._flow is not None:
            self._paused = False
            self._flow.resume_reading()


class Request:
    """One request: the parsed head, the body stream and request-scoped notes."""

    __slots__ = (
        "method",
        "raw_path",
        "path",
        "query_string",
        "version",
        "headers",
        "remote",
        "scheme",
        "content_length",
        "body_exists",
        "content",
        "transport",
        "state",
        "upgrade",
        "keep_alive",
        "_connection",
        "_sockname",
    )

    def __init__(
        self,
        *,
        method: str,
        raw_path: str,
        version: tuple[int, int],
        headers: CIMultiDict[str],
        content: BodyStream,
        body_exists: bool,
        content_length: int | None,
        keep_alive: bool,
        upgrade: bool,
        transport: asyncio.Transport,
        connection: Connection,
        remote: str | None,
        sockname: str,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.path, self.query_string = split_target(raw_path)
        self.version = version
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(headers)
        self.remote = remote
        self.scheme = "http"
        self.content_length = content_length
        self.body_exists = body_exists
        self.content = content
        self.transport = transport
        self.state: dict[str, object] = {}
        self.upgrade = upgrade
        self.keep_alive = keep_alive
        self._connection = connection
        self._sockname = sockname

    @property
    def host(self) -> str:
        """The Host header, or the address the connection arrived on."""
        return self.headers.get("Host") or self._sockname

    @property
    def channel(self) -> Channel:
        return self._connection.channel

    def detach(self, protocol: asyncio.BaseProtocol) -> bytes:
        """Hand the connection to ``protocol`` (an upgrade: WebSockets). The server stops
        parsing it and returns the bytes received after this request's head; from then on the
        handler owns the transport, closing it included."""
        return self._connection.detach(protocol)


def small_body(request: Request) -> bool:
    """The request has a body of a known length up to :data:`WHOLE_BODY_LIMIT`: cheaper read
    whole and sent in one write than streamed chunk by chunk."""
    length = request.content_length
    return request.body_exists and length is not None and length <= WHOLE_BODY_LIMIT


def split_target(raw_path: str) -> tuple[str, str]:
    """The path (percent-decoded, without a fragment) and the query string of an origin-form
    request target."""
    path, _, query = raw_path.partition("?")
    path = path.partition("#")[0]
    return unquote(path) if "%" in path else path, query
