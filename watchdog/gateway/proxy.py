"""The gateway's reverse proxying of one call to a function's watchdog, streaming both ways.

Requests go out through :mod:`..http.upstream`, the watchdog's own client (keep-alive
HTTP/1.1 over asyncio protocols, httptools' parser), one pool per watchdog address
(:class:`FunctionUpstreams`). It adds no header of its own: the function gets the call's
headers, the Host of its configured URL and the framing of the body, nothing invented. The
header rules are :mod:`..forwarding`'s (shared with the watchdog's http mode). Answers go back
through the gateway's server (the watchdog's own, :mod:`..http`): a small body with a known
length in one write with the headers, any other chunk by chunk as it arrives (each write goes
to the socket, so event streams are not held back).
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

from ..forwarding import connection_tokens_of, returned_pairs
from ..http import RelayedResponse, Request, StreamResponse
from ..http.request import WHOLE_BODY_LIMIT, small_body
from ..http.response import DEFAULT_CONTENT_TYPE
from ..http.upstream import IDLE_TIMEOUT, UpstreamError, UpstreamPool, UpstreamResponse

__all__ = [
    "Answer",
    "Extra",
    "ChunkSource",
    "FunctionUpstreams",
    "Upstream",
    "UpstreamError",
    "UpstreamResponse",
    "abort_connection",
    "body_pending",
    "relay",
    "response_headers",
]


_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Upstream:
    """A function's watchdog as its configured URL names it.

    Attributes:
        pool: the keep-alive connections to its address (shared by URLs with the same one).
        host: the ``Host`` header its URL implies (``host`` or ``host:port``).
        prefix: the URL's path, still percent-encoded, put before every call's target.
        authorization: the ``Authorization`` header of credentials in the URL, if any.
    """

    pool: UpstreamPool
    host: str
    prefix: str
    authorization: str | None = None


class FunctionUpstreams:
    """One :class:`UpstreamPool` per watchdog address, made on first use; :meth:`close` (or
    leaving a ``with`` block) closes every connection."""

    def __init__(self, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.idle_timeout = idle_timeout
        self._by_url: dict[str, Upstream] = {}
        self._pools: dict[tuple[str, str, int], UpstreamPool] = {}
        self._tls: ssl.SSLContext | None = None

    def of(self, base_url: str) -> Upstream:
        """The upstream of a function's URL (``http://host:port[/prefix]``, no trailing /).

        Raises:
            ValueError: not an http(s) URL with a host (the configuration refuses those).
        """
        upstream = self._by_url.get(base_url)
        if upstream is None:
            upstream = self._by_url[base_url] = self._parse(base_url)
        return upstream

    def __enter__(self) -> FunctionUpstreams:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._by_url.clear()

    def _parse(self, base_url: str) -> Upstream:
        parts = urlsplit(base_url)
        scheme, host = parts.scheme.lower(), parts.hostname
        if scheme not in _DEFAULT_PORTS or not host:
            raise ValueError(f"not an http(s) URL with a host: {base_url!r}")
        port = parts.port or _DEFAULT_PORTS[scheme]
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            tls = self._tls_context() if scheme == "https" else None
            pool = self._pools[key] = UpstreamPool(host, port, self.idle_timeout, ssl=tls)
        shown = f"[{host}]" if ":" in host else host
        if parts.port is not None and parts.port != _DEFAULT_PORTS[scheme]:
            shown = f"{shown}:{port}"
        authorization = None
        if parts.username is not None:
            # As aiohttp's client did: credentials in a function's URL are sent as basic auth.
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(secret.encode()).decode("ascii")
        return Upstream(pool, shown, parts.path, authorization)

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls


class ChunkSource:
    """A call's streamed body (any async iterable of bytes) as the client's
    :class:`~..http.upstream.BodySource`: empty chunks are skipped, ``b""`` only at the end."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks: AsyncIterator[bytes] = aiter(chunks)

    async def next_chunk(self) -> bytes:
        async for chunk in self._chunks:
            if chunk:
                return chunk
        return b""


def body_pending(request: Request) -> bool:
    """The request has a small body (read whole, see :func:`small_body`) that has not all
    arrived yet: reading it may wait on the client."""
    return small_body(request) and not request.content.is_eof()


def response_headers(upstream: UpstreamResponse) -> list[tuple[str, str]]:
    """``upstream``'s end-to-end headers, in order (hop-by-hop ones, those its
    ``Connection`` names and Content-Length dropped: the gateway's server frames the body)."""
    return returned_pairs(upstream.headers, connection_tokens_of(upstream.headers))


def abort_connection(request: Request) -> None:
    """Cut the client's connection: once status and headers are out, an incomplete answer is
    the only way left to tell the client that the rest is not coming."""
    request.transport.abort()


Extra = tuple[tuple[str, str], ...]
"""Headers the gateway adds to a function's answer, each replacing the function's own."""


class Answer(Protocol):
    """A function's answer as :func:`relay` passes it on: its head, and its headers as the
    client gets them, as text (for an answer that streams) or as lines in bytes (for one
    relayed whole)."""

    @property
    def upstream(self) -> UpstreamResponse: ...

    def response_pairs(self, extra: Extra = ()) -> list[tuple[str, str]]: ...

    def response_lines(self, extra: Extra = ()) -> list[bytes]: ...


def relayed_whole(method: str, upstream: UpstreamResponse) -> bool:
    """The answer to a ``method`` request is read whole and sent in one write with its head
    (:func:`relay`): a body of a known length up to :data:`WHOLE_BODY_LIMIT`, to a request
    other than HEAD."""
    length = upstream.content_length
    return length is not None and length <= WHOLE_BODY_LIMIT and method != "HEAD"


async def relay(request: Request, answer: Answer, extra: Extra) -> StreamResponse:
    """Answer ``request`` with the function's status, headers (its end-to-end ones, then
    ``extra``: the server frames the body) and body, sent before returning (what the caller
    does next, counting the call, adds nothing to the client's wait).

    A small body with a known length is read whole and goes in one write with the headers,
    which are the function's header lines as they came; any other streams write by write. If
    the upstream breaks off during a streamed body, the client's connection is cut (see
    :func:`abort_connection`). A client that goes away raises ``ConnectionError``.

    Raises:
        UpstreamError: the upstream broke off before the end of a small body (nothing has
            been sent to the client yet, so an error status can still be answered).
    """
    upstream = answer.upstream
    length = upstream.content_length
    head_only = request.method == "HEAD"
    if relayed_whole(request.method, upstream):
        lines = answer.response_lines(extra)
        body = await upstream.read()
        typed = upstream.typed or any(name.lower() == "content-type" for name, _ in extra)
        whole = RelayedResponse(
            upstream.status, upstream.raw_reason, lines, body, dated=upstream.dated, typed=typed
        )
        await whole.prepare(request)
        return whole
    headers = answer.response_pairs(extra)
    response = StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if length is not None:
        response.content_length = length
    if length != 0 and not head_only and "Content-Type" not in response.headers:
        # As a whole body gets it (and as aiohttp's server, the gateway's before, did).
        response.headers["Content-Type"] = DEFAULT_CONTENT_TYPE
    await response.prepare(request)
    if not head_only:
        try:
            while chunk := await upstream.read_chunk():
                await response.write(chunk)
        except UpstreamError:
            abort_connection(request)
            return response
    await response.write_eof()
    return response
