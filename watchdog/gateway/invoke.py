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
import functools
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType

from multidict import CIMultiDict
from yarl import URL

from ..forwarding import forwarded_headers
from ..http import Request
from ..http.request import small_body
from ..http.upstream import decode, encode
from ..limits import TaskTimeout, time_left
from ..responses import format_seconds
from .metrics import GatewayMetrics
from .proxy import (
    ChunkSource,
    Extra,
    FunctionUpstreams,
    Upstream,
    UpstreamError,
    UpstreamResponse,
)
from .queue.base import new_call_id
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
    async def from_request(cls, request: Request, target: str) -> Call:
        """The call a client's request makes: its method, headers (plus ``X-Forwarded-*``) and
        body (read whole when small, else streamed); its ``X-Call-Id`` if it sent one."""
        headers = forwarded_headers(request)
        call_id = request.headers.get(CALL_ID_HEADER) or new_call_id()
        body: bytes | AsyncIterable[bytes] | None = None
        if small_body(request):
            content = request.content
            # All of it here already (the usual case): taken as it is, without a read loop.
            body = content.read_nowait() if content.is_eof() else await request.content.read()
        elif request.body_exists:
            if request.content_length is not None:
                headers["Content-Length"] = str(request.content_length)
            body = _stream_body(request)
        return cls(request.method, target, headers, body, call_id)


async def _stream_body(request: Request) -> AsyncIterator[bytes]:
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

    def response_lines(self, extra: Extra = ()) -> list[bytes]:
        """The function's end-to-end header lines as they came, then the call id, start time
        and the duration until the response headers came (the gateway's measure, replacing
        the watchdog's), then ``extra``: each added header replaces the function's of that
        name."""
        drop = _dropped(extra)
        returned = self.upstream.returned_lines()
        kept = [line for line in returned if line.partition(b":")[0].lower() not in drop]
        call = self.call
        kept += (
            _CALL_ID_PREFIX + encode(call.call_id),
            b"%s%d" % (_START_TIME_PREFIX, call.start_time_ns),
            b"%s%.6f" % (_DURATION_PREFIX, self.headers_after),
            *_lines(extra),
        )
        return kept

    def response_pairs(self, extra: Extra = ()) -> list[tuple[str, str]]:
        """:meth:`response_lines` as (name, value) text, for an answer that streams."""
        split = (line.partition(b": ") for line in self.response_lines(extra))
        return [(decode(name), decode(value)) for name, _, value in split]

    def response_headers(self) -> CIMultiDict[str]:
        """:meth:`response_pairs` as a multidict, for callers that edit them further."""
        return CIMultiDict(self.response_pairs())


_REPLACED = frozenset({b"x-call-id", b"x-start-time", b"x-duration-seconds"})
"""What :meth:`Invocation.response_lines` drops of a function's lines (which are without the
framing and hop-by-hop ones already): the gateway writes its own."""
_CALL_ID_PREFIX = encode(f"{CALL_ID_HEADER}: ")
_START_TIME_PREFIX = encode(f"{START_TIME_HEADER}: ")
_DURATION_PREFIX = encode(f"{DURATION_HEADER}: ")


@functools.lru_cache(maxsize=64)
def _dropped(extra: Extra) -> frozenset[bytes]:
    """The lower-case names of the function's lines an answer with ``extra`` drops."""
    return _REPLACED | {encode(name.lower()) for name, _ in extra}


@functools.lru_cache(maxsize=64)
def _lines(extra: Extra) -> tuple[bytes, ...]:
    return tuple(encode(f"{name}: {value}") for name, value in extra)


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
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop calls run on, looked up once: each look-up is a getpid() on Python 3.11."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def resolve(self, ref: str) -> Function:
        """The function ``NAME`` or ``NAME.NAMESPACE`` refers to.

        Raises:
            InvokeError: 400 for a malformed name, 404 for an unknown function.
        """
        try:
            name, namespace = _split_ref(ref, self.namespace)
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

    def invoke(self, function: Function, call: Call) -> AbstractAsyncContextManager[Invocation]:
        """Send ``call`` to ``function``; ``async with`` it to get the :class:`Invocation` once
        the response headers have arrived.

        The function's timeout covers the whole exchange, reading the body included, as the
        OpenFaaS gateway's ``upstream_timeout`` does: if it expires while the caller reads,
        ``TimeoutError`` is raised there. The concurrency slot is held until the block ends.

        Raises (on entering):
            InvokeError: 429 at the function's ``max_concurrency`` (without reaching it), 502
                if it cannot be reached or drops the connection before answering, 504 if it
                does not answer within its timeout.
        """
        return _Invoking(self, function, call)

    def resume(self, sent: Sent) -> AbstractAsyncContextManager[Invocation]:
        """:meth:`invoke` for a call the express sent already (:mod:`.express`): entered,
        it gives the answer the express handed over, or raises as :meth:`invoke` would have
        for its failure."""
        return _Invoking(self, sent.function, sent.call, sent)

    def upstream_of(self, function: Function) -> Upstream:
        """Where ``function`` is called.

        Raises:
            InvokeError: 502, its URL is not one the gateway can call.
        """
        try:
            return self.upstreams.of(function.base_url)
        except ValueError as exc:
            message = f"function {function.name!r} is unreachable: {exc}"
            raise InvokeError(502, message, function=function) from None

    def admits(self, function: Function) -> bool:
        """``function`` is below its ``max_concurrency``: :meth:`admit` would take a slot."""
        limit = function.max_concurrency
        return not limit or self._inflight.get(function.key, 0) < limit

    def admit(self, function: Function, started: float) -> None:
        """Take a concurrency slot for ``function``.

        Raises:
            InvokeError: 429, the function is at its ``max_concurrency``.
        """
        key = function.key
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

    def release(self, function: Function, status: int, started: float) -> None:
        """Give the slot back and count the call with its final ``status``."""
        self._free(function.key)
        self.metrics.observe(function.key, status, time.monotonic() - started)

    def withdraw(self, function: Function) -> None:
        """Give the slot back uncounted: the call will be admitted anew (the express handing
        it over unsent)."""
        self._free(function.key)
        self._invocations[function.key] -= 1
        self.metrics.unstarted(function.key)

    def _free(self, key: str) -> None:
        remaining = self._inflight[key] - 1
        if remaining:
            self._inflight[key] = remaining
        else:
            del self._inflight[key]
        self.metrics.finished(key)


@dataclass(slots=True)
class Sent:
    """A call the express (:mod:`.express`) sent and admitted at ``started`` (monotonic),
    handed over to the ordinary path with how far it got: the answer's head (``invocation``,
    to relay), or the failure before it (``error``), or the function's timeout (``timed_out``)."""

    function: Function
    call: Call
    started: float
    abandon: Callable[[], None]
    """Let go of the call's slot and answer if it is dropped before the ordinary path begins
    (see :class:`..http.express.Note`)."""
    invocation: Invocation | None = None
    error: BaseException | None = None
    timed_out: bool = False


class _Invoking:
    """One :meth:`Invoker.invoke` call, as an async context manager written out by hand (a
    generator-based one costs several microseconds more per call on this hot path).

    Entering sends the call under the function's timeout and returns the
    :class:`Invocation`; leaving releases the connection, leaves the timeout (which turns its
    cancellation into ``TimeoutError``) and counts the call.
    """

    __slots__ = ("invoker", "function", "call", "sent", "started", "deadline", "invocation")

    def __init__(
        self, invoker: Invoker, function: Function, call: Call, sent: Sent | None = None
    ) -> None:
        self.invoker = invoker
        self.function = function
        self.call = call
        self.sent = sent
        self.started = 0.0
        self.deadline: TaskTimeout | None = None
        self.invocation: Invocation | None = None

    async def __aenter__(self) -> Invocation:
        if self.sent is not None:
            return await self._resume(self.sent)
        invoker, function, call = self.invoker, self.function, self.call
        upstream_of = invoker.upstream_of(function)
        target = function_target(upstream_of.prefix, call.target)
        headers = request_pairs(call, upstream_of)
        whole, stream = request_body(call)
        self.started = started = time.monotonic()
        invoker.admit(function, started)
        self.deadline = deadline = TaskTimeout(invoker.loop, invoker.timeout_of(function))
        await deadline.__aenter__()
        try:
            upstream = await upstream_of.pool.request(
                call.method,
                target,
                headers,
                whole,
                stream=stream,
                content_length=_content_length(call.headers) if stream else None,
            )
        except BaseException as exc:
            await self._fail(exc)
            raise
        self.invocation = Invocation(
            function, call, upstream, started, time.monotonic() - started, upstream.status
        )
        return self.invocation

    async def _resume(self, sent: Sent) -> Invocation:
        """Go on from where the express handed the call over, within what is left of the
        function's timeout."""
        invoker = self.invoker
        self.started = sent.started
        left = time_left(invoker.timeout_of(self.function), sent.started)
        self.deadline = deadline = TaskTimeout(invoker.loop, left)
        await deadline.__aenter__()
        failure = TimeoutError() if sent.timed_out else sent.error
        if failure is not None:
            await self._fail(failure)
            raise failure
        assert sent.invocation is not None
        self.invocation = sent.invocation
        return sent.invocation

    async def _fail(self, exc: BaseException) -> None:
        """The call ended before its response headers: leave the timeout and count the call;
        raise the InvokeError that tells why, if there is one (else ``exc`` goes on)."""
        try:
            await self._leave_deadline(exc)
        except TimeoutError as expired:
            exc = expired
        status = _failure_status(exc)
        self.invoker.release(self.function, status, self.started)
        name = self.function.name
        if status == 502:
            message = f"function {name!r} is unreachable: {exc}"
            raise InvokeError(502, message, function=self.function) from None
        if status == 504:
            timeout = format_seconds(self.invoker.timeout_of(self.function))
            message = f"function {name!r} did not answer within its timeout of {timeout}"
            raise InvokeError(504, message, function=self.function) from None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        invocation = self.invocation
        assert invocation is not None
        invocation.upstream.release()
        expired = False
        try:
            await self._leave_deadline(exc)
        except TimeoutError:
            expired = True
            raise
        finally:
            # After the headers the caller's status is out already; a timeout is counted as
            # a 504 anyway, so that timeouts show in the metrics.
            status = invocation.status
            if expired or isinstance(exc, TimeoutError):
                status = 504
            elif isinstance(exc, asyncio.CancelledError):
                status = CLIENT_GONE
            self.invoker.release(self.function, status, self.started)

    async def _leave_deadline(self, exc: BaseException | None) -> None:
        """Leave the timeout's block as ``exc`` leaves it; raises ``TimeoutError`` if the
        timeout expired (its cancellation is what ended the call)."""
        deadline = self.deadline
        assert deadline is not None
        await deadline.__aexit__(type(exc) if exc is not None else None, exc, None)


@functools.lru_cache(maxsize=1024)
def _split_ref(ref: str, default_namespace: str) -> tuple[str, str]:
    """:func:`split_ref`, remembered: two regular expressions per call otherwise, for the
    same few names (an invalid one raises and is not kept)."""
    return split_ref(ref, default_namespace)


def _failure_status(exc: BaseException) -> int:
    """The status a call that failed before its response headers is counted with."""
    if isinstance(exc, UpstreamError):
        return 502
    if isinstance(exc, TimeoutError):
        return 504
    if isinstance(exc, asyncio.CancelledError):
        return CLIENT_GONE
    return 500


def request_body(call: Call) -> tuple[bytes | None, ChunkSource | None]:
    """The call's body as the client sends it: whole bytes, or a stream of chunks."""
    body = call.body
    if isinstance(body, bytes):
        return body, None
    if isinstance(body, bytearray):
        return bytes(body), None
    if body is not None:
        return None, ChunkSource(body)
    return (b"" if call.method not in _BODYLESS else None), None
