"""The QueueBackend contract, run against every backend (real stores, no fakes).

The queues run on the test's clock (``clock``, a ManualClock): what is due, and when a lease
has expired, is decided by moving it, never by sleeping past a margin. Where a backend's own
timer brings a due call back (a NATS job's redelivery, in real seconds), the test waits for
it with a deadline (``lease_when_due``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from async_helpers import ManualClock, run

from watchdog.gateway.queue.base import (
    AttemptResult,
    CallbackAttempt,
    CallbackJob,
    CallRequest,
    LeasedCall,
    ListQuery,
    QueueBackend,
    QueueFull,
)

pytest_plugins = ("async_fixtures",)  # the make_queue fixture
MakeQueue = Callable[..., QueueBackend]


def ok(clock: ManualClock, status: int = 200, body: bytes = b"out") -> AttemptResult:
    now = clock.now()
    return AttemptResult(now, now, status, (("Content-Type", "text/plain"),), body)


def failure(clock: ManualClock, status: int | None = 503, kind: str = "function") -> AttemptResult:
    now = clock.now()
    return AttemptResult(now, now, status, (), b"", error="boom", error_kind=kind)  # type: ignore[arg-type]


async def lease_one(q: QueueBackend, owner: str = "w1", lease_for: float = 30) -> LeasedCall:
    batch = await q.lease(owner=owner, limit=1, lease_for=lease_for)
    assert len(batch.calls) == 1, batch
    return batch.calls[0]


async def lease_when_due(q: QueueBackend, owner: str = "w1", lease_for: float = 30) -> LeasedCall:
    """The one call the clock made due: at once, or once the backend's timer for it fires
    (NATS re-arms a job for the clock's seconds, run in real ones)."""
    deadline = time.monotonic() + 15
    while True:
        batch = await q.lease(owner=owner, limit=1, lease_for=lease_for)
        if batch.calls:
            assert len(batch.calls) == 1, batch
            return batch.calls[0]
        assert time.monotonic() < deadline, "the call never came up although due"
        await q.wait_for_calls(0.05)


async def lease_callback_when_due(q: QueueBackend, owner: str) -> CallbackJob:
    """As :func:`lease_when_due`, for a callback delivery."""
    deadline = time.monotonic() + 15
    while True:
        jobs = (await q.lease_callbacks(owner=owner, limit=5, lease_for=30)).jobs
        if jobs:
            return jobs[0]
        assert time.monotonic() < deadline, "the delivery never came up although due"
        await q.wait_for_callbacks(0.05)


def test_backend_satisfies_the_protocol(make_queue: MakeQueue) -> None:
    assert isinstance(make_queue(), QueueBackend)


def test_enqueue_keeps_the_whole_request_and_creates_the_record(make_queue: MakeQueue) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            request = CallRequest(
                "echo",
                method="PUT",
                path="/a/b%20c",
                query="x=1&x=2&y=%2F",
                headers=(("X-One", "1"), ("X-Two", "a"), ("X-Two", "b")),
                body=bytes(range(256)),
                callback_url="http://127.0.0.1:9/cb",
            )
            accepted = await q.enqueue(request)
            assert (accepted.call_id, accepted.created, accepted.status) == (
                request.call_id,
                True,
                "queued",
            )
            assert await q.depth() == 1
            record = await q.get(request.call_id)
            assert record is not None
            assert (record.status, record.attempts, record.function) == ("queued", 0, "echo")
            assert (record.method, record.path, record.query) == ("PUT", "/a/b%20c", request.query)
            assert record.callback_status == "waiting"
            assert record.started_at is None and record.ended_at is None
            leased = await lease_one(q)
            assert leased.request == request
            assert leased.attempt == 1 and not leased.interrupted
            assert (await q.get(request.call_id)).status == "running"  # type: ignore[union-attr]
        finally:
            await q.close()

    run(body())


def test_lease_hands_each_due_call_to_one_worker_oldest_first(
    make_queue: MakeQueue, clock: ManualClock
) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            ids = [(await q.enqueue(CallRequest("f", body=b"%d" % i))).call_id for i in range(5)]
            first = await q.lease(owner="a", limit=3, lease_for=30)
            second = await q.lease(owner="b", limit=3, lease_for=30)
            assert [c.call_id for c in first.calls] == ids[:3]
            assert [c.call_id for c in second.calls] == ids[3:]
            third = await q.lease(owner="c", limit=3, lease_for=30)
            assert third.calls == []
            assert third.next_due is not None and third.next_due > clock.now() + 20
        finally:
            await q.close()

    run(body())


def test_delay_holds_a_call_back_and_next_due_says_until_when(
    make_queue: MakeQueue, clock: ManualClock
) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            accepted = await q.enqueue(CallRequest("f", delay=0.4))
            early = await q.lease(owner="w", limit=1, lease_for=30)
            assert early.calls == []
            record = await q.get(accepted.call_id)
            assert record is not None and record.due_at is not None
            assert early.next_due == pytest.approx(record.created_at + 0.4, abs=0.01)
            clock.advance(0.4)
            assert (await lease_when_due(q)).call_id == accepted.call_id
        finally:
            await q.close()

    run(body())


def test_complete_stores_the_response_and_makes_the_callback_due(
    make_queue: MakeQueue, clock: ManualClock
) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            accepted = await q.enqueue(CallRequest("f", callback_url="http://127.0.0.1:9/"))
            leased = await lease_one(q)
            assert await q.complete(leased, ok(clock, 201, b"\x00\xff"))
            record = await q.get(accepted.call_id)
            assert record is not None
            assert (record.status, record.status_code, record.attempts) == ("succeeded", 201, 1)
            assert record.response_body == b"\x00\xff"
            assert record.response_headers == (("Content-Type", "text/plain"),)
            assert record.error is None and record.ended_at is not None
            assert record.callback_status == "pending"
            assert [a.status_code for a in record.attempt_log] == [201]
            assert await q.depth() == 0
            jobs = (await q.lease_callbacks(owner="cb", limit=5, lease_for=30)).jobs
            assert [(j.call_id, j.status_code, j.body, j.attempt) for j in jobs] == [
                (accepted.call_id, 201, b"\x00\xff", 1)
            ]
        finally:
            await q.close()

    run(body())


def test_retry_schedules_the_next_attempt_and_fail_ends_it(
    make_queue: MakeQueue, clock: ManualClock
) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            accepted = await q.enqueue(CallRequest("f"))
            first = await lease_one(q)
            assert await q.retry(first, failure(clock, 503), clock.now() + 0.3)
            record = await q.get(accepted.call_id)
            assert record is not None and record.status == "retrying"
            assert (record.status_code, record.error_kind) == (503, "function")
            assert (await q.lease(owner="w", limit=1, lease_for=30)).calls == []
            clock.advance(0.3)
            second = await lease_when_due(q)
            assert second.attempt == 2
            assert await q.fail(second, failure(clock, None, "platform"))
            record = await q.get(accepted.call_id)
            assert record is not None
            assert (record.status, record.attempts, record.error_kind) == ("failed", 2, "platform")
            assert record.error == "boom" and record.status_code is None
            assert [(a.attempt, a.status_code) for a in record.attempt_log] == [(1, 503), (2, None)]
            assert record.attempt_log[0].retry_at is not None
            assert record.callback_status is None
            assert await q.depth() == 0
        finally:
            await q.close()

    run(body())


def test_an_expired_lease_makes_the_call_due_again_and_fences_the_old_worker(
    make_queue: MakeQueue, clock: ManualClock
) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            accepted = await q.enqueue(CallRequest("f"))
            stale = await lease_one(q, owner="dead", lease_for=0.2)
            clock.advance(0.2)
            fresh = await lease_when_due(q, owner="alive")
            assert (fresh.attempt, fresh.interrupted) == (2, True)
            assert not await q.complete(stale, ok(clock))
            assert not await q.extend(stale, 30)
            assert await q.complete(fresh, ok(clock))
            record = await q.get(accepted.call_id)
            assert record is not None and record.status == "succeeded"
            lost, done = record.attempt_log
            assert (lost.attempt, lost.error_kind, done.attempt) == (1, "platform", 2)
            assert "interrupted" in (lost.error or "")
        finally:
            await q.close()

    run(body())


def test_extend_keeps_a_running_call_from_being_leased_again(
    make_queue: MakeQueue, clock: ManualClock
) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            await q.enqueue(CallRequest("f"))
            leased = await lease_one(q, lease_for=0.3)
            clock.advance(0.15)
            assert await q.extend(leased, 30)
            clock.advance(0.25)  # past the first lease's end, far from the extended one's
            assert (await q.lease(owner="other", limit=1, lease_for=30)).calls == []
        finally:
            await q.close()

    run(body())


def test_extend_callback_keeps_a_delivery_from_being_leased_again(
    make_queue: MakeQueue, clock: ManualClock
) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            await q.enqueue(CallRequest("f", callback_url="http://127.0.0.1:9/"))
            await q.complete(await lease_one(q), ok(clock))
            job = (await q.lease_callbacks(owner="a", limit=5, lease_for=0.3)).jobs[0]
            clock.advance(0.15)
            assert await q.extend_callback(job, 30)
            assert not await q.extend_callback(replace(job, owner="b"), 30)  # not its lease
            clock.advance(0.25)  # past the first lease's end, far from the extended one's
            until = time.monotonic() + 0.6  # NATS's timer of the first lease fires meanwhile
            while time.monotonic() < until:
                assert (await q.lease_callbacks(owner="b", limit=5, lease_for=30)).jobs == []
                await q.wait_for_callbacks(0.1)
            now = clock.now()
            assert await q.callback_delivered(job, CallbackAttempt(1, now, now, 204))
            assert not await q.extend_callback(job, 30)  # ended
        finally:
            await q.close()

    run(body())


def test_skip_functions_leaves_their_calls_for_later(make_queue: MakeQueue) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            busy = await q.enqueue(CallRequest("busy"))
            idle = await q.enqueue(CallRequest("idle"))
            batch = await q.lease(owner="w", limit=5, lease_for=30, skip_functions=["busy"])
            assert [c.call_id for c in batch.calls] == [idle.call_id]
            assert [c.call_id for c in (await q.lease(owner="w", limit=5, lease_for=30)).calls] == [
                busy.call_id
            ]
        finally:
            await q.close()

    run(body())


def test_idempotency_key_returns_the_first_call_and_queues_nothing(make_queue: MakeQueue) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            first = await q.enqueue(CallRequest("f", idempotency_key="k1"))
            again = await q.enqueue(CallRequest("f", idempotency_key="k1", body=b"other"))
            assert (again.call_id, again.created) == (first.call_id, False)
            other_function = await q.enqueue(CallRequest("g", idempotency_key="k1"))
            assert other_function.created and other_function.call_id != first.call_id
            assert await q.depth() == 2
            assert await q.find_idempotent("f", "k1") == first.call_id
            assert await q.find_idempotent("f", "nope") is None
        finally:
            await q.close()

    run(body())


def test_a_full_queue_refuses_until_a_call_finishes(
    make_queue: MakeQueue, clock: ManualClock
) -> None:
    async def body() -> None:
        q = make_queue(max_depth=2)
        await q.open()
        try:
            await q.enqueue(CallRequest("f"))
            await q.enqueue(CallRequest("f"))
            with pytest.raises(QueueFull) as refused:
                await q.enqueue(CallRequest("f"))
            assert refused.value.retry_after > 0
            assert (await q.list(ListQuery())).items.__len__() == 2
            await q.complete(await lease_one(q), ok(clock))
            assert (await q.enqueue(CallRequest("f"))).created
        finally:
            await q.close()

    run(body())


def test_cancel_only_what_is_not_running_or_finished(
    make_queue: MakeQueue, clock: ManualClock
) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            running = await q.enqueue(CallRequest("f"))
            leased = await lease_one(q)
            waiting = await q.enqueue(CallRequest("f", callback_url="http://127.0.0.1:9/"))
            assert await q.cancel(running.call_id) == "running"
            assert await q.cancel(waiting.call_id) == "cancelled"
            assert await q.cancel(waiting.call_id) == "finished"
            assert await q.cancel("no-such-call") == "not_found"
            record = await q.get(waiting.call_id)
            assert record is not None
            assert (record.status, record.callback_status) == ("cancelled", "skipped")
            assert (await q.lease(owner="w", limit=5, lease_for=30)).calls == []
            await q.complete(leased, ok(clock))
            assert await q.cancel(running.call_id) == "finished"
            assert await q.depth() == 0
        finally:
            await q.close()

    run(body())


def test_list_filters_newest_first_in_pages(make_queue: MakeQueue, clock: ManualClock) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            ids = []
            for i in range(7):
                ids.append((await q.enqueue(CallRequest("a" if i % 2 else "b"))).call_id)
            clock.advance(0.01)
            since = clock.now()
            late = (await q.enqueue(CallRequest("a"))).call_id
            ids.append(late)
            await q.complete(await lease_one(q), ok(clock))  # the oldest one, ids[0]

            seen: list[str] = []
            cursor = None
            while True:
                page = await q.list(ListQuery(limit=3, cursor=cursor))
                assert len(page.items) <= 3
                seen += [r.call_id for r in page.items]
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert seen == ids[::-1]
            only_a = await q.list(ListQuery(function="a"))
            assert [r.call_id for r in only_a.items] == [late, ids[5], ids[3], ids[1]]
            done = await q.list(ListQuery(status="succeeded"))
            assert [r.call_id for r in done.items] == [ids[0]]
            assert done.items[0].response_body is None  # summaries carry no body
            recent = await q.list(ListQuery(since=since))
            assert [r.call_id for r in recent.items] == [late]
        finally:
            await q.close()

    run(body())


def test_purge_removes_only_finished_records_past_retention(
    make_queue: MakeQueue, clock: ManualClock
) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            old = await q.enqueue(CallRequest("f", idempotency_key="key"))
            await q.complete(await lease_one(q), ok(clock))
            undelivered = await q.enqueue(CallRequest("f", callback_url="http://127.0.0.1:9/"))
            await q.complete(await lease_one(q), ok(clock))
            clock.advance(0.01)
            cutoff = clock.now()
            clock.advance(0.01)
            unfinished = await q.enqueue(CallRequest("f"))
            assert await q.purge(cutoff) == 1
            assert await q.get(old.call_id) is None
            assert await q.get(undelivered.call_id) is not None  # its callback is still due
            assert await q.get(unfinished.call_id) is not None
            again = await q.enqueue(CallRequest("f", idempotency_key="key"))
            assert again.created and again.call_id != old.call_id
        finally:
            await q.close()

    run(body())


def test_callback_delivery_is_a_leased_job_with_recorded_attempts(
    make_queue: MakeQueue, clock: ManualClock
) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            accepted = await q.enqueue(CallRequest("f", callback_url="http://127.0.0.1:9/"))
            await q.complete(await lease_one(q), ok(clock))
            job = (await q.lease_callbacks(owner="a", limit=5, lease_for=30)).jobs[0]
            assert (await q.lease_callbacks(owner="b", limit=5, lease_for=30)).jobs == []
            now = clock.now()
            refused = CallbackAttempt(job.attempt, now, now, 500, "receiver answered 500")
            assert await q.callback_retry(job, refused, clock.now() + 0.2)
            record = await q.get(accepted.call_id)
            assert record is not None
            assert (record.callback_status, record.callback_attempts) == ("pending", 1)
            assert (await q.lease_callbacks(owner="b", limit=5, lease_for=30)).jobs == []
            clock.advance(0.2)
            second = await lease_callback_when_due(q, "b")
            assert second.attempt == 2
            assert not await q.callback_delivered(job, refused)  # fenced: old lease
            assert await q.callback_delivered(second, CallbackAttempt(2, now, now, 204))
            record = await q.get(accepted.call_id)
            assert record is not None
            assert (record.callback_status, record.callback_attempts) == ("delivered", 2)
            assert [(a.attempt, a.status_code) for a in record.callback_log] == [
                (1, 500),
                (2, 204),
            ]
        finally:
            await q.close()

    run(body())


def test_records_survive_close_and_running_calls_are_due_at_once_after(
    make_queue: MakeQueue,
) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        accepted = await q.enqueue(CallRequest("f", body=b"keep me"))
        await lease_one(q, lease_for=3600)
        await q.close()

        q = make_queue()
        await q.open()
        try:
            assert await q.depth() == 1
            again = await lease_one(q)
            assert (again.call_id, again.attempt, again.interrupted) == (accepted.call_id, 2, True)
            assert again.request.body == b"keep me"
        finally:
            await q.close()

    run(body())


def test_wait_for_calls_wakes_on_enqueue(make_queue: MakeQueue) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            assert (await q.lease(owner="w", limit=1, lease_for=30)).calls == []
            waiter = asyncio.create_task(q.wait_for_calls(20))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            await q.enqueue(CallRequest("f"))
            await asyncio.wait_for(waiter, 5)  # far below the 20 s timeout
        finally:
            await q.close()

    run(body())


def test_release_hands_a_call_back_without_counting_the_attempt(
    make_queue: MakeQueue, clock: ManualClock
) -> None:
    async def body() -> None:
        q = make_queue()
        await q.open()
        try:
            fresh = await q.enqueue(CallRequest("f"))
            leased = await lease_one(q)
            assert await q.release(leased)
            assert not await q.release(leased)
            record = await q.get(fresh.call_id)
            assert record is not None
            assert (record.status, record.attempts, record.started_at) == ("queued", 0, None)
            again = await lease_one(q)
            assert (again.attempt, again.interrupted) == (1, False)
            await q.retry(again, failure(clock), clock.now())
            retried = await lease_one(q)
            assert await q.release(retried)
            record = await q.get(fresh.call_id)
            assert record is not None and (record.status, record.attempts) == ("retrying", 1)
            assert (await lease_one(q)).attempt == 2
        finally:
            await q.close()

    run(body())
