"""The shared queue backend: NATS JetStream, for several gateways on several machines.

Where things live (``P`` is the name prefix, ``fwatchdog`` by default):

* ``KV P_records``: one activation record per call, keyed by call id, JSON. The record is the
  truth: status, lease owner and expiry, attempt counter, response, callback state. Every
  change is a compare-and-set on the key's revision (``kv.update(last=...)``), so two gateways
  never both win, and an outcome reported under a lost lease is refused (the fence is the
  attempt counter and the owner, as in the SQLite backend).
* ``stream P_calls`` (work-queue retention) holds one *job* per unfinished call, consumed by
  the durable pull consumer ``workers`` that all gateways share; ``stream P_callbacks`` the
  same for callback deliveries. A job only says "look at call X": whoever pulls it reads the
  record and either leases the call (CAS) or puts the job back with ``nak(delay)`` until the
  record's ``due_at``. A leased call's job is nak'd for the lease length, so it is a durable
  timer: if the worker dies the job comes back when the lease ends and the next gateway takes
  the call over (attempt + 1, the lost attempt logged as interrupted). Extending a lease only
  moves ``due_at`` in the record; the timer, when it fires early, is re-armed from it.
* ``KV P_idempotency``: ``sha256(function, key) -> call id``, claimed with ``kv.create``.

Why jobs and records are separate: the job stream's message count *is* the queue depth (one
job per unfinished call), read with one ``STREAM.INFO``, and a job never needs rewriting when
the record changes. The record names the job it expects (``job``, a stream sequence); the job
of a state change is published *before* the CAS that names it, so a crash in between leaves
an extra job, never a call without one. A job older than the record's is stale and dropped;
a newer one whose record write has not landed yet waits briefly, then counts as an orphan.

Durability: every method that changes state returns after JetStream acknowledged the write
(publish acks, KV acks). Acks and naks of jobs are fire-and-forget: a lost one only makes the
job come back after the consumer's ``ack_wait``, and the record decides again.

Outages: the queue knows whether NATS is reachable, from the client's connection callbacks
and from requests that time out, so a request to the gateway is not the one that finds out
by waiting. While NATS is down every method raises :class:`QueueUnavailable` at once; a
probe asks JetStream every _PROBE_EVERY seconds and marks it up when it answers. The methods
a client waits on (accept, read, list, cancel) give each NATS answer _DEADLINE seconds, the
workers' the usual _TIMEOUT.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import heapq
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from . import transitions
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
    QueueClosed,
    QueueError,
    QueueFull,
    QueueUnavailable,
    Status,
)
from .clock import SYSTEM_CLOCK, Clock
from .nats_record import (
    Record,
    activation,
    b64,
    claim_holder,
    claim_value,
    header_pairs,
    idempotency_key,
    record_key,
)
from .transitions import CallState, Refused

log = logging.getLogger("watchdog.gateway.queue")


DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_PREFIX = "fwatchdog"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_CONSUMER = "workers"
_ACK_WAIT = 10.0
"""Seconds a pulled job may stay unanswered before JetStream hands it out again (only matters
when a gateway dies between pulling a job and acking or re-arming it)."""
_RECHECK = 0.1
_ORPHAN_CHECKS = 50
"""A job newer than its record is looked at again every _RECHECK seconds, this many times, in
case the record write that names it is still in flight; then it counts as an orphan."""
_ORPHAN_GRACE = 5.0
"""How long an idempotency key's claim is honoured while its call's record is not there."""
_CAS_TRIES = 8
_PULL_ROUNDS = 8
_WAKE_GAP = 0.005
_SKIP_DEPTH = 1024
_SCAN_LIMIT = 200_000


_UNREACHABLE = (
    TimeoutError,  # nats.errors.TimeoutError is one
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    # A stream (or bucket) has no leader: a JetStream node died and its replicas have not
    # elected a new one yet (seconds). Nothing else works meanwhile either.
    nats.js.errors.NoStreamResponseError,
)
"""Failures that say NATS (or its JetStream) cannot be reached now: the queue is marked down."""
_NOT_READY = (*_UNREACHABLE, nats.errors.NoServersError)
"""Failures while setting up that mean JetStream is not ready yet (a cluster still forming,
its meta leader not elected; a node lost meanwhile): :meth:`NatsQueue.open` waits and tries
again, unless the server has no JetStream at all (:func:`_no_jetstream`)."""
_START_LOG_EVERY = 5.0
_PING_INTERVAL = 1
_MAX_PINGS_OUT = 2
"""A NATS node that stops answering (frozen, cut off) is given up after this many
unanswered pings, _PING_INTERVAL seconds apart (2-3 s), and the client moves to another node
(nats-py's defaults take four minutes; a stream's replicas elect a new leader in seconds)."""

_TIMEOUT = 5.0
"""Seconds the workers' operations wait for each NATS answer."""
_DEADLINE = 0.9
"""Seconds the request-path operations wait for each NATS answer: a client waiting on the
gateway gets its 503 within about a second when NATS stops answering."""
_PROBE_EVERY = 0.25
_PROBE_TIMEOUT = 0.5
_request_path: ContextVar[bool] = ContextVar("nats_request_path", default=False)
"""Set while a request-path operation runs (the deadline applies to everything it calls)."""


P = ParamSpec("P")
R = TypeVar("R")


def _as_queue_errors(
    method: Callable[Concatenate[NatsQueue, P], Awaitable[R]],
) -> Callable[Concatenate[NatsQueue, P], Awaitable[R]]:
    """Report NATS failures as :class:`QueueError`, the error every caller of a backend
    handles: :class:`QueueUnavailable` when NATS is away or slow (try again later). While
    NATS is known to be down, fail at once; a failure that says it is down marks it so."""

    @functools.wraps(method)
    async def translated(self: NatsQueue, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self._check_up()
        try:
            return await method(self, *args, **kwargs)
        except (nats.errors.MaxPayloadError, nats.js.errors.BadRequestError) as exc:
            raise QueueError(f"NATS refused the write: {_reason(exc)}") from exc
        except _UNREACHABLE as exc:
            self._mark_down(_reason(exc))
            raise QueueUnavailable(f"NATS: {_reason(exc)}") from exc
        except nats.errors.Error as exc:
            raise QueueUnavailable(f"NATS: {_reason(exc)}") from exc

    return translated


def _on_request_path(
    method: Callable[Concatenate[NatsQueue, P], Awaitable[R]],
) -> Callable[Concatenate[NatsQueue, P], Awaitable[R]]:
    """A method a client of the gateway waits on: every NATS answer it needs gets _DEADLINE
    seconds (the contextvar reaches the helpers it calls, and tasks they start)."""

    @functools.wraps(method)
    async def bounded(self: NatsQueue, /, *args: P.args, **kwargs: P.kwargs) -> R:
        token = _request_path.set(True)
        try:
            return await method(self, *args, **kwargs)
        finally:
            _request_path.reset(token)

    return bounded


class _Timers:
    """The times this process re-armed jobs for: a hint of when something next becomes due
    (a worker sleeps until then at most). Other gateways' timers are not known here; the
    worker's poll interval covers them."""

    def __init__(self) -> None:
        self._heap: list[float] = []

    def add(self, at: float) -> None:
        heapq.heappush(self._heap, at)
        if len(self._heap) > 4096:  # a hint only: keep the earliest
            self._heap = heapq.nsmallest(1024, self._heap)

    def next_due(self, now: float) -> float | None:
        # A timer that just fired may not be pullable yet: look again shortly, not at once.
        while self._heap and self._heap[0] < now - 0.05:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        first = self._heap[0]
        return first if first > now else now + 0.01


@dataclass(frozen=True, slots=True)
class _Job:
    msg: Msg
    call_id: str
    seq: int
    function: str


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
        if not _PREFIX_RE.match(prefix):
            raise ValueError(
                f"NATS name prefix {prefix!r} is invalid: expected 1-32 letters, digits, - or _"
            )
        self.url = url
        self.prefix = prefix
        self.max_depth = max_depth
        self.retry_after = retry_after
        self.replicas = replicas
        self.connect_timeout = connect_timeout
        self.start_timeout = start_timeout
        self.clock = clock
        self.calls_stream = f"{prefix}_calls"
        self.callbacks_stream = f"{prefix}_callbacks"
        self.records_bucket = f"{prefix}_records"
        self.idempotency_bucket = f"{prefix}_idempotency"
        self._calls_subject = f"{prefix}.calls"
        self._callbacks_subject = f"{prefix}.callbacks"
        self._wake_calls = f"{prefix}.wake.calls"
        self._wake_callbacks = f"{prefix}.wake.callbacks"
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._records: KeyValue | None = None
        self._idempotency: KeyValue | None = None
        # The same, with _DEADLINE on every answer, for the request path.
        self._fast: tuple[JetStreamContext, KeyValue, KeyValue] | None = None
        self._up = False
        self._down_reason = "not connected"
        self._down = asyncio.Event()  # set when marked down: the probe starts asking
        self._probe: asyncio.Task[None] | None = None
        self._subs: list[Subscription] = []
        # Pulls of the shared consumer answer to one long-lived inbox per stream, one pull
        # at a time (a pulled message names its stream's subject, not the inbox): no SUB
        # and UNSUB per pull, two more messages for the server every lease.
        self._pull_subs: dict[str, tuple[Subscription, asyncio.Lock]] = {}
        self._calls_event = asyncio.Event()
        self._callbacks_event = asyncio.Event()
        self._call_timers = _Timers()
        self._callback_timers = _Timers()
        # Leases handed out by this process and not ended: on close they are given up, so
        # another gateway takes them over at once instead of when they expire.
        self._held_calls: dict[str, tuple[int, str, str]] = {}  # attempt, owner, function
        self._held_callbacks: dict[str, tuple[int, str]] = {}
        self._depth_seen: tuple[int, float] | None = None
        self._known: dict[str, tuple[Record, int]] = {}  # see _update(keep=True)
        self._connect_error: Exception | None = None
        self._waiting_for = ""
        self._errors_seen: set[str] = set()
        self._last_purge: float | None = None  # monotonic
        self._wakes_due: set[str] = set()
        self._wake_tasks: set[asyncio.Future[None]] = set()
        self._closed = True

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and set up the streams and buckets, waiting up to ``start_timeout`` for
        NATS to accept connections and for JetStream to be ready (logging while it waits)."""
        if not self._closed:
            raise QueueError("queue already open")
        self._calls_event = asyncio.Event()
        self._callbacks_event = asyncio.Event()
        self._connect_error = None
        self._subs = []
        self._waiting_for = "connecting"
        deadline = time.monotonic() + self.start_timeout
        waiting = asyncio.create_task(self._log_waiting(), name="nats-start-log")
        try:
            nc = await self._connect(deadline)
            self._nc = nc
            try:
                await self._set_up(nc, deadline)
            except BaseException:
                await nc.close()
                self._nc = None
                raise
        finally:
            waiting.cancel()
        self._closed = False
        self._up = True
        self._down = asyncio.Event()
        self._probe = asyncio.create_task(self._watch(), name="nats-probe")

    async def _log_waiting(self) -> None:
        """While :meth:`open` waits, say so now and then (after a first moment: a ready NATS
        takes milliseconds), naming what it waits for."""
        await asyncio.sleep(1.0)
        while True:
            log.warning(
                "waiting for NATS at %s (%s), up to nats_start_timeout=%gs",
                self.url,
                self._waiting_for,
                self.start_timeout,
            )
            await asyncio.sleep(_START_LOG_EVERY)

    def _gave_up(self, what: str) -> QueueUnavailable:
        return QueueUnavailable(
            f"{what} within nats_start_timeout={self.start_timeout:g}s ({self._waiting_for})"
        )

    async def _connect(self, deadline: float) -> Client:
        try:
            # nats-py retries the first connection forever when reconnects are unlimited.
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await nats.connect(
                    [server.strip() for server in self.url.split(",") if server.strip()],
                    connect_timeout=self.connect_timeout,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    ping_interval=_PING_INTERVAL,
                    max_outstanding_pings=_MAX_PINGS_OUT,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                    name="fwatchdog-gateway",
                )
        except Exception as exc:  # noqa: BLE001 - nats-py raises several kinds
            cause = self._connect_error if isinstance(exc, TimeoutError) else exc
            self._waiting_for = _reason(cause) if cause is not None else "timed out"
            raise self._gave_up(f"cannot reach NATS at {self.url}") from None

    async def _set_up(self, nc: Client, deadline: float) -> None:
        """Make (or find) the streams and buckets; while JetStream is not ready (a cluster
        without a meta leader, or too few nodes for the replicas), try again until
        ``deadline``."""
        self._waiting_for = "JetStream to set up the streams and buckets"
        while True:
            left = deadline - time.monotonic()
            try:
                await self._set_up_once(nc, max(0.5, min(_TIMEOUT, left)))
                return
            except _NOT_READY as exc:
                if _no_jetstream(exc):
                    raise QueueUnavailable(
                        f"NATS at {self.url} has no JetStream (start nats-server with -js)"
                    ) from None
                self._waiting_for = f"JetStream not ready: {_reason(exc)}"
                if time.monotonic() + _PROBE_EVERY >= deadline:
                    raise self._gave_up(
                        f"NATS at {self.url}: cannot set up the streams and buckets {self.prefix}_*"
                    ) from None
                await asyncio.sleep(_PROBE_EVERY)
            except nats.errors.Error as exc:
                raise QueueUnavailable(
                    f"NATS at {self.url}: cannot set up the streams and buckets {self.prefix}_*:"
                    f" {_reason(exc)}"
                ) from None

    async def _set_up_once(self, nc: Client, timeout: float) -> None:
        js = nc.jetstream(timeout=timeout)
        await self._ensure_layout(js)
        self._js = nc.jetstream(timeout=_TIMEOUT)
        self._records = await self._js.key_value(self.records_bucket)
        self._idempotency = await self._js.key_value(self.idempotency_bucket)
        fast = nc.jetstream(timeout=_DEADLINE)
        self._fast = (
            fast,
            await fast.key_value(self.records_bucket),
            await fast.key_value(self.idempotency_bucket),
        )
        self._subs = [
            await nc.subscribe(self._wake_calls, cb=self._wake(self._calls_event)),
            await nc.subscribe(self._wake_callbacks, cb=self._wake(self._callbacks_event)),
        ]
        self._pull_subs = {}
        for stream in (self.calls_stream, self.callbacks_stream):
            sub = await nc.subscribe(nc.new_inbox())
            self._subs.append(sub)
            self._pull_subs[stream] = (sub, asyncio.Lock())

    async def _ensure_layout(self, js: JetStreamContext) -> None:
        for stream, subject in (
            (self.calls_stream, self._calls_subject),
            (self.callbacks_stream, self._callbacks_subject),
        ):
            await js.add_stream(
                StreamConfig(
                    name=stream,
                    subjects=[subject],
                    retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE,
                    num_replicas=self.replicas,
                )
            )
            await js.add_consumer(
                stream,
                ConsumerConfig(
                    durable_name=_CONSUMER,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=_ACK_WAIT,
                    max_ack_pending=-1,
                    max_deliver=-1,
                    filter_subject=subject,
                ),
            )
        for bucket in (self.records_bucket, self.idempotency_bucket):
            await self._bucket(js, bucket)

    async def _bucket(self, js: JetStreamContext, name: str) -> KeyValue:
        try:
            return await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            # One copy: reads are direct gets (served by the stream itself, not the
            # JetStream API: far cheaper for the server). With replicas a direct get may be
            # answered by a follower a write behind, so a read there goes to the leader.
            return await js.create_key_value(
                bucket=name,
                history=1,
                storage=StorageType.FILE,
                replicas=self.replicas,
                direct=self.replicas == 1,
            )

    async def _on_error(self, exc: Exception) -> None:
        if self._closed and self._nc is None:
            self._connect_error = exc  # reported once, if connecting fails
            return
        reason = _reason(exc)
        if reason not in self._errors_seen:  # not once per reconnect attempt
            self._errors_seen.add(reason)
            log.warning("NATS %s: %s", self.url, reason)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            log.warning("NATS %s: disconnected, reconnecting", self.url)
        self._mark_down("disconnected")

    async def _on_reconnected(self) -> None:
        self._errors_seen.clear()
        url = self._nc.connected_url if self._nc is not None else None
        log.warning("NATS: reconnected to %s", url.geturl() if url is not None else self.url)
        # Up once JetStream answers too (after a restart it may need a moment): the probe.

    async def _on_closed(self) -> None:
        self._mark_down("connection closed")

    # -- reachability ---------------------------------------------------------------------

    def _mark_down(self, reason: str) -> None:
        if self._up and not self._closed:
            log.warning(
                "NATS %s unreachable (%s): the queue answers 503 until it is back",
                self.url,
                reason,
            )
        self._up = False
        self._down_reason = reason
        self._down.set()

    def _check_up(self) -> None:
        """Fail at once while NATS is known to be unreachable, rather than wait for it."""
        nc = self._parts()[0]
        if self._up and not nc.is_connected:
            self._mark_down("disconnected")  # before the callback says so
        if not self._up:
            raise QueueUnavailable(f"NATS at {self.url} is unreachable ({self._down_reason})")

    async def _watch(self) -> None:
        """While NATS is marked down, ask JetStream every _PROBE_EVERY seconds; mark it up
        when it answers."""
        while True:
            await self._down.wait()
            await asyncio.sleep(_PROBE_EVERY)
            if not self._up and await self._answers():
                self._down.clear()
                self._up = True
                log.warning("NATS %s reachable again: the queue is available", self.url)

    async def _answers(self) -> bool:
        """JetStream answers for every stream and bucket, and each has a leader (after a
        node's death its replicas take seconds to elect one; until then writes fail)."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            return False
        js = nc.jetstream(timeout=_PROBE_TIMEOUT)
        streams = (
            self.calls_stream,
            self.callbacks_stream,
            f"KV_{self.records_bucket}",
            f"KV_{self.idempotency_bucket}",
        )
        try:
            infos = await asyncio.gather(*(js.stream_info(name) for name in streams))
        except _UNREACHABLE:
            return False
        except nats.errors.Error:
            return True  # JetStream answered, if with an error: it is reachable
        except Exception as exc:  # noqa: BLE001 - the probe must keep running
            log.debug("NATS probe: %s", _reason(exc))
            return False
        return all(info.cluster is None or info.cluster.leader for info in infos)

    @staticmethod
    def _wake(event: asyncio.Event) -> Callable[[Msg], Any]:
        async def handler(msg: Msg) -> None:
            event.set()

        return handler

    async def close(self) -> None:
        if self._closed:
            return
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        try:
            if self._up:  # else the leases simply expire: no waiting on an absent NATS
                await self._give_up_leases()
        except Exception as exc:  # noqa: BLE001 - the leases then simply expire
            log.warning("giving up leases on close failed: %s", _reason(exc))
        self._closed = True
        self._known.clear()
        self._held_calls.clear()
        self._held_callbacks.clear()
        nc = self._nc
        self._nc = self._js = self._records = self._idempotency = None
        self._fast = None
        self._up = False
        if nc is not None:
            try:
                await nc.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                await nc.close()

    async def _give_up_leases(self) -> None:
        """Make the calls and deliveries this process still holds due now (their attempts
        count as interrupted), so another gateway does not wait for the leases to run out."""
        calls, callbacks = dict(self._held_calls), dict(self._held_callbacks)
        for call_id, (attempt, owner, function) in calls.items():
            expire = _deciding(functools.partial(transitions.expire, attempt=attempt, owner=owner))
            await self._rearm(
                self.calls_stream, self._calls_subject, call_id, expire, "job", function
            )
        for call_id, (attempt, owner) in callbacks.items():
            expire_cb = _deciding(
                functools.partial(transitions.expire_callback, attempt=attempt, owner=owner)
            )
            await self._rearm(
                self.callbacks_stream, self._callbacks_subject, call_id, expire_cb, "callback_job"
            )
        nc = self._parts()[0]  # at once: the connection is about to close
        if calls:
            await nc.publish(self._wake_calls, b"")
        if callbacks:
            await nc.publish(self._wake_callbacks, b"")

    # -- plumbing -------------------------------------------------------------------------

    def _parts(self) -> tuple[Client, JetStreamContext, KeyValue, KeyValue]:
        """The connection, JetStream and the two buckets; on the request path, the ones
        that give each answer _DEADLINE seconds."""
        if (
            self._closed
            or self._nc is None
            or self._js is None
            or self._records is None
            or self._idempotency is None
            or self._fast is None
        ):
            raise QueueClosed("queue is not open")
        if _request_path.get():
            return self._nc, *self._fast
        return self._nc, self._js, self._records, self._idempotency

    @staticmethod
    def _timeout() -> float:
        """Seconds to wait for one NATS answer (on the request path, _DEADLINE)."""
        return _DEADLINE if _request_path.get() else _TIMEOUT

    async def _load(self, call_id: str) -> tuple[Record, int] | None:
        records = self._parts()[2]
        try:
            entry = await records.get(record_key(call_id))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.value is None or entry.revision is None:
            return None
        return Record.decode(entry.value), entry.revision

    async def _update(
        self, call_id: str, change: Change, *, keep: bool = False
    ) -> tuple[Record, Record] | None:
        """Write the record ``change`` makes of the stored one, with compare-and-set,
        re-reading and re-deciding on a conflict; ``change`` returns None to leave it alone.
        Returns (before, after) when written, else None.

        ``keep``: remember the written record and revision, so the next update of a call this
        process holds (extend, complete) can skip the read; a stale copy only costs a retry.
        """
        records = self._parts()[2]
        for _ in range(_CAS_TRIES):
            known = self._known.pop(call_id, None)
            loaded = known or await self._load(call_id)
            if loaded is None:
                return None
            before, revision = loaded
            after = change(before, self.clock.now())
            if after is None:
                if known is not None:
                    self._known[call_id] = known  # unchanged, still this process's last write
                return None
            try:
                written = await records.update(record_key(call_id), after.encode(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            if keep:
                self._known[call_id] = (after, written)
            return before, after
        raise QueueError(f"call {call_id}: the record kept changing under {_CAS_TRIES} updates")

    async def _publish_job(
        self, stream: str, subject: str, call_id: str, function: str = ""
    ) -> int:
        """Publish a job for ``call_id``; it names the function (when known) so a lease can
        pass over calls of functions at their limit without reading their records."""
        js = self._parts()[1]
        payload = json.dumps({"id": call_id, "at": self.clock.now(), "fn": function}).encode()
        ack = await js.publish(subject, payload, stream=stream)
        return int(ack.seq)

    async def _drop_job(self, stream: str, seq: int) -> None:
        """Delete a job that is no longer wanted (best effort: a job that survives is seen
        to be stale when it next comes up, and dropped then)."""
        if seq <= 0:
            return
        nc = self._parts()[0]
        # Not js.delete_msg: it asks the server to overwrite the message's bytes, too.
        request = json.dumps({"seq": seq, "no_erase": True}).encode()
        try:
            await nc.request(
                f"$JS.API.STREAM.MSG.DELETE.{stream}", request, timeout=self._timeout()
            )
        except nats.errors.Error as exc:
            log.debug("dropping job %s/%d: %s", stream, seq, _reason(exc))

    async def _rearm(
        self,
        stream: str,
        subject: str,
        call_id: str,
        change: Change,
        job_field: str,
        function: str = "",
    ) -> tuple[Record, Record] | None:
        """Write ``change`` together with a new job that replaces the record's current one
        (published first: a crash leaves an extra job, not a record without one)."""
        seq = await self._publish_job(stream, subject, call_id, function)

        def with_job(rec: Record, now: float) -> Record | None:
            after = change(rec, now)  # a new record: setting its job touches nothing else
            if after is not None:
                setattr(after, job_field, seq)
            return after

        # If the update fails its outcome is unknown (it may have landed): the new job stays,
        # and is dropped as an orphan later if the record does not name it.
        written = await self._update(call_id, with_job)
        if written is None:
            await self._drop_job(stream, seq)
            return None
        await self._drop_job(stream, int(getattr(written[0], job_field)))
        return written

    async def _publish_wake(self, subject: str) -> None:
        """Tell every gateway's workers that something may be due: this process's at once,
        the others with one message per subject per _WAKE_GAP (under load one wake covers
        many calls, rather than every enqueue reaching every gateway)."""
        local = self._calls_event if subject == self._wake_calls else self._callbacks_event
        local.set()
        if subject in self._wakes_due:
            return
        self._wakes_due.add(subject)
        asyncio.get_running_loop().call_later(_WAKE_GAP, self._send_wake, subject)

    def _send_wake(self, subject: str) -> None:
        self._wakes_due.discard(subject)
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        task = asyncio.ensure_future(nc.publish(subject, b""))
        self._wake_tasks.add(task)
        task.add_done_callback(self._wake_sent)

    def _wake_sent(self, task: asyncio.Future[None]) -> None:
        self._wake_tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.debug("wake not sent: %s", _reason(error))  # a hint only

    async def _pull_now(self, stream: str, consumer: str, batch: int) -> builtins.list[Msg]:
        """Up to ``batch`` messages available now from a pull consumer (``no_wait``)."""
        nc = self._parts()[0]
        held = self._pull_subs.get(stream) if consumer == _CONSUMER else None
        if held is None:  # another consumer (a scan's): an inbox of its own
            sub = await nc.subscribe(nc.new_inbox())
            try:
                return await self._pull_into(sub, stream, consumer, batch)
            finally:
                await sub.unsubscribe()
        sub, lock = held
        async with lock:
            # A message a pull gave up waiting for (timed out) is taken by the next one: it
            # is a job delivered to this gateway all the same.
            return await self._pull_into(sub, stream, consumer, batch)

    async def _pull_into(
        self, sub: Subscription, stream: str, consumer: str, batch: int
    ) -> builtins.list[Msg]:
        nc = self._parts()[0]
        request = json.dumps({"batch": batch, "no_wait": True}).encode()
        msgs: builtins.list[Msg] = []
        try:
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", request, sub.subject)
            while len(msgs) < batch:
                msg = await sub.next_msg(timeout=self._timeout())
                if msg.headers and msg.headers.get("Status"):
                    break  # 404 no messages, 408 expired: nothing more now
                msgs.append(msg)
        except nats.errors.TimeoutError:
            pass  # what arrived is used; the rest come back after ack_wait
        return msgs

    async def _pull(self, stream: str, batch: int) -> builtins.list[_Job]:
        """Take up to ``batch`` jobs that are available now."""
        jobs: builtins.list[_Job] = []
        for msg in await self._pull_now(stream, _CONSUMER, batch):
            try:
                payload = json.loads(msg.data)
                call_id = str(payload["id"])
            except (ValueError, KeyError, TypeError):
                log.warning("dropping a malformed job on %s: %r", stream, msg.data[:100])
                await msg.term()
                continue
            function = str(payload.get("fn") or "")
            jobs.append(_Job(msg, call_id, msg.metadata.sequence.stream, function))
        return jobs

    @staticmethod
    async def _settle_unmatched(job: _Job, expected: int | None) -> None:
        """Settle a job its record does not name: drop it when stale (older than the one the
        record names) or orphaned; put it back briefly when the record write that will name
        it may still be in flight."""
        newer = expected is None or job.seq > expected
        # Counted in deliveries, not by clock: gateways' clocks may disagree.
        if newer and job.msg.metadata.num_delivered <= _ORPHAN_CHECKS:
            await job.msg.nak(delay=_RECHECK)
        else:
            await job.msg.ack()

    # -- accepting ------------------------------------------------------------------------

    @_on_request_path
    @_as_queue_errors
    async def enqueue(self, request: CallRequest) -> EnqueueResult:
        self._parts()
        claimed: tuple[str, int] | None = None
        if request.idempotency_key is not None:
            existing, claimed = await self._claim_idempotency(request)
            if existing is not None:
                loaded = await self._load(existing)
                status = cast(Status, loaded[0].status) if loaded else "queued"
                return EnqueueResult(existing, False, status)
        try:
            await self._check_depth()
            has_callback = request.callback_url is not None
            state = transitions.enqueue(
                self.clock.now(), delay=request.delay, has_callback=has_callback
            )
            await self._store_new(_new_record(request, state))
        except QueueUnavailable:
            raise  # releasing would wait on NATS too: the claim lapses after _ORPHAN_GRACE
        except QueueError:  # nothing stored (a NATS failure may have stored it: key kept)
            if claimed is not None:
                await self._release_idempotency(*claimed)
            raise
        await self._publish_wake(self._wake_calls)
        return EnqueueResult(request.call_id, True, "queued")

    @_on_request_path
    @_as_queue_errors
    async def adopt(self, request: CallRequest, *, owner: str, lease_for: float) -> LeasedCall:
        self._parts()
        await self._check_depth()
        has_callback = request.callback_url is not None
        state = transitions.adopt(
            self.clock.now(), has_callback=has_callback, owner=owner, lease_for=lease_for
        )
        rec = _new_record(request, state)
        self._known[rec.call_id] = (rec, await self._store_new(rec))
        self._held_calls[rec.call_id] = (1, owner, rec.function)
        return transitions.leased_call(replace(request, delay=0.0), state, state)

    def _room(self) -> int:
        """The largest record the server takes (its ``max_payload``), less header room."""
        nc = self._parts()[0]
        return int(nc.max_payload) - 512

    def _fit_response(self, rec: Record, body: bytes) -> None:
        """Cut the stored response so the record fits in one NATS message (flagged as
        truncated, like a response over the gateway's result limit)."""
        room = self._room()
        headers = sum(len(n) + len(v) + 8 for n, v in [*rec.headers, *rec.response_headers])
        if len(rec.body or "") + len(rec.response_body or "") + headers + 16384 < room:
            return  # clearly fits (the rest of a record is a few KiB): no need to measure
        over = len(rec.encode()) - room
        if over > 0:
            keep = max(0, len(body) - over * 3 // 4 - 64)  # base64: 4 bytes per 3
            rec.response_body = b64(body[:keep])
            rec.response_truncated = True

    def _clearly_fits(self, rec: Record) -> bool:
        """The record is far below the server's message size, so it need not be encoded
        once more only to be measured: its body (base64, as stored) and its texts (counted
        six times: JSON may escape a character as ``\\uXXXX``), with room for the rest."""
        texts = [rec.call_id, rec.function, rec.path, rec.query]
        texts += [rec.callback_url or "", rec.idempotency_key or ""]
        texts += [part for pair in rec.headers for part in pair]
        estimate = len(rec.body or "") + sum(6 * len(text) + 8 for text in texts) + 8192
        return estimate < self._room()

    def _check_size(self, rec: Record) -> None:
        size = len(rec.encode()) + 20  # the job's sequence is filled in later
        if size > self._room():
            raise QueueError(
                f"call {rec.call_id} is too large for NATS: its record takes {size} bytes, the"
                f" server's max_payload allows {self._room() + 512} (raise max_payload in the"
                " nats-server configuration, or lower --max-async-body)"
            )

    async def _store_new(self, rec: Record) -> int:
        """Publish the call's first job, then create its record naming it."""
        records = self._parts()[2]
        if not self._clearly_fits(rec):
            self._check_size(rec)
        seq = await self._publish_job(
            self.calls_stream, self._calls_subject, rec.call_id, rec.function
        )
        rec.job = rec.seq = seq
        try:
            revision = await records.create(record_key(rec.call_id), rec.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            await self._drop_job(self.calls_stream, seq)
            raise QueueError(f"call id {rec.call_id} already exists") from None
        # Any other failure leaves the job: if the record was written after all, the job is
        # its; if not, the job is an orphan, dropped when it comes up.
        self._count_depth(+1)
        return int(revision)

    async def _claim_idempotency(
        self, request: CallRequest
    ) -> tuple[str | None, tuple[str, int] | None]:
        """Claim the request's idempotency key for its call id. Returns the id of the call
        that holds it already (and None), or None and (key, revision) of the claim."""
        assert request.idempotency_key is not None
        bucket = self._parts()[3]
        key = idempotency_key(request.function, request.idempotency_key)
        for _ in range(_CAS_TRIES):
            try:
                revision = await bucket.create(key, claim_value(request.call_id, self.clock.now()))
                return None, (key, revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await bucket.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                continue
            holder, claimed_at = claim_holder(entry.value)
            if holder and await self._load(holder) is not None:
                return holder, None
            if holder and self.clock.now() - claimed_at < _ORPHAN_GRACE:
                # Its record may be being written right now, or its write was lost (NATS
                # went away): neither accepted nor refused yet. Not a 202 for a call that
                # may never exist: ask the client to come back once the grace is over.
                raise QueueUnavailable(
                    f"the call {holder} holding this idempotency key is not stored yet",
                    call_id=holder,
                )
            # The holder's record was purged (or never written): the key is free again.
            try:
                revision = await bucket.update(
                    key, claim_value(request.call_id, self.clock.now()), last=entry.revision
                )
                return None, (key, revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise QueueError("idempotency key kept changing; try again")

    async def _release_idempotency(self, key: str, revision: int) -> None:
        bucket = self._parts()[3]
        try:
            await bucket.delete(key, last=revision)
        except (nats.js.errors.Error, nats.errors.Error) as exc:
            log.debug("releasing idempotency key %s: %s", key, _reason(exc))

    @_on_request_path
    @_as_queue_errors
    async def find_idempotent(self, function: str, key: str) -> str | None:
        bucket = self._parts()[3]
        try:
            entry = await bucket.get(idempotency_key(function, key))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        holder = claim_holder(entry.value)[0]
        if holder and await self._load(holder) is not None:
            return holder
        return None

    def _count_depth(self, change: int) -> None:
        """Keep the last depth read current with this process's own changes."""
        if self._depth_seen is not None:
            self._depth_seen = (max(0, self._depth_seen[0] + change), self._depth_seen[1])

    async def _check_depth(self) -> None:
        if not self.max_depth:
            return
        # Far below the limit a depth read in the last second is good enough; near it, ask.
        seen = self._depth_seen
        fresh = seen is not None and time.monotonic() - seen[1] < 1.0
        if fresh and seen is not None and seen[0] < self.max_depth * 0.9:
            return
        depth = await self.depth()
        self._depth_seen = (depth, time.monotonic())
        if depth >= self.max_depth:
            raise QueueFull(depth, self.retry_after)

    @_on_request_path
    @_as_queue_errors
    async def depth(self) -> int:
        js = self._parts()[1]
        info = await js.stream_info(self.calls_stream)
        return int(info.state.messages)

    # -- running --------------------------------------------------------------------------

    @_as_queue_errors
    async def lease(
        self,
        *,
        owner: str,
        limit: int,
        lease_for: float,
        skip_functions: Collection[str] = (),
    ) -> LeaseBatch:
        self._parts()
        # Cleared before asking, so a wake racing with this lease wakes the next wait.
        self._calls_event.clear()
        if limit <= 0:
            return LeaseBatch([], None)
        skip = frozenset(skip_functions)
        leased: builtins.list[LeasedCall] = []
        skipped: builtins.list[_Job] = []
        # Jobs of functions at their limit are held until the end of this lease (so the next
        # pulls reach past them, to other functions' calls), up to _SKIP_DEPTH of them.
        failure: BaseException | None = None
        rounds = 0
        while rounds < _PULL_ROUNDS:
            jobs = await self._pull(self.calls_stream, limit - len(leased))
            if not jobs:
                break
            runnable = [job for job in jobs if job.function not in skip]
            skipped += [job for job in jobs if job.function in skip]
            rounds += 1 if runnable else 0
            outcomes = await asyncio.gather(
                *(self._lease_job(job, owner, lease_for, skip) for job in runnable),
                return_exceptions=True,
            )
            for job, outcome in zip(runnable, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failure = failure or outcome
                elif isinstance(outcome, LeasedCall):
                    leased.append(outcome)
                elif outcome == "skip":
                    skipped.append(job)
            if len(leased) >= limit or len(skipped) >= _SKIP_DEPTH or failure:
                break
        # Put back confirmed, so the next lease (of any worker) can have them at once.
        nc = self._parts()[0]

        async def put_back(job: _Job) -> None:
            try:
                await nc.request(job.msg.reply, b"-NAK", timeout=_TIMEOUT)
            except nats.errors.TimeoutError:
                pass  # it comes back after ack_wait

        await asyncio.gather(*(put_back(job) for job in skipped))
        # Calls leased before a failure are handed out; the failure is raised when nothing
        # was (the jobs it left come back after ack_wait, the leases after they expire).
        if failure is not None and not leased:
            raise failure
        return LeaseBatch(leased, self._call_timers.next_due(self.clock.now()))

    async def _lease_job(
        self, job: _Job, owner: str, lease_for: float, skip: frozenset[str]
    ) -> LeasedCall | str | None:
        verdict = "missing"
        expected = 0
        later = 0.0
        leased: LeasedCall | None = None

        def take(rec: Record, now: float) -> Record | None:
            nonlocal verdict, expected, later, leased
            expected = rec.job
            if rec.job != job.seq:
                verdict = "unmatched"
                return None
            before = rec.state()
            after = transitions.lease(before, now, owner=owner, lease_for=lease_for)
            if isinstance(after, Refused):
                verdict, later = _refusal_verdict(after)
                return None
            if rec.function in skip:
                verdict = "skip"
                return None
            verdict = "leased"
            leased = transitions.leased_call(rec.request(), before, after)
            return rec.with_state(before, after)

        if await self._update(job.call_id, take, keep=True) is None and verdict == "leased":
            verdict = "missing"  # decided on a copy that then vanished
        if verdict == "leased":
            assert leased is not None
            self._held_calls[job.call_id] = (leased.attempt, owner, leased.request.function)
            await self._rearm_job(job, leased.expires, self._call_timers)
            return leased
        if verdict == "later":
            await self._rearm_job(job, later, self._call_timers)
        elif verdict == "skip":
            return "skip"
        elif verdict == "ended":
            await job.msg.ack()
        else:
            await self._settle_unmatched(job, expected if verdict == "unmatched" else None)
        return None

    async def _rearm_job(self, job: _Job, at: float, timers: _Timers) -> None:
        """Hand the job back to come up again at ``at``: the durable timer of a lease, a
        delay or a retry (a clock's seconds taken as real ones: if the clock says it is not
        time yet when the job comes back, it is handed back again)."""
        timers.add(at)
        await job.msg.nak(delay=max(0.001, at - self.clock.now()))

    async def wait_for_calls(self, timeout: float) -> None:
        await _wait(self._calls_event, timeout)

    @_as_queue_errors
    async def extend(self, lease: LeasedCall, lease_for: float) -> bool:
        push = _deciding(
            functools.partial(
                transitions.extend, attempt=lease.attempt, owner=lease.owner, lease_for=lease_for
            )
        )
        written = await self._update(lease.call_id, push, keep=True)
        if written is None:
            self._held_calls.pop(lease.call_id, None)
        return written is not None

    @_as_queue_errors
    async def release(self, lease: LeasedCall) -> bool:
        hand_back = _deciding(
            functools.partial(transitions.release, attempt=lease.attempt, owner=lease.owner)
        )
        written = await self._rearm(
            self.calls_stream,
            self._calls_subject,
            lease.call_id,
            hand_back,
            "job",
            lease.request.function,
        )
        self._held_calls.pop(lease.call_id, None)
        if written is not None:
            await self._publish_wake(self._wake_calls)
        return written is not None

    @_as_queue_errors
    async def complete(self, lease: LeasedCall, result: AttemptResult) -> bool:
        succeed = functools.partial(
            transitions.succeed, attempt=lease.attempt, owner=lease.owner, result=result
        )
        return await self._finish(lease, succeed, result.body, terminal=True)

    @_as_queue_errors
    async def retry(self, lease: LeasedCall, result: AttemptResult, at: float) -> bool:
        retry = functools.partial(
            transitions.retry, attempt=lease.attempt, owner=lease.owner, result=result, at=at
        )
        return await self._finish(lease, retry, result.body, terminal=False)

    @_as_queue_errors
    async def fail(self, lease: LeasedCall, result: AttemptResult) -> bool:
        fail = functools.partial(
            transitions.fail, attempt=lease.attempt, owner=lease.owner, result=result
        )
        return await self._finish(lease, fail, result.body, terminal=True)

    async def _finish(
        self, lease: LeasedCall, decide: Decide, body: bytes, *, terminal: bool
    ) -> bool:
        """Record how an attempt ended (``decide``: the transition), with its jobs: a retry's
        timer, or the end of the call's job and the start of its callback's."""
        callback_seq = 0
        if terminal and lease.request.callback_url:
            callback_seq = await self._publish_job(
                self.callbacks_stream, self._callbacks_subject, lease.call_id
            )

        def record(rec: Record, now: float) -> Record | None:
            before = rec.state()
            after = decide(before, now)
            if isinstance(after, Refused):
                return None
            stored = rec.with_state(before, after)
            self._fit_response(stored, body)
            if terminal:
                stored.job = 0
                if stored.callback_url is not None:
                    stored.callback_job = callback_seq
            return stored

        if terminal:
            written = await self._update(lease.call_id, record)
            if written is not None:
                await self._drop_job(self.calls_stream, written[0].job)
        else:
            written = await self._rearm(
                self.calls_stream,
                self._calls_subject,
                lease.call_id,
                record,
                "job",
                lease.request.function,
            )
        self._held_calls.pop(lease.call_id, None)
        if written is None:
            await self._drop_job(self.callbacks_stream, callback_seq)
            return False
        if terminal:
            self._count_depth(-1)
        if not terminal:
            await self._publish_wake(self._wake_calls)
        elif callback_seq:
            # Only a callback to deliver is news for the dispatchers (each wake costs every
            # gateway a pull of the callback stream).
            await self._publish_wake(self._wake_callbacks)
        return True

    @_on_request_path
    @_as_queue_errors
    async def cancel(self, call_id: str) -> CancelOutcome:
        outcome: CancelOutcome = "not_found"

        def cancel(rec: Record, now: float) -> Record | None:
            nonlocal outcome
            before = rec.state()
            after = transitions.cancel(before, now)
            if isinstance(after, Refused):
                outcome = cast(CancelOutcome, after.reason)
                return None
            outcome = "cancelled"
            return replace(rec.with_state(before, after), job=0)

        written = await self._update(call_id, cancel)
        if written is not None:
            await self._drop_job(self.calls_stream, written[0].job)
            self._count_depth(-1)
        return outcome

    # -- callbacks ------------------------------------------------------------------------

    @_as_queue_errors
    async def lease_callbacks(self, *, owner: str, limit: int, lease_for: float) -> CallbackBatch:
        self._parts()
        self._callbacks_event.clear()
        if limit <= 0:
            return CallbackBatch([], None)
        jobs: builtins.list[CallbackJob] = []
        failure: BaseException | None = None
        for _ in range(_PULL_ROUNDS):
            pulled = await self._pull(self.callbacks_stream, limit - len(jobs))
            if not pulled:
                break
            outcomes = await asyncio.gather(
                *(self._lease_callback(job, owner, lease_for) for job in pulled),
                return_exceptions=True,
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    failure = failure or outcome
                elif outcome is not None:
                    jobs.append(outcome)
            if len(jobs) >= limit or failure:
                break
        if failure is not None and not jobs:
            raise failure  # as in lease()
        return CallbackBatch(jobs, self._callback_timers.next_due(self.clock.now()))

    async def _lease_callback(self, job: _Job, owner: str, lease_for: float) -> CallbackJob | None:
        verdict = "missing"
        expected = 0
        later = 0.0
        leased: CallbackJob | None = None

        def take(rec: Record, now: float) -> Record | None:
            nonlocal verdict, expected, later, leased
            expected = rec.callback_job
            if rec.callback_job != job.seq:
                verdict = "unmatched"
                return None
            before = rec.state()
            after = transitions.lease_callback(before, now, owner=owner, lease_for=lease_for)
            if isinstance(after, Refused):
                verdict, later = _refusal_verdict(after)
                return None
            verdict = "leased"
            assert rec.callback_url is not None  # pending: there is a callback
            leased = transitions.callback_job(
                after, call_id=rec.call_id, function=rec.function, url=rec.callback_url
            )
            return rec.with_state(before, after)

        if await self._update(job.call_id, take, keep=True) is None and verdict == "leased":
            verdict = "missing"  # decided on a copy that then vanished
        if verdict == "leased":
            assert leased is not None
            self._held_callbacks[job.call_id] = (leased.attempt, owner)
            await self._rearm_job(job, leased.expires, self._callback_timers)
            return leased
        if verdict == "later":
            await self._rearm_job(job, later, self._callback_timers)
        elif verdict == "ended":
            await job.msg.ack()  # delivered, failed or skipped: nothing left to do
        else:
            await self._settle_unmatched(job, expected if verdict == "unmatched" else None)
        return None

    async def wait_for_callbacks(self, timeout: float) -> None:
        await _wait(self._callbacks_event, timeout)

    @_as_queue_errors
    async def callback_delivered(self, job: CallbackJob, attempt: CallbackAttempt) -> bool:
        def deliver(state: CallState, now: float) -> transitions.Outcome:
            return transitions.deliver_callback(
                state, attempt=job.attempt, owner=job.owner, record=attempt
            )

        return await self._callback_end(job, deliver, None)

    @_as_queue_errors
    async def callback_retry(self, job: CallbackJob, attempt: CallbackAttempt, at: float) -> bool:
        def retry(state: CallState, now: float) -> transitions.Outcome:
            return transitions.retry_callback(
                state, attempt=job.attempt, owner=job.owner, record=attempt, at=at
            )

        return await self._callback_end(job, retry, at)

    @_as_queue_errors
    async def callback_failed(self, job: CallbackJob, attempt: CallbackAttempt) -> bool:
        def fail(state: CallState, now: float) -> transitions.Outcome:
            return transitions.fail_callback(
                state, attempt=job.attempt, owner=job.owner, record=attempt
            )

        return await self._callback_end(job, fail, None)

    async def _callback_end(self, job: CallbackJob, decide: Decide, at: float | None) -> bool:
        """Record how a delivery ended, with its job: a retry's timer, or none."""
        if at is None:
            ended = _deciding(decide)

            def record(rec: Record, now: float) -> Record | None:
                after = ended(rec, now)
                return None if after is None else replace(after, callback_job=0)

            written = await self._update(job.call_id, record)
            if written is not None:
                await self._drop_job(self.callbacks_stream, written[0].callback_job)
        else:
            written = await self._rearm(
                self.callbacks_stream,
                self._callbacks_subject,
                job.call_id,
                _deciding(decide),
                "callback_job",
            )
            if written is not None:
                await self._publish_wake(self._wake_callbacks)
        self._held_callbacks.pop(job.call_id, None)
        return written is not None

    # -- records --------------------------------------------------------------------------

    @_on_request_path
    @_as_queue_errors
    async def get(self, call_id: str) -> ActivationRecord | None:
        loaded = await self._load(call_id)
        return None if loaded is None else activation(loaded[0], with_body=True)

    async def _scan(self) -> builtins.list[Record]:
        """Every record: the latest value of each key, read through an ephemeral pull
        consumer. Costs a pass over the whole bucket, bodies included, up to _SCAN_LIMIT.
        (Not nats-py's KV watcher: it can signal the end before the first value arrives.)"""
        js = self._parts()[1]
        stream = f"KV_{self.records_bucket}"
        info = await js.add_consumer(
            stream,
            ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                filter_subject=f"$KV.{self.records_bucket}.>",
                inactive_threshold=60.0,
                mem_storage=True,
            ),
        )
        assert info.name is not None
        left = min(int(info.num_pending or 0), _SCAN_LIMIT)
        found: builtins.list[Record] = []
        try:
            while left > 0:
                msgs = await self._pull_now(stream, info.name, min(left, 512))
                if not msgs:
                    break
                left -= len(msgs)
                for msg in msgs:
                    if msg.data and not (msg.headers and msg.headers.get("KV-Operation")):
                        found.append(Record.decode(msg.data))
        finally:
            try:
                await js.delete_consumer(stream, info.name)
            except nats.js.errors.NotFoundError:
                pass
        return found

    @_as_queue_errors
    async def purge(self, ended_before: float) -> int:
        """Delete the records past retention. Finding them costs a pass over the bucket, so
        it is done at most every tenth of the retention (and at least hourly): a record
        may outlive the retention by that much."""
        _, js, records, bucket = self._parts()
        retention = max(0.0, self.clock.now() - ended_before)
        last = self._last_purge
        if last is not None and time.monotonic() - last < min(retention / 10, 3600.0):
            return 0
        self._last_purge = time.monotonic()
        doomed = [
            rec
            for rec in await self._scan()
            if rec.ended_at is not None and transitions.purgeable(rec.state(), ended_before)
        ]
        stream = f"KV_{self.records_bucket}"

        async def remove(rec: Record) -> None:
            if rec.idempotency_key is not None:
                key = idempotency_key(rec.function, rec.idempotency_key)
                try:
                    entry = await bucket.get(key)
                    holder = claim_holder(entry.value)[0]
                    if holder == rec.call_id and entry.revision is not None:
                        await bucket.delete(key, last=entry.revision)
                except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                    pass
                except nats.js.errors.KeyWrongLastSequenceError:
                    pass  # claimed again meanwhile
            # Purging the subject leaves no delete marker behind, unlike kv.delete.
            subject = f"$KV.{self.records_bucket}.{record_key(rec.call_id)}"
            await js.purge_stream(stream, subject=subject)

        for start in range(0, len(doomed), 64):
            await asyncio.gather(*(remove(rec) for rec in doomed[start : start + 64]))
        return len(doomed)

    # Defined last: inside the class body the name ``list`` is this method from here on.
    @_on_request_path
    @_as_queue_errors
    async def list(self, query: ListQuery) -> ActivationPage:
        before: int | None = None
        if query.cursor is not None:
            try:
                before = int(query.cursor)
            except ValueError:
                raise ValueError(f"invalid cursor {query.cursor!r}") from None
        limit = max(1, query.limit)
        matching = sorted(
            (
                rec
                for rec in await self._scan()
                if (query.function is None or rec.function == query.function)
                and (query.status is None or rec.status == query.status)
                and (query.since is None or rec.created_at >= query.since)
                and (before is None or rec.seq < before)
            ),
            key=lambda rec: rec.seq,
            reverse=True,
        )
        items = [activation(rec, with_body=False) for rec in matching[:limit]]
        cursor = str(matching[limit - 1].seq) if len(matching) > limit else None
        return ActivationPage(items, cursor)


Decide = Callable[[CallState, float], transitions.Outcome]
"""A transition of :mod:`.transitions` with everything but the state and the time given."""
Change = Callable[[Record, float], "Record | None"]
"""What :meth:`NatsQueue._update` writes of a stored record (None: leave it)."""


def _deciding(decide: Decide) -> Change:
    """The record change that stores what ``decide`` decides (nothing if it refuses)."""

    def change(rec: Record, now: float) -> Record | None:
        before = rec.state()
        after = decide(before, now)
        return None if isinstance(after, Refused) else rec.with_state(before, after)

    return change


def _refusal_verdict(refused: Refused) -> tuple[str, float]:
    """How a lease settles a job whose record refused it: ``ended`` (ack it), or ``later``
    (re-arm it for when the record says)."""
    if refused.reason == "not_due" and refused.at is not None:
        return "later", refused.at
    return "ended", 0.0


async def _wait(event: asyncio.Event, timeout: float) -> None:
    if timeout <= 0:
        return
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass


def _new_record(request: CallRequest, state: CallState) -> Record:
    """The record of a call just accepted (its job and sequence are filled in when stored)."""
    rec = Record(
        call_id=request.call_id,
        function=request.function,
        status="queued",
        method=request.method,
        path=request.path,
        query=request.query,
        headers=header_pairs(request.headers),
        body=b64(request.body),
        callback_url=request.callback_url,
        idempotency_key=request.idempotency_key,
        created_at=state.created_at,
        delay=state.delay,
        seq=0,
    )
    return rec.with_state(rec.state(), state)


def _no_jetstream(exc: BaseException) -> bool:
    """No JetStream API answers at this server (nats-py reports its 503 "no responders" as
    a ServiceUnavailableError without a JetStream error code): not enabled, not "not ready",
    which JetStream says itself."""
    no_code = isinstance(exc, nats.js.errors.ServiceUnavailableError) and exc.err_code is None
    return no_code or isinstance(exc, nats.errors.NoRespondersError)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
