"""The shared queue backend: NATS JetStream, for several gateways on several machines.

The record of a call (``KV P_records``, :mod:`.nats_store`) is the truth: status, lease owner
and expiry, attempt counter, response, callback state. Every change is a compare-and-set on
its revision, so two gateways never both win, and an outcome reported under a lost lease is
refused (the fence is the attempt counter and the owner, as in the SQLite backend); what
changes is decided by :mod:`.transitions`. Beside each unfinished call is one *job* in a
work-queue stream (:mod:`.nats_jobs`): a durable timer saying "look at call X" when it may be
due, or when its lease ends, so a call whose worker died is taken over by the next gateway.
The job stream's message count is the queue depth.

Durability: every method that changes state returns after JetStream acknowledged the write
(publish acks, KV acks). Outages: every method raises :class:`~.base.QueueUnavailable` at
once while NATS is known to be down (:mod:`.nats_link`).

One module a concern: the connection (:mod:`.nats_link`), the names and their set-up
(:mod:`.nats_layout`), the job streams (:mod:`.nats_jobs`), the records (:mod:`.nats_store`,
their format :mod:`.nats_record`), idempotency keys (:mod:`.nats_idempotency`), taking a
pulled job (:mod:`.nats_take`), and one per protocol of :mod:`.base`: :mod:`.nats_intake`,
:mod:`.nats_runs`, :mod:`.nats_outbox`, :mod:`.nats_activations`. :class:`NatsQueue` puts
them together.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from nats.aio.client import Client

from .base import (
    ActivationPage,
    ActivationRecord,
    AttemptResult,
    CallbackAttempt,
    CallbackBatch,
    CallbackJob,
    CallRequest,
    CancelOutcome,
    EnqueueResult,
    LeaseBatch,
    LeasedCall,
    ListQuery,
    QueueError,
)
from .clock import SYSTEM_CLOCK, Clock
from .nats_activations import NatsActivations
from .nats_idempotency import IdempotencyKeys
from .nats_intake import DepthHint, HeldCalls, NatsIntake
from .nats_jobs import JobStream
from .nats_layout import DEFAULT_PREFIX, Layout
from .nats_link import Handles, NatsLink, reason
from .nats_outbox import NatsCallbackOutbox
from .nats_runs import NatsRunQueue
from .nats_store import RecordStore

log = logging.getLogger("watchdog.gateway.queue")

DEFAULT_URL = "nats://127.0.0.1:4222"
__all__ = ["DEFAULT_PREFIX", "DEFAULT_URL", "NatsQueue"]


class NatsQueue:
    """The NATS JetStream implementation of :class:`~.base.QueueBackend`.

    Args:
        url: the NATS server(s), comma-separated (``nats://host:4222``).
        prefix: names of the streams, buckets and subjects start with it, so several
            gateway groups (or tests) can share one NATS.
        max_depth: unfinished calls allowed before :meth:`enqueue` raises
            :class:`~.base.QueueFull`; 0 = unbounded.
        retry_after: the ``Retry-After`` suggested when the queue is full, in seconds.
        replicas: JetStream replicas of every stream and bucket (1 on a single server).
        connect_timeout: how long one attempt to connect to a NATS server may take.
        start_timeout: how long :meth:`open` waits for NATS to accept connections and for
            its JetStream to set up the streams and buckets (a cluster still forming).
        clock: where "now" is read for the records (tests move one by hand).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_depth: int = 0,
        retry_after: float = 1.0,
        replicas: int = 1,
        connect_timeout: float = 5.0,
        start_timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.layout = layout = Layout(prefix, replicas)
        self.url = url
        self.prefix = prefix
        self.max_depth = max_depth
        self.retry_after = retry_after
        self.replicas = replicas
        self.connect_timeout = connect_timeout
        self.start_timeout = start_timeout
        self.clock = clock
        self.calls_stream = layout.calls.stream
        self.callbacks_stream = layout.callbacks.stream
        self.records_bucket = layout.records_bucket
        self.idempotency_bucket = layout.idempotency_bucket
        self.link = link = NatsLink(
            url,
            connect_timeout=connect_timeout,
            start_timeout=start_timeout,
            layout=layout.described,
            streams=layout.all_streams,
        )
        self._records = RecordStore(link, layout.records_bucket, clock)
        self._call_jobs = JobStream(link, layout.calls, clock)
        self._callback_jobs = JobStream(link, layout.callbacks, clock)
        keys = IdempotencyKeys(link, self._records, clock)
        depth = DepthHint()
        # Leases handed out by this process and not ended: on close they are given up, so
        # another gateway takes them over at once instead of when they expire.
        self._held_calls: HeldCalls = {}
        self._intake = NatsIntake(
            link,
            records=self._records,
            jobs=self._call_jobs,
            keys=keys,
            depth=depth,
            held=self._held_calls,
            clock=clock,
            max_depth=max_depth,
            retry_after=retry_after,
        )
        self._runs = NatsRunQueue(
            link,
            records=self._records,
            jobs=self._call_jobs,
            callback_jobs=self._callback_jobs,
            depth=depth,
            held=self._held_calls,
            clock=clock,
        )
        self._outbox = NatsCallbackOutbox(
            link, records=self._records, jobs=self._callback_jobs, clock=clock
        )
        self._activations = NatsActivations(
            link, records=self._records, jobs=self._call_jobs, keys=keys, depth=depth, clock=clock
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and set up the streams and buckets, waiting up to ``start_timeout`` for
        NATS to accept connections and for JetStream to be ready (logging while it waits)."""
        if self.link.is_open:
            raise QueueError("queue already open")
        await self.link.open(self._set_up)

    async def _set_up(self, nc: Client, timeout: float) -> tuple[Handles, Handles]:
        handles = await self.layout.set_up(nc, timeout)
        for jobs in (self._call_jobs, self._callback_jobs):
            await jobs.subscribe(nc)
        return handles

    async def close(self) -> None:
        if not self.link.is_open:
            return
        self.link.stop_watching()
        try:
            if self.link.up:  # else the leases simply expire: no waiting on an absent NATS
                await self._give_up_leases()
        except Exception as exc:  # noqa: BLE001 - the leases then simply expire
            log.warning("giving up leases on close failed: %s", reason(exc))
        self._records.forget()
        self._held_calls.clear()
        self._runs.pulled.clear()
        self._outbox.forget_all()
        await self.link.close()

    async def _give_up_leases(self) -> None:
        """Make the calls and deliveries this process still holds due now (their attempts
        count as interrupted), so another gateway does not wait for the leases to run out."""
        calls = await self._runs.give_up()
        callbacks = await self._outbox.give_up()
        # At once, not coalesced: the connection is about to close.
        if calls:
            await self._call_jobs.wake_now()
        if callbacks:
            await self._callback_jobs.wake_now()

    # -- CallIntake -----------------------------------------------------------------------

    async def enqueue(self, request: CallRequest) -> EnqueueResult:
        return await self._intake.enqueue(request)

    async def adopt(self, request: CallRequest, *, owner: str, lease_for: float) -> LeasedCall:
        return await self._intake.adopt(request, owner=owner, lease_for=lease_for)

    async def find_idempotent(self, function: str, key: str) -> str | None:
        return await self._intake.find_idempotent(function, key)

    async def depth(self) -> int:
        return await self._intake.depth()

    # -- CallRunQueue ---------------------------------------------------------------------

    async def lease(
        self,
        *,
        owner: str,
        limit: int,
        lease_for: float,
        skip_functions: Collection[str] = (),
    ) -> LeaseBatch:
        return await self._runs.lease(
            owner=owner, limit=limit, lease_for=lease_for, skip_functions=skip_functions
        )

    async def wait_for_calls(self, timeout: float) -> None:
        await self._runs.wait_for_calls(timeout)

    async def extend(self, lease: LeasedCall, lease_for: float) -> bool:
        return await self._runs.extend(lease, lease_for)

    async def release(self, lease: LeasedCall) -> bool:
        return await self._runs.release(lease)

    async def complete(self, lease: LeasedCall, result: AttemptResult) -> bool:
        return await self._runs.complete(lease, result)

    async def retry(self, lease: LeasedCall, result: AttemptResult, at: float) -> bool:
        return await self._runs.retry(lease, result, at)

    async def fail(self, lease: LeasedCall, result: AttemptResult) -> bool:
        return await self._runs.fail(lease, result)

    # -- CallbackOutbox -------------------------------------------------------------------

    async def lease_callbacks(self, *, owner: str, limit: int, lease_for: float) -> CallbackBatch:
        return await self._outbox.lease_callbacks(owner=owner, limit=limit, lease_for=lease_for)

    async def wait_for_callbacks(self, timeout: float) -> None:
        await self._outbox.wait_for_callbacks(timeout)

    async def extend_callback(self, job: CallbackJob, lease_for: float) -> bool:
        return await self._outbox.extend_callback(job, lease_for)

    async def callback_delivered(self, job: CallbackJob, attempt: CallbackAttempt) -> bool:
        return await self._outbox.callback_delivered(job, attempt)

    async def callback_retry(self, job: CallbackJob, attempt: CallbackAttempt, at: float) -> bool:
        return await self._outbox.callback_retry(job, attempt, at)

    async def callback_failed(self, job: CallbackJob, attempt: CallbackAttempt) -> bool:
        return await self._outbox.callback_failed(job, attempt)

    # -- ActivationStore ------------------------------------------------------------------

    async def cancel(self, call_id: str) -> CancelOutcome:
        return await self._activations.cancel(call_id)

    async def get(self, call_id: str) -> ActivationRecord | None:
        return await self._activations.get(call_id)

    async def purge(self, ended_before: float) -> int:
        return await self._activations.purge(ended_before)

    # Defined last: inside the class body the name ``list`` is this method from here on.
    async def list(self, query: ListQuery) -> ActivationPage:
        return await self._activations.list(query)
