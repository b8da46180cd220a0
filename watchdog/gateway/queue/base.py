"""The queue of asynchronous calls, as an interface every backend implements.

A call is accepted (:meth:`QueueBackend.enqueue` returns only once it is durable), leased by a
worker for a while (:meth:`~QueueBackend.lease`; the lease is extended while the call runs and,
if the worker dies, expires so the call becomes due again: at-least-once), then completed,
scheduled for a retry at a given time, or failed. The record of the call (the *activation*)
lives in the same store from the moment it is accepted until it is purged, and carries the
response and the state of the callback delivery, itself a second leased job.

Nothing here names a storage engine: the SQLite backend (:mod:`.sqlite`) is the first
implementation and a NATS JetStream one follows behind the same :class:`QueueBackend`.
Times are wall-clock seconds since the epoch (``time.time()``), because they outlive the
process; leases are fenced by a token so a worker whose lease expired cannot overwrite the
outcome of the attempt that replaced it.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

Status = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]
STATUSES: tuple[Status, ...] = ("queued", "running", "retrying", "succeeded", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

ErrorKind = Literal["platform", "function"]
"""Who failed: the platform (function unreachable, timed out, gateway restarted, call too old)
or the function (it answered with an error status)."""

CallbackStatus = Literal["waiting", "pending", "delivered", "failed", "skipped"]
"""``waiting`` for the call to end; ``pending`` delivery (first try or a retry); ``delivered``;
``failed`` after the last attempt or when the policy refused the destination; ``skipped`` when
the call was cancelled."""

CancelOutcome = Literal["cancelled", "not_found", "running", "finished"]

Headers = tuple[tuple[str, str], ...]


class QueueError(Exception):
    """A queue backend failed (storage error, closed queue)."""


class QueueClosed(QueueError):
    """The queue was used after :meth:`QueueBackend.close` (or before ``open``)."""


class QueueUnavailable(QueueError):
    """The store cannot be reached now (a networked backend's server is down or far away);
    the operation may be tried again. A write that was under way may have landed all the
    same: ``call_id``, when set, names the call the caller should look up or retry as."""

    def __init__(self, message: str = "", *, call_id: str | None = None) -> None:
        super().__init__(message)
        self.call_id = call_id


class QueueFull(QueueError):
    """The queue holds its configured maximum of unfinished calls; nothing was queued."""

    def __init__(self, depth: int, retry_after: float) -> None:
        super().__init__(f"queue full: {depth} calls waiting or running")
        self.depth = depth
        self.retry_after = retry_after


def new_call_id() -> str:
    """A random (version 4) UUID as text, formatted from 16 random bytes: the same as
    ``str(uuid.uuid4())`` at less than half its cost, on every call."""
    digits = os.urandom(16).hex()
    variant = _UUID_VARIANT[digits[16]]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


# The variant bits of RFC 9562 (10xx) in the 17th hex digit, whatever random digit was there.
_UUID_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


@dataclass(frozen=True, slots=True)
class CallRequest:
    """An accepted asynchronous call: the whole HTTP request, replayed as it came.

    Attributes:
        function: the registered function name (namespace suffix already resolved).
        method: the request method (replayed, unlike OpenFaaS which always POSTs).
        path: the sub-path after ``/async-function/NAME`` (``""`` or ``/a/b``).
        query: the raw query string, without ``?``.
        headers: end-to-end request headers in order, repeated names kept.
        body: the request body.
        callback_url: where the result is POSTed when the call ends, if anywhere.
        idempotency_key: a caller's key: a second enqueue with the same key and function
            returns the first call's id while its record exists.
        delay: seconds from acceptance before the call may run.
        call_id: the call's id (a new UUID unless the caller chose one).
    """

    function: str
    method: str = "POST"
    path: str = ""
    query: str = ""
    headers: Headers = ()
    body: bytes = b""
    callback_url: str | None = None
    idempotency_key: str | None = None
    delay: float = 0.0
    call_id: str = field(default_factory=new_call_id)


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    call_id: str
    created: bool
    """False when an earlier call with the same idempotency key was found (nothing queued)."""
    status: Status


@dataclass(frozen=True, slots=True)
class LeasedCall:
    """A call handed to one worker until ``expires`` (extend it while the call runs).

    ``attempt`` counts from 1 and is also the lease's fencing token. ``interrupted`` is true
    when the previous attempt never reported back (its worker or gateway died): that attempt
    is already recorded as a platform failure.
    """

    request: CallRequest
    attempt: int
    created_at: float
    expires: float
    owner: str
    interrupted: bool = False

    @property
    def call_id(self) -> str:
        return self.request.call_id

    @property
    def due_since(self) -> float:
        """When the call first became due (acceptance plus its delay): the start of its
        age for ``max_event_age``."""
        return self.created_at + self.request.delay


@dataclass(frozen=True, slots=True)
class LeaseBatch:
    """What :meth:`QueueBackend.lease` returns.

    ``next_due`` is a hint: the earliest time something not leased now becomes due (``None``
    when the backend does not know or nothing waits). Workers sleep until then at most.
    """

    calls: list[LeasedCall]
    next_due: float | None = None


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How one attempt ended.

    ``status_code`` is None when no response came back (the function was unreachable, timed
    out, or the call was never run). ``body`` may already be cut to the store's result limit,
    ``truncated`` then says so.
    """

    started_at: float
    ended_at: float
    status_code: int | None = None
    headers: Headers = ()
    body: bytes = b""
    truncated: bool = False
    error: str | None = None
    error_kind: ErrorKind | None = None


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """One line of a record's attempt history (no body)."""

    attempt: int
    started_at: float
    ended_at: float
    status_code: int | None
    error: str | None
    error_kind: ErrorKind | None
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class CallbackAttempt:
    """One delivery attempt of a callback."""

    attempt: int
    started_at: float
    ended_at: float
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CallbackJob:
    """A leased callback delivery: everything needed to POST the result.

    ``attempt`` counts deliveries from 1 and fences the lease like :attr:`LeasedCall.attempt`.
    """

    call_id: str
    function: str
    url: str
    attempt: int
    expires: float
    owner: str
    status: Status
    status_code: int | None
    headers: Headers
    body: bytes
    truncated: bool
    error: str | None
    error_kind: ErrorKind | None
    started_at: float | None
    ended_at: float | None
    call_attempts: int
    created_at: float


@dataclass(frozen=True, slots=True)
class CallbackBatch:
    jobs: list[CallbackJob]
    next_due: float | None = None


@dataclass(frozen=True, slots=True)
class ActivationRecord:
    """Everything known about one call. ``response_body`` is None in list summaries."""

    call_id: str
    function: str
    status: Status
    attempts: int
    created_at: float
    method: str
    path: str
    query: str
    due_at: float | None
    started_at: float | None
    ended_at: float | None
    status_code: int | None
    response_headers: Headers
    response_body: bytes | None
    response_truncated: bool
    error: str | None
    error_kind: ErrorKind | None
    idempotency_key: str | None
    callback_url: str | None
    callback_status: CallbackStatus | None
    callback_attempts: int
    attempt_log: tuple[AttemptInfo, ...] = ()
    callback_log: tuple[CallbackAttempt, ...] = ()

    @property
    def duration(self) -> float | None:
        """Seconds from the first start to the end, once both happened."""
        if self.started_at is None or self.ended_at is None:
            return None
        return max(0.0, self.ended_at - self.started_at)


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Filters of :meth:`QueueBackend.list`; ``cursor`` is the previous page's ``next_cursor``."""

    function: str | None = None
    status: Status | None = None
    since: float | None = None
    limit: int = 30
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class ActivationPage:
    items: list[ActivationRecord]
    next_cursor: str | None
    """Opaque; pass it back as :attr:`ListQuery.cursor` for the next (older) page."""


# The backend's concerns, one protocol each, so every component asks for only what it uses:
# the submission routes a CallIntake, the worker a CallRunQueue, the callback sender a
# CallbackOutbox, the record routes an ActivationStore. A backend (SQLite, NATS) is all four
# plus its lifecycle: QueueBackend.


@runtime_checkable
class CallIntake(Protocol):
    """Accepting calls: durable before the answer."""

    async def enqueue(self, request: CallRequest) -> EnqueueResult:
        """Store ``request`` durably and make it due after ``request.delay``.

        With an idempotency key already used for the same function (record not yet purged)
        nothing is stored and the earlier call is returned with ``created=False``.

        Raises:
            QueueFull: the configured depth is reached.
        """
        ...

    async def adopt(self, request: CallRequest, *, owner: str, lease_for: float) -> LeasedCall:
        """Store ``request`` as a call already running its first attempt, leased to ``owner``
        (a synchronous call converted to asynchronous). If the owner dies the lease runs out
        and the call runs again from the stored request, like any other.

        Raises:
            QueueFull: the configured depth is reached.
            QueueError: the call id exists already.
        """
        ...

    async def find_idempotent(self, function: str, key: str) -> str | None:
        """The id of the call accepted with ``key`` for ``function``, if its record exists."""
        ...

    async def depth(self) -> int:
        """Calls accepted and not yet finished (queued, running or retrying)."""
        ...


@runtime_checkable
class CallRunQueue(Protocol):
    """Running calls: leases, attempts and their outcomes."""

    async def lease(
        self,
        *,
        owner: str,
        limit: int,
        lease_for: float,
        skip_functions: Collection[str] = (),
    ) -> LeaseBatch:
        """Hand out up to ``limit`` due calls (oldest due first) for ``lease_for`` seconds.

        Calls of ``skip_functions`` (at their concurrency limit) are left for later. Never
        blocks waiting for work: see :meth:`wait_for_calls`.
        """
        ...

    async def wait_for_calls(self, timeout: float) -> None:
        """Return when new calls may be due (something was enqueued, retried or released),
        or after ``timeout`` seconds. Safe to cancel."""
        ...

    async def extend(self, lease: LeasedCall, lease_for: float) -> bool:
        """Push the lease's expiry to ``lease_for`` seconds from now; False if it was lost."""
        ...

    async def release(self, lease: LeasedCall) -> bool:
        """Hand a leased call back unstarted: due again at once, the attempt not counted
        (a worker leased more calls of a function than it may run at once)."""
        ...

    async def complete(self, lease: LeasedCall, result: AttemptResult) -> bool:
        """The call succeeded. False (and nothing changed) if the lease was lost."""
        ...

    async def retry(self, lease: LeasedCall, result: AttemptResult, at: float) -> bool:
        """The attempt failed; run the call again no earlier than ``at``."""
        ...

    async def fail(self, lease: LeasedCall, result: AttemptResult) -> bool:
        """The call failed for good."""
        ...


@runtime_checkable
class CallbackOutbox(Protocol):
    """Result deliveries to ``X-Callback-Url`` of finished calls."""

    async def lease_callbacks(self, *, owner: str, limit: int, lease_for: float) -> CallbackBatch:
        """Hand out up to ``limit`` due callback deliveries of finished calls."""
        ...

    async def wait_for_callbacks(self, timeout: float) -> None:
        """As :meth:`wait_for_calls`, for callback deliveries."""
        ...

    async def extend_callback(self, job: CallbackJob, lease_for: float) -> bool:
        """Push a held delivery's lease to ``lease_for`` from now (while its outcome waits
        to be saved, too); False if the lease was lost."""
        ...

    async def callback_delivered(self, job: CallbackJob, attempt: CallbackAttempt) -> bool: ...

    async def callback_retry(
        self, job: CallbackJob, attempt: CallbackAttempt, at: float
    ) -> bool: ...

    async def callback_failed(self, job: CallbackJob, attempt: CallbackAttempt) -> bool: ...


@runtime_checkable
class ActivationStore(Protocol):
    """Activation records: read, list, cancel, purge."""

    async def cancel(self, call_id: str) -> CancelOutcome:
        """Cancel a call that is not running and not finished (queued, or waiting for a
        retry). ``running`` and ``finished`` say why it was not."""
        ...

    async def get(self, call_id: str) -> ActivationRecord | None: ...

    async def list(self, query: ListQuery) -> ActivationPage:
        """Records newest first, filtered, one page at a time.

        Raises:
            ValueError: ``query.cursor`` is not a cursor this backend handed out.
        """
        ...

    async def purge(self, ended_before: float) -> int:
        """Delete records of calls that ended before ``ended_before`` and have no callback
        delivery left to do; returns how many."""
        ...


@runtime_checkable
class QueueBackend(CallIntake, CallRunQueue, CallbackOutbox, ActivationStore, Protocol):
    """A durable queue of asynchronous calls with their activation records: every concern
    above, plus opening and closing the store.

    All methods are coroutines run on the gateway's event loop. Every method that changes
    state returns only after the change is durable.
    """

    async def open(self) -> None:
        """Open the store. Calls a previous owner left running become due again (at once
        where the backend can tell the owner is gone, otherwise when their lease expires)."""
        ...

    async def close(self) -> None: ...
