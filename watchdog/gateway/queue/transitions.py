"""The life of an asynchronous call, written once: pure functions from a call's state and the
time to its next state, which every backend persists as it is told.

A call is ``queued`` (due at acceptance plus its delay), ``running`` while leased to a worker
(its ``due_at`` is then the lease's expiry: an expired lease makes it due again, and the next
lease records the lost attempt as interrupted), ``retrying`` until its next attempt is due,
and ends ``succeeded``, ``failed`` or ``cancelled``. A finished call with a callback URL then
carries a second leased job, the delivery of its result: ``pending`` until ``delivered`` or
``failed`` (``waiting`` before the call ends, ``skipped`` when it was cancelled).

Leases are fenced by their attempt number and owner: an outcome reported under a lease that
was lost (expired and taken over) is :class:`Refused`, so it cannot overwrite the attempt that
replaced it. Whether a failed attempt is retried, and when, is the worker's
:func:`~watchdog.gateway.retry.decide`; these functions record what it decided.

Nothing here reads a clock or a store: ``now`` is an argument (the backend's
:class:`~.clock.Clock`), and every function returns a new :class:`CallState` or a
:class:`Refused` saying why not.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .base import (
    TERMINAL,
    ActivationRecord,
    AttemptInfo,
    AttemptResult,
    CallbackAttempt,
    CallbackJob,
    CallbackStatus,
    CallRequest,
    ErrorKind,
    Headers,
    LeasedCall,
    Status,
)

INTERRUPTED = "attempt interrupted: the gateway stopped or the worker's lease expired"
CALLBACK_INTERRUPTED = "delivery interrupted: the gateway stopped or the lease expired"
DONE_CALLBACKS: frozenset[str] = frozenset({"delivered", "failed", "skipped"})

RefusalReason = Literal["lost", "ended", "not_due", "running", "finished"]


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a transition does not apply: the lease was ``lost``; nothing is left to do
    (``ended``); it is ``not_due`` before ``at``; a cancel found it ``running`` or
    ``finished``."""

    reason: RefusalReason
    at: float | None = None


@dataclass(frozen=True, slots=True)
class CallState:
    """What changes over a call's life (the request itself never does).

    ``due_at`` is when a queued or retrying call may run, or a running call's lease expiry
    (None once finished); ``callback_due`` likewise for a pending delivery. ``body_stored``
    is False once the request body is dropped (the call ended: it never runs again).
    ``response_*`` are the last ended attempt's.
    """

    created_at: float
    delay: float
    has_callback: bool
    status: Status = "queued"
    due_at: float | None = None
    owner: str | None = None
    attempts: int = 0
    started_at: float | None = None
    attempt_started_at: float | None = None
    ended_at: float | None = None
    status_code: int | None = None
    response_headers: Headers = ()
    response_body: bytes | None = None  # None until an attempt ended
    response_truncated: bool = False
    error: str | None = None
    error_kind: ErrorKind | None = None
    attempt_log: tuple[AttemptInfo, ...] = ()
    body_stored: bool = True
    callback_status: CallbackStatus | None = None
    callback_attempts: int = 0
    callback_due: float | None = None
    callback_owner: str | None = None
    callback_log: tuple[CallbackAttempt, ...] = ()

    @property
    def unfinished(self) -> bool:
        """Counted in the queue's depth: queued, running or retrying."""
        return self.status not in TERMINAL


Outcome = CallState | Refused


# -- accepting ---------------------------------------------------------------------------


def enqueue(now: float, *, delay: float, has_callback: bool) -> CallState:
    """A call accepted at ``now``, due ``delay`` seconds later."""
    delay = max(0.0, delay)
    return CallState(
        created_at=now,
        delay=delay,
        has_callback=has_callback,
        due_at=now + delay,
        callback_status="waiting" if has_callback else None,
    )


def adopt(now: float, *, has_callback: bool, owner: str, lease_for: float) -> CallState:
    """A call accepted already running its first attempt, leased to ``owner`` (a synchronous
    call turned asynchronous)."""
    return CallState(
        created_at=now,
        delay=0.0,
        has_callback=has_callback,
        status="running",
        due_at=now + lease_for,
        owner=owner,
        attempts=1,
        started_at=now,
        attempt_started_at=now,
        callback_status="waiting" if has_callback else None,
    )


# -- running -----------------------------------------------------------------------------


def interrupted(state: CallState) -> bool:
    """A lease of this due call takes over an attempt that never reported back."""
    return state.status == "running"


def lease(state: CallState, now: float, *, owner: str, lease_for: float) -> Outcome:
    """Start the next attempt under a lease to ``owner`` until ``now + lease_for``. A call
    whose lease expired is taken over: its lost attempt is logged as a platform failure."""
    if state.status in TERMINAL or state.due_at is None:
        return Refused("ended")
    if state.due_at > now:
        return Refused("not_due", state.due_at)
    log = state.attempt_log
    if interrupted(state):
        lost = AttemptInfo(
            attempt=state.attempts,
            started_at=state.attempt_started_at or state.created_at,
            ended_at=now,
            status_code=None,
            error=INTERRUPTED,
            error_kind="platform",
        )
        log = (*log, lost)
    return replace(
        state,
        status="running",
        attempts=state.attempts + 1,
        owner=owner,
        due_at=now + lease_for,
        started_at=state.started_at if state.started_at is not None else now,
        attempt_started_at=now,
        attempt_log=log,
    )


def holds(state: CallState, attempt: int, owner: str) -> bool:
    """The fence: the state still shows this lease's attempt running under ``owner``."""
    return (state.status, state.attempts, state.owner) == ("running", attempt, owner)


def extend(state: CallState, now: float, *, attempt: int, owner: str, lease_for: float) -> Outcome:
    """Push a held lease's expiry to ``now + lease_for``."""
    if not holds(state, attempt, owner):
        return Refused("lost")
    return replace(state, due_at=now + lease_for)


def release(state: CallState, now: float, *, attempt: int, owner: str) -> Outcome:
    """Hand a leased call back unstarted, as it was before the lease: never started (due as
    first accepted), or waiting for a retry (due now). This lease's attempt is not counted."""
    if not holds(state, attempt, owner):
        return Refused("lost")
    attempts = state.attempts - 1
    if attempts == 0:
        return replace(
            state,
            status="queued",
            attempts=0,
            owner=None,
            started_at=None,
            due_at=state.created_at + state.delay,
        )
    return replace(state, status="retrying", attempts=attempts, owner=None, due_at=now)


def expire(state: CallState, now: float, *, attempt: int, owner: str) -> Outcome:
    """End a held lease early (its holder is stopping): the call is due now, and the next
    lease records the attempt as interrupted."""
    if not holds(state, attempt, owner):
        return Refused("lost")
    return replace(state, due_at=now)


def succeed(
    state: CallState, now: float, *, attempt: int, owner: str, result: AttemptResult
) -> Outcome:
    return _end_attempt(state, now, attempt, owner, result, "succeeded", None)


def retry(
    state: CallState,
    now: float,
    *,
    attempt: int,
    owner: str,
    result: AttemptResult,
    at: float,
) -> Outcome:
    """The attempt failed and the call runs again no earlier than ``at``."""
    return _end_attempt(state, now, attempt, owner, result, "retrying", at)


def fail(
    state: CallState, now: float, *, attempt: int, owner: str, result: AttemptResult
) -> Outcome:
    return _end_attempt(state, now, attempt, owner, result, "failed", None)


def _end_attempt(
    state: CallState,
    now: float,
    attempt: int,
    owner: str,
    result: AttemptResult,
    status: Status,
    retry_at: float | None,
) -> Outcome:
    """Record how the held attempt ended; the response stored is always the last one's."""
    if not holds(state, attempt, owner):
        return Refused("lost")
    info = AttemptInfo(
        attempt=attempt,
        started_at=result.started_at,
        ended_at=result.ended_at,
        status_code=result.status_code,
        error=result.error,
        error_kind=result.error_kind,
        retry_at=retry_at,
    )
    ended = replace(
        state,
        status=status,
        owner=None,
        due_at=retry_at,
        ended_at=None,
        status_code=result.status_code,
        response_headers=result.headers,
        response_body=result.body,
        response_truncated=result.truncated,
        error=result.error,
        error_kind=result.error_kind,
        attempt_started_at=result.started_at,
        attempt_log=(*state.attempt_log, info),
    )
    if status not in TERMINAL:
        return ended
    return _finished(replace(ended, ended_at=result.ended_at), now, "pending")


def _finished(state: CallState, now: float, callback: CallbackStatus) -> CallState:
    """The call will not run again: its body goes, and its callback (if any) becomes
    ``callback`` (``pending``: due now)."""
    if not state.has_callback:
        return replace(state, body_stored=False)
    due = now if callback == "pending" else None
    return replace(state, body_stored=False, callback_status=callback, callback_due=due)


def cancel(state: CallState, now: float) -> Outcome:
    """Cancel a call that is queued or waiting for a retry; a running or finished one is
    refused (``running``, ``finished``)."""
    if state.status == "running":
        return Refused("running")
    if state.status in TERMINAL:
        return Refused("finished")
    cancelled = replace(state, status="cancelled", due_at=None, ended_at=now)
    return _finished(cancelled, now, "skipped")


# -- callbacks ---------------------------------------------------------------------------


def lease_callback(state: CallState, now: float, *, owner: str, lease_for: float) -> Outcome:
    """Start the next delivery of a pending callback under a lease to ``owner``; a delivery
    whose lease expired is logged as interrupted."""
    if state.callback_status != "pending" or state.callback_due is None:
        return Refused("ended")
    if state.callback_due > now:
        return Refused("not_due", state.callback_due)
    log = state.callback_log
    if state.callback_owner is not None:
        log = (*log, CallbackAttempt(state.callback_attempts, now, now, None, CALLBACK_INTERRUPTED))
    return replace(
        state,
        callback_attempts=state.callback_attempts + 1,
        callback_owner=owner,
        callback_due=now + lease_for,
        callback_log=log,
    )


def holds_callback(state: CallState, attempt: int, owner: str) -> bool:
    return (state.callback_attempts, state.callback_owner) == (attempt, owner)


def deliver_callback(
    state: CallState, *, attempt: int, owner: str, record: CallbackAttempt
) -> Outcome:
    return _end_delivery(state, attempt, owner, record, "delivered", None)


def retry_callback(
    state: CallState, *, attempt: int, owner: str, record: CallbackAttempt, at: float
) -> Outcome:
    return _end_delivery(state, attempt, owner, record, "pending", at)


def fail_callback(
    state: CallState, *, attempt: int, owner: str, record: CallbackAttempt
) -> Outcome:
    return _end_delivery(state, attempt, owner, record, "failed", None)


def _end_delivery(
    state: CallState,
    attempt: int,
    owner: str,
    record: CallbackAttempt,
    status: CallbackStatus,
    at: float | None,
) -> Outcome:
    if not holds_callback(state, attempt, owner):
        return Refused("lost")
    return replace(
        state,
        callback_status=status,
        callback_due=at,
        callback_owner=None,
        callback_log=(*state.callback_log, record),
    )


def extend_callback(
    state: CallState, now: float, *, attempt: int, owner: str, lease_for: float
) -> Outcome:
    """Push a held delivery lease's expiry to ``now + lease_for``."""
    if state.callback_status != "pending" or not holds_callback(state, attempt, owner):
        return Refused("lost")
    return replace(state, callback_due=now + lease_for)


def expire_callback(state: CallState, now: float, *, attempt: int, owner: str) -> Outcome:
    """End a held delivery lease early (its holder is stopping): due again now."""
    if not holds_callback(state, attempt, owner):
        return Refused("lost")
    return replace(state, callback_due=now)


# -- what the workers are handed --------------------------------------------------------


def leased_call(request: CallRequest, before: CallState, after: CallState) -> LeasedCall:
    """The lease :func:`lease` (or :func:`adopt`) made of ``before``, as ``after``."""
    assert after.due_at is not None and after.owner is not None
    return LeasedCall(
        request, after.attempts, after.created_at, after.due_at, after.owner, interrupted(before)
    )


def callback_job(state: CallState, *, call_id: str, function: str, url: str) -> CallbackJob:
    """The delivery :func:`lease_callback` leased, as ``state``."""
    assert state.callback_due is not None
    return CallbackJob(
        call_id=call_id,
        function=function,
        url=url,
        attempt=state.callback_attempts,
        expires=state.callback_due,
        owner=state.callback_owner or "",
        status=state.status,
        status_code=state.status_code,
        headers=state.response_headers,
        body=state.response_body or b"",
        truncated=state.response_truncated,
        error=state.error,
        error_kind=state.error_kind,
        started_at=state.attempt_started_at,
        ended_at=state.ended_at,
        call_attempts=state.attempts,
        created_at=state.created_at,
    )


def activation(
    state: CallState,
    *,
    call_id: str,
    function: str,
    method: str,
    path: str,
    query: str,
    idempotency_key: str | None,
    callback_url: str | None,
    response_body: bytes | None,
) -> ActivationRecord:
    """The record a reader is handed (``response_body`` as the store reads it: None in
    list summaries)."""
    return ActivationRecord(
        call_id=call_id,
        function=function,
        status=state.status,
        attempts=state.attempts,
        created_at=state.created_at,
        method=method,
        path=path,
        query=query,
        due_at=state.due_at,
        started_at=state.started_at,
        ended_at=state.ended_at,
        status_code=state.status_code,
        response_headers=state.response_headers,
        response_body=response_body,
        response_truncated=state.response_truncated,
        error=state.error,
        error_kind=state.error_kind,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
        callback_status=state.callback_status,
        callback_attempts=state.callback_attempts,
        attempt_log=state.attempt_log,
        callback_log=state.callback_log,
    )


# -- after a restart, and retention ------------------------------------------------------


def recover(state: CallState, now: float) -> CallState:
    """Whoever held this call's leases is known to be gone (the store's only owner restarted):
    a running attempt or delivery is due now, its lease not waited out."""
    if state.status == "running":
        state = replace(state, due_at=now)
    if state.callback_owner is not None:
        state = replace(state, callback_due=now)
    return state


def purgeable(state: CallState, ended_before: float) -> bool:
    """The record may go: its call ended before ``ended_before`` and no delivery is left."""
    return (
        state.ended_at is not None
        and state.ended_at < ended_before
        and (state.callback_status is None or state.callback_status in DONE_CALLBACKS)
    )
