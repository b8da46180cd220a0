"""Request limits: the in-flight cap (429) and the deadlines of read_timeout and write_timeout."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Protocol, TypeVar

from .http import Request, Response, StreamResponse
from .http.express import Call

T = TypeVar("T")

log = logging.getLogger("watchdog.limits")


class ByteStream(Protocol):
    """A body as it arrives: the watchdog's :class:`.http.BodyStream` or aiohttp's reader."""

    async def readany(self) -> bytes: ...


class BodyTimeout(Exception):
    """The client did not deliver the request body within read_timeout."""


class BodyTooLarge(Exception):
    """The request body is longer than max_body_size, the most the watchdog holds in memory."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit

    @property
    def text(self) -> str:
        """The 413's body."""
        return f"Request body larger than max_body_size ({self.limit} bytes)\n"


class ClientStalled(Exception):
    """The client did not accept response bytes within write_timeout."""


def log_stalled(method: str, target: str) -> None:
    """The one line logged when a client is cut off for not taking its answer, whichever
    path was writing it."""
    log.warning(
        "Client did not read the response to %s %s within write_timeout; cut off", method, target
    )


class InflightLimiter:
    """Counts requests being handled; refuses one beyond ``limit`` (0 means no limit)."""

    __slots__ = ("limit", "inflight", "idle")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def try_acquire(self) -> bool:
        if self.limit and self.inflight >= self.limit:
            return False
        self.inflight += 1
        self.idle.clear()
        return True

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()

    @property
    def saturated(self) -> bool:
        return bool(self.limit) and self.inflight >= self.limit

    def refusal_text(self) -> str:
        return f"Concurrent request limit exceeded. Max concurrent requests: {self.limit}\n"


class InflightMetrics(Protocol):
    """What :class:`Admission` counts in (the watchdog's metrics)."""

    @property
    def in_flight(self) -> Gauge: ...

    def observe(self, status: int, method: str, seconds: float) -> None: ...


class Gauge(Protocol):
    def inc(self, amount: float = 1.0) -> None: ...

    def dec(self, amount: float = 1.0) -> None: ...


class Admission:
    """What the server does around every request to the function, whichever path answers
    it: the in-flight cap (:class:`InflightLimiter`) and the request metrics."""

    __slots__ = ("limiter", "_metrics")

    def __init__(self, limiter: InflightLimiter, metrics: InflightMetrics) -> None:
        self.limiter = limiter
        self._metrics = metrics

    def admit(self) -> bool:
        """Count a request in, unless max_inflight are already in."""
        if not self.limiter.try_acquire():
            return False
        self._metrics.in_flight.inc()
        return True

    def withdraw(self) -> None:
        """Count an admitted request out again, unanswered (it will be admitted anew)."""
        self.limiter.release()
        self._metrics.in_flight.dec()

    def discharge(self, status: int, method: str, started: float) -> None:
        """Count an admitted request out, answered with ``status`` (``started``: its
        ``time.monotonic()`` arrival)."""
        self.limiter.release()
        self._metrics.in_flight.dec()
        self._metrics.observe(status, method, time.monotonic() - started)


class Admitted:
    """The note of a request that was admitted before its handler got it (an express
    handing it over), timed from ``started``; ``abandon`` lets go of what the express holds
    for it, if the request is dropped before its handler begins (see
    :class:`.http.express.Note`)."""

    __slots__ = ("started", "abandon")

    def __init__(self, started: float, abandon: Callable[[], None]) -> None:
        self.started = started
        self.abandon = abandon


async def read_body(
    request: Request, deadline: float | None, limit: int | None = None
) -> bytearray:
    """Read the whole body before the loop-time ``deadline``, at most ``limit`` bytes, into
    one buffer (``content.read()`` would join the pieces into one more copy).

    Raises:
        BodyTimeout: the deadline passed first.
        BodyTooLarge: the body is longer than ``limit`` (told by Content-Length before any of
            it is read, when the client sent one).
    """
    length = request.content_length
    if limit is not None and length is not None and length > limit:
        raise BodyTooLarge(limit)
    try:
        async with asyncio.timeout_at(deadline):
            return await read_stream(request.content, limit)
    except TimeoutError:
        raise BodyTimeout from None


async def read_stream(content: ByteStream, limit: int | None) -> bytearray:
    """All of ``content`` (a request's or an upstream answer's body), in one buffer.

    Raises:
        BodyTooLarge: as soon as it is longer than ``limit``.
    """
    body = bytearray()
    while chunk := await content.readany():
        body += chunk
        if limit is not None and len(body) > limit:
            raise BodyTooLarge(limit)
    return body


class TaskTimeout:
    """``asyncio.timeout(seconds)`` as it behaves for one request's task, told its loop:
    asyncio's asks for the running loop twice, a getpid system call each time on Python 3.11,
    on the path of every request. ``None`` seconds: no limit."""

    __slots__ = ("_loop", "_seconds", "_task", "_timer", "_expired", "_cancelling")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float | None) -> None:
        self._loop = loop
        self._seconds = seconds
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        self._cancelling = 0

    async def __aenter__(self) -> None:
        task = asyncio.current_task(self._loop)
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        if self._seconds is not None:
            self._timer = self._loop.call_later(self._seconds, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    async def __aexit__(self, kind: type[BaseException] | None, exc: object, _: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # As asyncio's: our own cancellation is taken back in any case; it becomes the
        # TimeoutError unless somebody else asked to cancel the task meanwhile.
        if self._expired and self._task.uncancel() <= self._cancelling:
            if kind is asyncio.CancelledError:
                raise TimeoutError from (exc if isinstance(exc, BaseException) else None)


class Expiring(Protocol):
    """What :class:`Deadlines` keeps: told when its time is up."""

    def expire(self) -> None: ...


class Deadlines:
    """One timeout for many requests, on one loop timer: each request joins the bucket of its
    deadline (rounded up to 1/200 of the timeout: late by at most 0.5%), and the timer,
    armed for the oldest bucket, expires what is still in it. A request pays a set insertion
    and removal, where a loop timer of its own (:class:`TaskTimeout`) costs several
    microseconds on the hot path; at most 200 buckets are pending at a time."""

    __slots__ = ("_loop", "_seconds", "_resolution", "_buckets", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self._loop = loop
        self._seconds = seconds
        self._resolution = max(seconds / 200, 0.001)
        # (tick, bucket), oldest first: deadlines are added in the order they fall due.
        self._buckets: deque[tuple[int, set[Expiring]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, item: Expiring) -> set[Expiring]:
        """Expire ``item`` ``seconds`` from now, unless it is removed from the set returned
        before then."""
        tick = int((self._loop.time() + self._seconds) / self._resolution) + 1
        buckets = self._buckets
        if buckets and buckets[-1][0] == tick:
            bucket = buckets[-1][1]
        else:
            bucket = set()
            buckets.append((tick, bucket))
            if self._timer is None:
                self._arm(tick)
        bucket.add(item)
        return bucket

    def _arm(self, tick: int) -> None:
        self._timer = self._loop.call_at(tick * self._resolution, self._expire)

    def _expire(self) -> None:
        self._timer = None
        buckets = self._buckets
        now = self._loop.time() + 0.001  # (timers may fire a little early)
        while buckets:
            tick, bucket = buckets[0]
            if tick * self._resolution > now:
                self._arm(tick)
                return
            buckets.popleft()
            while bucket:  # (an item may take itself out as it expires)
                bucket.pop().expire()


async def within_write_timeout(write: Awaitable[T], timeout: float | None) -> T:
    """Await one write to the client, raising :class:`ClientStalled` if it takes too long."""
    try:
        async with asyncio.timeout(timeout):
            return await write
    except TimeoutError:
        raise ClientStalled from None


Settle = Callable[[BaseException | None], None]
"""Counts an express call out once its answer is written: given None when the client took
it, :class:`ClientStalled` when it was cut off for not taking it, a ConnectionError when it
went away."""


def answer_call(
    call: Call,
    head: bytes,
    body: bytes | bytearray | None,
    write_timeout: float | None,
    settle: Settle,
) -> None:
    """Write an express call's whole answer, and finish the call. ``settle`` runs once the
    client has taken the answer, or was cut off for not taking it within ``write_timeout``:
    until then the call holds its max_inflight slot, as any answer does."""
    try:
        call.send(head, body)
    except ConnectionError as gone:  # nothing to tell the client
        settle(gone)
        call.finish()
        return
    if call.congested:
        in_background(_finish_when_taken(call, write_timeout, settle))
        return
    settle(None)
    call.finish()


def in_background(work: Coroutine[object, object, None]) -> None:
    """Run ``work`` as a task of its own, held here until done (the loop holds only a weak
    reference to a task): what an express still does for a call it is done with."""
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Future[None]] = set()


async def _finish_when_taken(call: Call, write_timeout: float | None, settle: Settle) -> None:
    ended: BaseException | None = None
    try:
        await within_write_timeout(call.drain(), write_timeout)
    except ClientStalled as stalled:
        log_stalled(call.method, call.raw_path)
        call.cut()
        ended = stalled
    except ConnectionError as gone:
        ended = gone
    settle(ended)
    call.finish()


async def send_whole(request: Request, response: StreamResponse, timeout: float | None) -> None:
    """Write a response that is complete in memory (status, headers, body and end) within
    ``timeout`` in all: the server would otherwise write it after the handler returned, with no
    deadline, while a client that never reads keeps the connection and the body alive.

    Raises:
        ClientStalled: the client did not take it all in time.
    """
    if isinstance(response, Response):
        response.write_whole(request)
        channel = request.channel
        if channel.congested:  # the deadline costs nothing while the client keeps up
            await within_write_timeout(channel.drain(), timeout)
        return

    async def prepare_and_finish() -> None:
        await response.prepare(request)
        await response.write_eof()

    await within_write_timeout(prepare_and_finish(), timeout)


def time_left(seconds: float | None, started: float) -> float | None:
    """What is left of a timeout of ``seconds`` (None: none) for work that began at
    ``started`` (``time.monotonic()``): an express handing a request over after part of it."""
    if seconds is None:
        return None
    return max(seconds - (time.monotonic() - started), 0.0)


def seconds_or_none(value: float) -> float | None:
    """Configuration says 0 for "no limit"; asyncio says None."""
    return value if value > 0 else None
