"""The synchronous invoke path: one call to one function, with its limits, timeout and metrics.

Everything that calls a function goes through :meth:`Invoker.invoke`: the ``/function/NAME``
route (which relays the answer to its client as it streams) and, later, the asynchronous
workers (which replay a stored request and keep the answer). So the per-function concurrency
limit, the timeout, the call id and the metrics mean the same thing on every path.

Failures of the platform are raised as :class:`InvokeError` with ``internal`` set (the gateway
answered, not the function), so a retrying caller can tell them from the function's own errors.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..forwarding import forwarded_headers
from ..responses import format_seconds
from .metrics import GatewayMetrics
from .proxy import (
    ChunkSource,
    FunctionUpstreams,
    Upstream,
    UpstreamError,
    UpstreamResponse,
    response_headers,
    small_body,
)
from .registry import Function, FunctionRegistry, InvalidName, split_ref

CALL_ID_HEADER = "X-Call-Id"
START_TIME_HEADER = "X-Start-Time"
DURATION_HEADER = "X-Duration-Seconds"
CLIENT_GONE = 499  # the caller went away before the answer was complete (nginx's convention)


class InvokeError(Exception):
    """The gateway answers instead of the function: unknown or malformed name, a limit, or an
    unreachable or slow function. ``status`` is the HTTP status to answer with."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        function: Function | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.function = function
        self.retry_after = retry_after

    @property
    def internal(self) -> bool:
        """Always true: the function never produced this answer (``X-OpenFaaS-Internal``)."""
        return True


def new_call_id() -> str:
    return str(uuid.uuid4())


def function_target(prefix: str, target: str) -> str:
    """``target`` (path and query, still percent-encoded) under a function URL's path.

    Only a target that starts with ``/`` is taken: anything else could extend the authority
    (``http://fn:8080`` + ``@other:9`` is a URL of host ``other``), so the scheme, host and
    port always come from the function's configured URL alone.

    Raises:
        InvokeError: 400 for a target that is not a path.
    """
    if not target.startswith("/"):
        raise InvokeError(400, f"the request target {target[:80]!r} is not a path")
    return prefix + target


def function_url(base_url: str, target: str) -> URL:
    """``target`` on a function's own URL (for clients of their own: the asynchronous
    worker's direct mode); :func:`function_target`'s rule.

    Raises:
        InvokeError: 400 for a target that is not a path.
    """
    return URL(base_url + function_target("", target), encoded=True)


# What the invoke path writes itself: the framing of the body (the client's), the call's id
# and start time.
_NOT_SENT = frozenset({"content-length", "transfer-encoding", "x-call-id", "x-start-time"})
# Methods for which an absent body is sent as an empty one (Content-Length: 0), as HTTP
# clients (aiohttp's, Go's) do for methods that expect a body.
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def request_pairs(call: Call, upstream: Upstream) -> list[tuple[str, str]]:
    """The headers ``call`` goes out with: Host (the call's own, else the function URL's),
    its end-to-end headers, then its id and start time. The client frames the body."""
    headers = call.headers
    pairs = [(name, value) for name, value in headers.items() if name.lower() not in _NOT_SENT]
    if "Host" not in headers:
        pairs.insert(0, ("Host", upstream.host))
    if upstream.authorization is not None:
        pairs = [pair for pair in pairs if pair[0].lower() != "authorization"]
        pairs.append(("Authorization", upstream.authorization))
    pairs.append((CALL_ID_HEADER, call.call_id))
    pairs.append((START_TIME_HEADER, str(call.start_time_ns)))
    return pairs


def _content_length(headers: CIMultiDict[str]) -> int | None:
    value = headers.get("Content-Length")
    return int(value) if value is not None and value.isdigit() else None


@dataclass(slots=True)
class Call:
    """One request for a function, as it will be sent.

    Args:
        method: the HTTP method.
        target: the raw (still percent-encoded) path and query the function sees, e.g.
            ``/sub/path?a=%7e``; at least ``/``.
        headers: end-to-end headers to send (``X-Call-Id`` and ``X-Start-Time`` are added).
        body: bytes, a stream of chunks, or ``None`` for no body. Give a stream a
            ``Content-Length`` header when the length is known, or it goes chunked.
        call_id: the call's id; a new UUID unless given.
    """

    method: str
    target: str
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes | AsyncIterable[bytes] | None = None
    call_id: str = field(default_factory=new_call_id)
    start_time_ns: int = field(default_factory=time.time_ns)

    @classmethod
    async def from_request(cls, request: web.BaseRequest, target: str) -> Call:
        """The call a client's request makes: its method, headers (plus ``X-Forwarded-*``) and
        body (read whole when small, else streamed); its ``X-Call-Id`` if it sent one."""
        headers = forwarded_headers(request)
        call_id = request.headers.get(CALL_ID_HEADER) or new_call_id()
        body: bytes | AsyncIterable[bytes] | None = None
        if small_body(request):
            body = await request.read()
        elif request.body_exists:
            if request.content_length is not None:
                headers["Content-Length"] = str(request.content_length)
            body = _stream_body(request)
        return cls(request.method, target, headers, body, call_id)


async def _stream_body(request: web.BaseRequest) -> AsyncIterator[bytes]:
    while chunk := await request.content.readany():
        yield chunk


@dataclass(slots=True)
class Invocation:
    """A call in progress whose response headers have arrived; read ``upstream`` for the body.

    ``status`` is what the metrics record: the function's status unless the reader sets
    another (e.g. 499 when its own client went away).
    """

    function: Function
    call: Call
    upstream: UpstreamResponse
    started: float
    headers_after: float
    status: int = 0

    def response_headers(self) -> CIMultiDict[str]:
        """The function's end-to-end headers plus the call id, start time and the duration
        until the response headers came (the gateway's measure, replacing the watchdog's)."""
        headers = CIMultiDict(response_headers(self.upstream))
        headers[CALL_ID_HEADER] = self.call.call_id
        headers[START_TIME_HEADER] = str(self.call.start_time_ns)
        headers[DURATION_HEADER] = f"{self.headers_after:.6f}"
        return headers


class Invoker:
    """Resolves function references and performs calls through keep-alive connection pools,
    one per watchdog address (``upstreams``: closed by their owner, after the last call)."""

    def __init__(
        self,
        registry: FunctionRegistry,
        upstreams: FunctionUpstreams,
        metrics: GatewayMetrics,
        *,
        namespace: str,
        default_timeout: float,
    ) -> None:
        self.registry = registry
        self.upstreams = upstreams
        self.metrics = metrics
        self.namespace = namespace
        self.default_timeout = default_timeout
        self._inflight: dict[str, int] = {}
        self._invocations: dict[str, int] = {}

    def resolve(self, ref: str) -> Function:
        """The function ``NAME`` or ``NAME.NAMESPACE`` refers to.

        Raises:
            InvokeError: 400 for a malformed name, 404 for an unknown function.
        """
        try:
            name, namespace = split_ref(ref, self.namespace)
        except InvalidName as exc:
            raise InvokeError(400, str(exc)) from None
        function = self.registry.get(name, namespace)
        if function is None:
            shown = name if namespace == self.namespace else f"{name}.{namespace}"
            raise InvokeError(404, f"function {shown!r} not found")
        return function

    def inflight(self, function: Function) -> int:
        """Calls to ``function`` in progress now."""
        return self._inflight.get(function.key, 0)

    def invocations(self, function: Function) -> int:
        """Calls let through to ``function`` since the gateway started (``invocationCount``)."""
        return self._invocations.get(function.key, 0)

    def timeout_of(self, function: Function) -> float:
        return function.timeout if function.timeout is not None else self.default_timeout

    def _upstream_of(self, function: Function) -> Upstream:
        try:
            return self.upstreams.of(function.base_url)
        except ValueError as exc:
            message = f"function {function.name!r} is unreachable: {exc}"
            raise InvokeError(502, message, function=function) from None

    @asynccontextmanager
    async def invoke(self, function: Function, call: Call) -> AsyncIterator[Invocation]:
        """Send ``call`` to ``function``; yield once the response headers have arrived.

        The function's timeout covers the whole exchange, reading the body included, as the
        OpenFaaS gateway's ``upstream_timeout`` does: if it expires while the caller reads,
        ``TimeoutError`` is raised there. The concurrency slot is held until the block ends.

        Raises:
            InvokeError: 429 at the function's ``max_concurrency`` (without reaching it), 502
                if it cannot be reached or drops the connection before answering, 504 if it
                does not answer within its timeout.
        """
        upstream_of = self._upstream_of(function)
        target = function_target(upstream_of.prefix, call.target)
        key = function.key
        started = time.monotonic()
        inflight = self._inflight.get(key, 0)
        if function.max_concurrency and inflight >= function.max_concurrency:
            self.metrics.observe(key, 429, time.monotonic() - started)
            raise InvokeError(
                429,
                f"function {function.name!r} is at its concurrency limit of "
                f"{function.max_concurrency}",
                function=function,
                retry_after=1,
            )
        self._inflight[key] = inflight + 1
        self._invocations[key] = self._invocations.get(key, 0) + 1
        self.metrics.started(key)
        status = 500
        timeout = self.timeout_of(function)
        headers = request_pairs(call, upstream_of)
        body = call.body
        whole: bytes | None = None
        stream: ChunkSource | None = None
        if isinstance(body, bytes | bytearray):
            whole = bytes(body) if isinstance(body, bytearray) else body
        elif body is not None:
            stream = ChunkSource(body)
        elif call.method not in _BODYLESS:
            whole = b""
        answered = False
        try:
            async with asyncio.timeout(timeout):
                try:
                    upstream = await upstream_of.pool.request(
                        call.method,
                        target,
                        headers,
                        whole,
                        stream=stream,
                        content_length=_content_length(call.headers) if stream else None,
                    )
                except UpstreamError as exc:
                    status = 502
                    raise InvokeError(
                        502,
                        f"function {function.name!r} is unreachable: {exc}",
                        function=function,
                    ) from None
                status, answered = upstream.status, True
                invocation = Invocation(
                    function, call, upstream, started, time.monotonic() - started, status
                )
                try:
                    yield invocation
                finally:
                    status = invocation.status
                    upstream.release()
        except TimeoutError:
            # asyncio.timeout turns its cancellation into TimeoutError only here, on leaving
            # the block. After the headers the caller's status is out already; count a 504
            # anyway so that timeouts show in the metrics.
            status = 504
            if answered:
                raise
            raise InvokeError(
                504,
                f"function {function.name!r} did not answer within its timeout of "
                f"{format_seconds(timeout)}",
                function=function,
            ) from None
        except asyncio.CancelledError:
            status = CLIENT_GONE
            raise
        finally:
            remaining = self._inflight[key] - 1
            if remaining:
                self._inflight[key] = remaining
            else:
                del self._inflight[key]
            self.metrics.finished(key)
            self.metrics.observe(key, status, time.monotonic() - started)
