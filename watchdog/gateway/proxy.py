"""The gateway's reverse proxying of one request to a function's watchdog, with aiohttp's
client, streaming both ways.

Callers choose the target URL, the deadline and the extra headers; this module moves the bytes:
the header rules are :mod:`..forwarding`'s (shared with the watchdog's http mode, which has its
own client), a known Content-Length is kept, and the response is streamed back chunk by chunk
(each write goes straight to the socket, so event streams are not held back).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..forwarding import NOT_RETURNED, connection_tokens, forwarded_headers
from ..limits import BodyTimeout, BodyTooLarge, read_stream, within_write_timeout

CHUNK = 65536
# Headers aiohttp's client adds when the request has none. A proxy must not invent them: an
# added Accept-Encoding makes the upstream compress for a client that never asked for it.
CLIENT_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class UpstreamError(Exception):
    """The upstream refused, dropped or broke the connection before answering."""


WHOLE_BODY_LIMIT = 64 * 1024
"""A request or response body of at most this size with a known length is read whole and
sent together with its headers: one write (one system call) instead of headers, body and end
apart, which is most of a small proxied request's cost. Longer or unknown-length bodies
stream."""


def small_body(request: web.BaseRequest) -> bool:
    """The request has a body of a known length up to :data:`WHOLE_BODY_LIMIT`: cheaper read
    whole and sent in one write than streamed chunk by chunk."""
    length = request.content_length
    return request.body_exists and length is not None and length <= WHOLE_BODY_LIMIT


class RequestBody:
    """How far the client's request body has got, against its ``deadline`` (loop time)."""

    __slots__ = ("deadline", "complete", "timed_out")

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self.complete = False
        """All of it has been read from the client (and handed on to the upstream)."""
        self.timed_out = False
        """The client did not deliver it before the deadline."""


async def _stream_body(request: web.BaseRequest, body: RequestBody) -> AsyncIterator[bytes]:
    while chunk := await _read_some(request, body):
        yield chunk
    body.complete = True


async def _read_some(request: web.BaseRequest, body: RequestBody) -> bytes:
    # The deadline wraps each read, never a yield: the generator runs in aiohttp's writer task.
    try:
        async with asyncio.timeout_at(body.deadline):
            return await request.content.readany()
    except TimeoutError:
        body.timed_out = True
        raise BodyTimeout from None


async def _read_body(
    request: web.BaseRequest, deadline: float | None, limit: int | None
) -> bytearray:
    """The whole body before the loop-time ``deadline``, at most ``limit`` bytes (read here:
    ``request.read()`` stops at aiohttp's own 1 MiB and copies the body once more).

    Raises:
        BodyTimeout: the deadline passed first.
        BodyTooLarge: the body is longer than ``limit``.
    """
    length = request.content_length
    if limit is not None and length is not None and length > limit:
        raise BodyTooLarge(limit)
    try:
        async with asyncio.timeout_at(deadline):
            return await read_stream(request.content, limit)
    except TimeoutError:
        raise BodyTimeout from None


async def open_upstream(
    session: aiohttp.ClientSession,
    request: web.BaseRequest,
    url: str | URL,
    *,
    buffer_body: bool = False,
    extra_headers: Mapping[str, str] | None = None,
    body: RequestBody | None = None,
    body_limit: int | None = None,
) -> aiohttp.ClientResponse:
    """Send ``request`` to ``url`` and return the upstream's response once its headers arrive.

    The body streams unless ``buffer_body`` (then it is read whole and sent with a length). A
    known Content-Length is kept either way, so the upstream sees no chunked upload it did not
    get from the client. A ``str`` ``url`` is taken as already percent-encoded and sent as it
    is (yarl would otherwise re-quote it: ``%7e`` would become ``~``, ``%zz`` ``%25zz``), so a
    raw path and query from the client reach the upstream unchanged. ``body`` (optional)
    holds the deadline for reading the client's body and reports how far it got.
    ``body_limit`` bounds a ``buffer_body`` read (a streamed body is not bounded).

    Raises:
        UpstreamError: the connection failed before the response headers (also when the body
            stopped arriving while it streamed: ``body.timed_out`` tells).
        BodyTimeout: ``buffer_body`` and the body did not arrive before its deadline.
        BodyTooLarge: ``buffer_body`` and the body is longer than ``body_limit``.
    """
    body = body or RequestBody()
    headers = forwarded_headers(request, extra_headers)
    data: bytearray | AsyncIterator[bytes] | None
    if buffer_body or small_body(request):
        # A small body goes with the request headers in one write; buffer_body asks for it.
        try:
            data = await _read_body(request, body.deadline, body_limit if buffer_body else None)
        except BodyTimeout:
            body.timed_out = True
            raise
        body.complete = True
    elif not request.body_exists:
        data = None
        body.complete = True
    else:
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        data = _stream_body(request, body)
    try:
        return await session.request(
            request.method,
            URL(url, encoded=True) if isinstance(url, str) else url,
            headers=headers,
            data=data,
            allow_redirects=False,
            auto_decompress=False,
            skip_auto_headers=CLIENT_AUTO_HEADERS,
        )
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise UpstreamError(str(exc) or exc.__class__.__name__) from exc


def response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    drop = NOT_RETURNED | connection_tokens(upstream.headers)
    return CIMultiDict(
        (name, value) for name, value in upstream.headers.items() if name.lower() not in drop
    )


def abort_connection(request: web.BaseRequest) -> None:
    """Cut the client's connection: once status and headers are out, an incomplete answer is
    the only way left to tell the client that the rest is not coming."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def response_for(
    upstream: aiohttp.ClientResponse, headers: CIMultiDict[str] | None = None
) -> web.StreamResponse:
    """A response carrying ``upstream``'s status and (by default) end-to-end headers."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    response.headers.extend(headers if headers is not None else response_headers(upstream))
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    return response


async def read_whole_if_small(
    request: web.BaseRequest, upstream: aiohttp.ClientResponse
) -> bytes | None:
    """``upstream``'s whole body if it qualifies (see :data:`WHOLE_BODY_LIMIT`), else None.

    Raises:
        UpstreamError: the upstream broke off before the end of the body (nothing has been
            sent to the client yet, so an error status can still be answered).
    """
    length = upstream.content_length
    if request.method == "HEAD" or length is None or length > WHOLE_BODY_LIMIT:
        return None
    try:
        return await upstream.read()
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise UpstreamError(str(exc) or exc.__class__.__name__) from exc
    finally:
        upstream.release()


def whole_response(response: web.StreamResponse, body: bytes) -> web.Response:
    """``response``'s status and headers with ``body``, sent in one write."""
    return web.Response(
        status=response.status, reason=response.reason, headers=response.headers, body=body
    )


async def relay(
    request: web.BaseRequest,
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    write_timeout: float | None = None,
) -> web.StreamResponse:
    """Send ``response`` and stream ``upstream``'s body into it, write by write (a small body
    with a known length goes in one write with the headers instead).

    If the upstream breaks off during the body, the client's connection is cut (see
    :func:`abort_connection`). A client that goes away raises ``ConnectionError``; on a
    deadline the caller checks ``response.prepared`` to decide between answering and cutting.

    Raises:
        ClientStalled: one write to the client took longer than ``write_timeout``.
    """
    body = await read_whole_if_small(request, upstream)
    if body is not None:
        return whole_response(response, body)
    if request.method == "HEAD":
        response.content_length = upstream.content_length
    await within_write_timeout(response.prepare(request), write_timeout)
    try:
        if request.method != "HEAD":
            while chunk := await upstream.content.readany():
                await within_write_timeout(response.write(chunk), write_timeout)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
        abort_connection(request)
        return response
    finally:
        upstream.release()
    await within_write_timeout(response.write_eof(), write_timeout)
    return response
