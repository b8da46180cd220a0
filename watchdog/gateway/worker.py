"""Workers that run queued calls: lease, invoke, decide, record.

An :class:`AsyncWorker` runs in the gateway process. It leases due calls from the queue up to
a global concurrency limit, leaving functions at their own limit for later, and runs each
through an :class:`AttemptRunner` (in the gateway, :class:`InvokePathRunner`: the gateway's
one synchronous invoke path). While a call runs its lease is extended every third of its
length, so a slow call is never handed to a second worker; if the gateway dies the lease runs
out (or, with the SQLite store, the next gateway takes the call over at once) and the call
runs again: at-least-once, never lost.

After each attempt :func:`~.retry.decide` picks: complete, retry at a time, or fail. A call
older than its function's ``max_event_age`` fails without running; an attempt cut short by a
gateway restart counts as a platform failure and is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict

from ..forwarding import HOP_BY_HOP
from ..responses import INTERNAL_HEADER
from ._aio import first_of, keep_renewing, record_outcome
from .invoke import Call, InvokeError, Invoker
from .proxy import UpstreamError, response_headers
from .queue.base import (
    AttemptResult,
    CallRunQueue,
    Headers,
    LeasedCall,
    QueueError,
)
from .retry import RetryPolicy, decide, header

log = logging.getLogger("watchdog.gateway.worker")

DEFAULT_RESULT_LIMIT = 1 << 20
_NOT_REPLAYED = HOP_BY_HOP | {"host", "content-length"}
_WATCHDOG_REFUSALS = frozenset({429, 502, 503})


@dataclass(frozen=True, slots=True)
class InvokeResult:
    """An attempt's result; ``retryable`` overrides the policy (False: never retry, e.g. the
    function is no longer registered). ``gateway_status`` is what the gateway answered
    itself when the function gave no response (429 at its limit, 502, 504)."""

    result: AttemptResult
    retryable: bool | None = None
    gateway_status: int | None = None


class AttemptRunner(Protocol):
    """Runs one attempt of a call synchronously and reports how it ended. Never raises for
    a failure of the function or of the network: those are results."""

    async def invoke(self, call: LeasedCall) -> InvokeResult: ...


def replay_headers(call: LeasedCall) -> list[tuple[str, str]]:
    """The call's request headers as they came, minus hop-by-hop ones, plus ``X-Call-Id``."""
    headers = [
        (k, v)
        for k, v in call.request.headers
        if k.lower() not in _NOT_REPLAYED and k.lower() != "x-call-id"
    ]
    headers.append(("X-Call-Id", call.call_id))
    return headers


def classify(
    status: int, headers: Headers, body: bytes, truncated: bool, started: float
) -> AttemptResult:
    """An :class:`AttemptResult` for a response: status >= 400 is a failure of the function,
    unless the watchdog refused the call itself (``X-OpenFaaS-Internal`` on a 429 at its
    ``max_inflight``, a 502 or 503 for an upstream that is down): a failure of the platform.
    (Its 500 for a handler that failed and 504 for one past ``exec_timeout`` are the
    function's.)"""
    if status < 400:
        return AttemptResult(started, time.time(), status, headers, body, truncated)
    internal = status in _WATCHDOG_REFUSALS and header(headers, INTERNAL_HEADER) is not None
    return AttemptResult(
        started_at=started,
        ended_at=time.time(),
        status_code=status,
        headers=headers,
        body=body,
        truncated=truncated,
        error=f"{'the watchdog' if internal else 'function'} answered {status}",
        error_kind="platform" if internal else "function",
    )


def platform_failure(started: float, error: str) -> AttemptResult:
    return AttemptResult(
        started_at=started, ended_at=time.time(), error=error, error_kind="platform"
    )


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """:func:`read_capped_chunks` of an aiohttp client's response (direct delivery)."""
    return await read_capped_chunks(response.content.readany, limit)


async def read_capped_chunks(
    read_chunk: Callable[[], Awaitable[bytes]], limit: int
) -> tuple[bytes, bool]:
    """Read a whole body (``read_chunk`` gives ``b""`` at its end), keeping at most ``limit``
    bytes; True if some were dropped."""
    kept = bytearray()
    truncated = False
    while chunk := await read_chunk():
        room = limit - len(kept)
        if len(chunk) > room:
            truncated = True
            kept += chunk[: max(room, 0)]
        else:
            kept += chunk
    return bytes(kept), truncated


class InvokePathRunner:
    """Runs a queued call through the gateway's synchronous invoke path
    (:meth:`watchdog.gateway.invoke.Invoker.invoke`), so an asynchronous call has the same
    name resolution, per-function concurrency limit, timeout, call id and metrics as
    ``/function/NAME``.

    The gateway's own refusals are platform failures: 429 (the function at its limit, with
    its ``Retry-After``), 502 (unreachable), 504 (timed out) are retried; a function no longer
    registered (404) or a malformed name (400) fails at once.
    """

    def __init__(self, invoker: Invoker, result_limit: int = DEFAULT_RESULT_LIMIT):
        self.invoker = invoker
        self.result_limit = result_limit

    def limit_for(self, name: str) -> int | None:
        """The function's ``max_concurrency`` (None when unlimited or unknown), for
        :class:`AsyncWorker`."""
        try:
            return self.invoker.resolve(name).max_concurrency or None
        except InvokeError:
            return None

    async def invoke(self, call: LeasedCall) -> InvokeResult:
        request = call.request
        started = time.time()
        try:
            function = self.invoker.resolve(request.function)
        except InvokeError as exc:
            return InvokeResult(platform_failure(started, exc.message), retryable=False)
        target = (request.path or "/") + (f"?{request.query}" if request.query else "")
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in request.headers if k.lower() not in _NOT_REPLAYED
        )
        if request.body:
            headers["Content-Length"] = str(len(request.body))
        outgoing = Call(request.method, target, headers, request.body, call.call_id)
        try:
            async with self.invoker.invoke(function, outgoing) as invocation:
                upstream = invocation.upstream
                body, truncated = await read_capped_chunks(upstream.read_chunk, self.result_limit)
                kept = tuple(response_headers(upstream))
                return InvokeResult(classify(invocation.status, kept, body, truncated, started))
        except InvokeError as exc:
            retry_after: Headers = ()
            if exc.retry_after is not None:
                retry_after = (("Retry-After", str(exc.retry_after)),)
            result = AttemptResult(
                started_at=started,
                ended_at=time.time(),
                headers=retry_after,
                error=f"{exc.status}: {exc.message}",
                error_kind="platform",
            )
            retryable = exc.status in (429, 502, 503, 504)
            return InvokeResult(result, retryable=retryable, gateway_status=exc.status)
        except TimeoutError:
            timeout = self.invoker.timeout_of(function)
            error = f"timed out after {timeout:g}s"
            return InvokeResult(platform_failure(started, error), gateway_status=504)
        except (UpstreamError, OSError) as exc:
            error = f"connection to the function failed: {exc.__class__.__name__}: {exc}"
            return InvokeResult(platform_failure(started, error), gateway_status=502)


_LEASE_GATHER = 0.005
"""Seconds a worker with a backlog and few free slots waits for more to free before leasing."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Attributes:
    concurrency: calls run at once by this worker, all functions together.
    lease_for: lease length; extended every third of it while a call runs.
    poll_interval: the longest sleep between looks at the queue when nothing is due
        (new calls wake the worker at once).
    """

    concurrency: int  # the gateway's async_concurrency
    lease_for: float  # the gateway's async_lease
    poll_interval: float = 1.0


class AsyncWorker:
    """Runs due calls from ``queue`` until stopped.

    Args:
        policy_for: the retry policy of a function.
        limit_for: the most calls of a function run at once (None: no limit of its own).
    """

    def __init__(
        self,
        queue: CallRunQueue,
        invoker: AttemptRunner,
        *,
        policy_for: Callable[[str], RetryPolicy],
        limit_for: Callable[[str], int | None] = lambda name: None,
        settings: WorkerSettings,
        owner: str | None = None,
    ) -> None:
        self.queue = queue
        self.invoker = invoker
        self.policy_for = policy_for
        self.limit_for = limit_for
        self.settings = settings
        self.owner = owner or f"worker-{uuid.uuid4().hex[:12]}"
        self.running: Counter[str] = Counter()
        self._inflight: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self._watchers: dict[str, asyncio.Event] = {}

    def _saturated(self) -> list[str]:
        full = []
        for name, count in self.running.items():
            limit = self.limit_for(name)
            if limit is not None and count >= limit:
                full.append(name)
        return full

    async def run(self, stop: asyncio.Event, drain_timeout: float = 10.0) -> None:
        """Work until ``stop`` is set; then wait up to ``drain_timeout`` for running calls
        and abandon the rest (their leases make them due again for the next gateway)."""
        backlog = False  # the last lease took all it asked for: more calls are likely due
        try:
            while not stop.is_set():
                free = self.settings.concurrency - len(self._inflight)
                if free <= 0:
                    await first_of(stop.wait(), self._slot_freed.wait())
                    self._slot_freed.clear()
                    continue
                if backlog and free < self.settings.concurrency // 4:
                    # With a backlog, slots free one by one: a moment's wait lets a lease
                    # take several, each lease costing the store a round of its own.
                    await first_of(stop.wait(), asyncio.sleep(_LEASE_GATHER))
                    free = self.settings.concurrency - len(self._inflight)
                self._slot_freed.clear()
                try:
                    batch = await self.queue.lease(
                        owner=self.owner,
                        limit=free,
                        lease_for=self.settings.lease_for,
                        skip_functions=self._saturated(),
                    )
                except QueueError as exc:  # a networked store may be away for a while
                    log.warning("leasing calls failed, trying again: %s", exc)
                    await first_of(stop.wait(), asyncio.sleep(self.settings.poll_interval))
                    continue
                over: list[LeasedCall] = []
                for call in batch.calls:
                    limit = self.limit_for(call.request.function)
                    if limit is not None and self.running[call.request.function] >= limit:
                        over.append(call)  # the batch held more than the function may run
                    else:
                        self._start(call)
                for call in over:
                    await self._release(call)
                backlog = len(batch.calls) == free
                if backlog:
                    continue
                wait = self.settings.poll_interval
                if batch.next_due is not None:
                    wait = min(wait, max(0.0, batch.next_due - time.time()))
                # A finished call may unblock a function that was at its limit.
                await first_of(
                    stop.wait(), self.queue.wait_for_calls(wait), self._slot_freed.wait()
                )
            if self._inflight:
                await asyncio.wait(set(self._inflight), timeout=drain_timeout)
        finally:
            for task in self._inflight:
                task.cancel()
            if self._inflight:
                await asyncio.wait(set(self._inflight), timeout=5)

    def watch(self, call_id: str) -> asyncio.Event:
        """An event set once this worker has recorded the end of ``call_id`` (succeeded or
        failed, not a retry), so a caller waiting for the record need not poll the store.
        Another gateway sharing the queue may run the call instead: waiters still look at
        the record now and then. Pair with :meth:`unwatch`."""
        return self._watchers.setdefault(call_id, asyncio.Event())

    def unwatch(self, call_id: str) -> None:
        self._watchers.pop(call_id, None)

    async def _release(self, call: LeasedCall) -> None:
        try:
            await self.queue.release(call)
        except QueueError as exc:  # the lease then runs out and the call is due again
            log.warning("handing back call %s failed: %s", call.call_id, exc)

    def adopt(self, call: LeasedCall, attempt: Awaitable[InvokeResult]) -> None:
        """Take over ``call``, whose first attempt is already running as ``attempt`` (a
        synchronous call converted to asynchronous): keep its lease alive, then complete,
        retry or fail it like any call of the queue."""
        self._start(call, self._settle(call, attempt))

    def _start(self, call: LeasedCall, work: Coroutine[Any, Any, None] | None = None) -> None:
        name = call.request.function
        self.running[name] += 1
        work = work if work is not None else self._run_call(call)
        task = asyncio.create_task(work, name=f"call-{call.call_id}")
        self._inflight.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._inflight.discard(task)
            self.running[name] -= 1
            if self.running[name] <= 0:
                del self.running[name]
            self._slot_freed.set()
            if not task.cancelled() and task.exception() is not None:
                log.error("call %s crashed", call.call_id, exc_info=task.exception())

        task.add_done_callback(done)

    async def _run_call(self, call: LeasedCall) -> None:
        policy = self.policy_for(call.request.function)
        now = time.time()
        if policy.expired(call.due_since, now):
            error = f"not run: older than max_event_age ({policy.max_event_age:g}s)"
            await self._end(call, platform_failure(now, error), "fail")
            return
        if call.attempt > policy.max_attempts:
            # Only reachable when the previous attempt was interrupted (a gateway restart):
            # running it again would exceed the attempts the function allows.
            error = f"gave up: attempt {call.attempt - 1} of {policy.max_attempts} interrupted"
            await self._end(call, platform_failure(now, error), "fail")
            return
        await self._settle(call, self.invoker.invoke(call))

    async def _settle(self, call: LeasedCall, attempt: Awaitable[InvokeResult]) -> None:
        """Await the attempt while heartbeating the lease, then end the call as policy says."""
        started = time.time()
        # The lease is renewed until the outcome is recorded, not only while the call runs:
        # saving it may wait out a NATS outage, and a lease that ran out meanwhile would run
        # a call whose function has answered again.
        heartbeat = asyncio.create_task(self._heartbeat(call))
        try:
            await self._attempt_and_end(call, attempt, started)
        finally:
            heartbeat.cancel()

    async def _attempt_and_end(
        self, call: LeasedCall, attempt: Awaitable[InvokeResult], started: float
    ) -> None:
        policy = self.policy_for(call.request.function)
        try:
            outcome = await attempt
        except Exception as exc:  # noqa: BLE001 - an invoker bug must not lose the call
            log.exception("invoking call %s failed", call.call_id)
            outcome = InvokeResult(platform_failure(started, f"gateway error: {exc!r}"))
        result = outcome.result
        decision = decide(
            policy,
            attempt=call.attempt,
            created_at=call.due_since,
            result=result,
            now=time.time(),
            retryable=outcome.retryable,
        )
        if decision.action == "succeed":
            await self._end(call, result, "complete")
        elif decision.action == "retry":
            assert decision.at is not None
            await self._end(call, result, "retry", decision.at)
        else:
            error = f"{result.error}; {decision.reason}" if result.error else decision.reason
            await self._end(call, replace(result, error=error), "fail")

    async def _end(
        self, call: LeasedCall, result: AttemptResult, action: str, at: float = 0.0
    ) -> None:
        if action == "complete":
            kept = await self._report(call, lambda: self.queue.complete(call, result))
            self.completed += 1
        elif action == "retry":
            kept = await self._report(call, lambda: self.queue.retry(call, result, at))
            self.retried += 1
        else:
            kept = await self._report(call, lambda: self.queue.fail(call, result))
            self.failed += 1
        watcher = self._watchers.get(call.call_id)
        if watcher is not None and action != "retry":
            watcher.set()
        if not kept:
            log.warning(
                "call %s attempt %d: lease lost before it ended; its result is dropped",
                call.call_id,
                call.attempt,
            )

    async def _report(self, call: LeasedCall, report: Callable[[], Awaitable[bool]]) -> bool:
        return await record_outcome(report, log, f"call {call.call_id}")

    async def _heartbeat(self, call: LeasedCall) -> None:
        lease_for = self.settings.lease_for
        await keep_renewing(
            lambda: self.queue.extend(call, lease_for), lease_for / 3, log, f"call {call.call_id}"
        )
