"""The call's state machine (queue/transitions.py): pure functions, the time given."""

from __future__ import annotations

from dataclasses import replace

import pytest

from watchdog.gateway.queue import transitions as t
from watchdog.gateway.queue.base import AttemptResult, CallbackAttempt
from watchdog.gateway.queue.transitions import CallState, Refused

T0 = 1_000.0


def leased(state: CallState, now: float, owner: str = "w", lease_for: float = 30) -> CallState:
    after = t.lease(state, now, owner=owner, lease_for=lease_for)
    assert isinstance(after, CallState), after
    return after


def ok(now: float, body: bytes = b"out") -> AttemptResult:
    return AttemptResult(now, now, 200, (("A", "b"),), body)


def test_enqueue_is_due_after_its_delay_and_not_before() -> None:
    state = t.enqueue(T0, delay=5, has_callback=True)
    assert (state.status, state.due_at, state.callback_status) == ("queued", T0 + 5, "waiting")
    assert t.lease(state, T0 + 4.9, owner="w", lease_for=30) == Refused("not_due", T0 + 5)
    running = leased(state, T0 + 5)
    assert (running.status, running.attempts, running.owner) == ("running", 1, "w")
    assert (running.started_at, running.due_at) == (T0 + 5, T0 + 35)
    assert t.enqueue(T0, delay=-1, has_callback=False).due_at == T0


def test_an_expired_lease_is_taken_over_and_the_old_holder_fenced() -> None:
    running = leased(t.enqueue(T0, delay=0, has_callback=False), T0, owner="dead", lease_for=1)
    assert t.lease(running, T0 + 0.5, owner="b", lease_for=30) == Refused("not_due", T0 + 1)
    taken = leased(running, T0 + 1, owner="alive")
    assert t.interrupted(running) and (taken.attempts, taken.started_at) == (2, T0)
    (lost,) = taken.attempt_log
    assert (lost.attempt, lost.error_kind, lost.ended_at) == (1, "platform", T0 + 1)
    result = ok(T0 + 2)
    assert t.succeed(taken, T0 + 2, attempt=1, owner="dead", result=result) == Refused("lost")
    assert t.extend(taken, T0 + 2, attempt=1, owner="dead", lease_for=9) == Refused("lost")
    extended = t.extend(taken, T0 + 2, attempt=2, owner="alive", lease_for=9)
    assert isinstance(extended, CallState) and extended.due_at == T0 + 11


def test_retry_then_fail_records_every_attempt_and_ends_the_call() -> None:
    first = leased(t.enqueue(T0, delay=0, has_callback=False), T0)
    boom = AttemptResult(T0, T0 + 1, 503, (), b"", error="boom", error_kind="function")
    waiting = t.retry(first, T0 + 1, attempt=1, owner="w", result=boom, at=T0 + 10)
    assert isinstance(waiting, CallState)
    assert (waiting.status, waiting.due_at, waiting.ended_at) == ("retrying", T0 + 10, None)
    assert waiting.body_stored and waiting.attempt_log[0].retry_at == T0 + 10
    second = leased(waiting, T0 + 10)
    assert second.attempts == 2 and len(second.attempt_log) == 1  # not interrupted
    failed = t.fail(second, T0 + 11, attempt=2, owner="w", result=boom)
    assert isinstance(failed, CallState)
    assert (failed.status, failed.due_at, failed.ended_at, failed.body_stored) == (
        "failed",
        None,
        T0 + 1,
        False,
    )
    assert not failed.unfinished and failed.callback_status is None
    assert t.lease(failed, T0 + 99, owner="w", lease_for=1) == Refused("ended")


def test_success_stores_the_response_and_makes_the_callback_pending() -> None:
    running = leased(t.enqueue(T0, delay=0, has_callback=True), T0)
    done = t.succeed(running, T0 + 3, attempt=1, owner="w", result=ok(T0 + 2, b"\x00"))
    assert isinstance(done, CallState)
    assert (done.status, done.status_code, done.response_body) == ("succeeded", 200, b"\x00")
    assert (done.callback_status, done.callback_due) == ("pending", T0 + 3)


def test_release_puts_the_call_back_as_it_was() -> None:
    queued = t.enqueue(T0, delay=2, has_callback=False)
    running = leased(queued, T0 + 2)
    back = t.release(running, T0 + 3, attempt=1, owner="w")
    assert back == replace(queued, attempt_started_at=T0 + 2)  # the last start is kept
    boom = AttemptResult(T0, T0, None, error="x", error_kind="platform")
    waiting = t.retry(running, T0 + 3, attempt=1, owner="w", result=boom, at=T0 + 4)
    assert isinstance(waiting, CallState)
    again = t.release(leased(waiting, T0 + 4), T0 + 5, attempt=2, owner="w")
    assert isinstance(again, CallState)
    assert (again.status, again.attempts, again.due_at) == ("retrying", 1, T0 + 5)


@pytest.mark.parametrize(("status", "reason"), [("running", "running"), ("failed", "finished")])
def test_cancel_refuses_running_and_finished_calls(status: str, reason: str) -> None:
    state = CallState(T0, 0, False, status=status)  # type: ignore[arg-type]
    assert t.cancel(state, T0) == Refused(reason)  # type: ignore[arg-type]


def test_cancel_skips_the_callback_and_drops_the_body() -> None:
    cancelled = t.cancel(t.enqueue(T0, delay=9, has_callback=True), T0 + 1)
    assert isinstance(cancelled, CallState)
    assert (cancelled.status, cancelled.ended_at, cancelled.due_at) == ("cancelled", T0 + 1, None)
    assert (cancelled.callback_status, cancelled.body_stored) == ("skipped", False)
    assert t.purgeable(cancelled, T0 + 2) and not t.purgeable(cancelled, T0 + 1)


def test_callback_deliveries_are_leased_fenced_and_retried() -> None:
    running = leased(t.enqueue(T0, delay=0, has_callback=True), T0)
    done = t.succeed(running, T0, attempt=1, owner="w", result=ok(T0))
    assert isinstance(done, CallState) and not t.purgeable(done, T0 + 1)
    first = t.lease_callback(done, T0, owner="a", lease_for=1)
    assert isinstance(first, CallState) and first.callback_attempts == 1
    assert t.lease_callback(first, T0 + 0.5, owner="b", lease_for=1) == Refused("not_due", T0 + 1)
    second = t.lease_callback(first, T0 + 1, owner="b", lease_for=1)
    assert isinstance(second, CallState) and second.callback_log[0].error is not None
    attempt = CallbackAttempt(1, T0, T0, 204)
    assert t.deliver_callback(second, attempt=1, owner="a", record=attempt) == Refused("lost")
    later = t.retry_callback(second, attempt=2, owner="b", record=attempt, at=T0 + 5)
    assert isinstance(later, CallState) and later.callback_due == T0 + 5
    third = t.lease_callback(later, T0 + 5, owner="c", lease_for=1)
    assert isinstance(third, CallState) and len(third.callback_log) == 2  # not interrupted
    delivered = t.deliver_callback(third, attempt=3, owner="c", record=attempt)
    assert isinstance(delivered, CallState)
    assert (delivered.callback_status, delivered.callback_due) == ("delivered", None)
    assert t.lease_callback(delivered, T0 + 9, owner="d", lease_for=1) == Refused("ended")
    assert t.purgeable(delivered, T0 + 1)


def test_recover_and_expire_make_held_leases_due_now() -> None:
    running = leased(t.enqueue(T0, delay=0, has_callback=False), T0)
    assert t.recover(running, T0 + 1).due_at == T0 + 1
    assert t.expire(running, T0 + 2, attempt=1, owner="other") == Refused("lost")
    expired = t.expire(running, T0 + 2, attempt=1, owner="w")
    assert isinstance(expired, CallState) and expired.due_at == T0 + 2
    queued = t.enqueue(T0, delay=5, has_callback=False)
    assert t.recover(queued, T0 + 1) == queued
