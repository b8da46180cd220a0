"""The worker end to end below HTTP routing: a real SQLite queue, real watchdogs running
real handlers, a real callback receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp
from async_helpers import HttpAttemptRunner, Receiver, retry_policy, run, worker_settings
from conftest import FIXTURES, PYTHON, ROOT, free_port

from watchdog.gateway.callbacks import CallbackDispatcher, CallbackSettings
from watchdog.gateway.queue.base import (
    ActivationRecord,
    AttemptResult,
    CallRequest,
    LeasedCall,
    QueueUnavailable,
)
from watchdog.gateway.queue.sqlite import SqliteQueue
from watchdog.gateway.retry import RetryPolicy
from watchdog.gateway.worker import AsyncWorker, WorkerSettings

pytest_plugins = ("async_fixtures",)
FAST = retry_policy(max_attempts=5, initial_backoff=0.05, max_backoff=0.1)


async def _work_until_done(
    queue: SqliteQueue,
    urls: dict[str, str],
    call_ids: list[str],
    *,
    policy: RetryPolicy = FAST,
    limits: dict[str, int] | None = None,
    settings: WorkerSettings | None = None,
    workers: int = 1,
    with_callbacks: bool = False,
) -> list[ActivationRecord]:
    """Run worker(s) (and the callback dispatcher) until every call and callback settled."""
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        invoker = HttpAttemptRunner(session, urls.get, lambda name: 10.0)
        tasks = [
            asyncio.create_task(
                AsyncWorker(
                    queue,
                    invoker,
                    policy_for=lambda name: policy,
                    limit_for=(limits or {}).get,
                    settings=settings or worker_settings(poll_interval=0.2),
                ).run(stop)
            )
            for _ in range(workers)
        ]
        if with_callbacks:
            dispatcher = CallbackDispatcher(queue, CallbackSettings(retry=FAST, poll_interval=0.2))
            tasks.append(asyncio.create_task(dispatcher.run(stop)))
        try:
            while True:
                records = [await queue.get(call_id) for call_id in call_ids]
                assert all(r is not None for r in records)
                settled = [
                    r
                    for r in records
                    if r is not None
                    and r.status in ("succeeded", "failed", "cancelled")
                    and r.callback_status not in ("waiting", "pending")
                ]
                if len(settled) == len(call_ids):
                    return settled
                for task in tasks:
                    assert not task.done(), task
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 20)


def _flaky(start_watchdog: Callable[..., object]) -> str:
    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'flaky.py'}")
    return wd.url  # type: ignore[attr-defined,no-any-return]


def test_a_call_replays_its_request_and_its_callback_carries_the_result(
    tmp_path: Path, start_watchdog: Callable[..., object], receiver: Callable[..., Receiver]
) -> None:
    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'reflect.py'}")
    rec = receiver()

    async def body() -> ActivationRecord:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            request = CallRequest(
                "reflect",
                method="PUT",
                path="/a/b",
                query="x=1&y=%2F",
                headers=(("X-Custom", "kept"), ("Content-Type", "text/plain")),
                body=b"hello",
                callback_url=rec.url + "/done",
            )
            await queue.enqueue(request)
            [record] = await _work_until_done(
                queue,
                {"reflect": wd.url},
                [request.call_id],
                with_callbacks=True,  # type: ignore[attr-defined]
            )
            return record
        finally:
            await queue.close()

    record = run(body())
    assert (record.status, record.status_code, record.attempts) == ("succeeded", 200, 1)
    seen = json.loads(record.response_body or b"")
    assert seen == {
        "method": "PUT",
        "path": "/a/b",
        "query": "x=1&y=%2F",
        "custom": "kept",
        "call_id": record.call_id,
        "body": "hello",
    }
    [callback] = rec.wait_for(1)
    assert callback.body == record.response_body
    assert callback.headers["X-Function-Status"] == "200"
    assert callback.headers["X-Call-Id"] == record.call_id
    assert record.callback_status == "delivered"


def test_a_handler_failing_twice_is_retried_until_it_succeeds(
    tmp_path: Path, start_watchdog: Callable[..., object], receiver: Callable[..., Receiver]
) -> None:
    url = _flaky(start_watchdog)
    rec = receiver()
    state = tmp_path / "state"

    async def body() -> ActivationRecord:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            request = CallRequest(
                "flaky", query=f"fail=2&state={quote(str(state))}", callback_url=rec.url
            )
            await queue.enqueue(request)
            [record] = await _work_until_done(
                queue, {"flaky": url}, [request.call_id], with_callbacks=True
            )
            return record
        finally:
            await queue.close()

    record = run(body())
    assert (record.status, record.attempts, record.response_body) == (
        "succeeded",
        3,
        b"ok after 3\n",
    )
    assert [(a.attempt, a.status_code, a.error_kind) for a in record.attempt_log] == [
        (1, 500, "function"),
        (2, 500, "function"),
        (3, 200, None),
    ]
    [callback] = rec.wait_for(1)  # one callback, for the final result only
    assert callback.headers["X-Function-Status"] == "200"
    assert callback.headers["X-Call-Attempts"] == "3"


def test_a_call_fails_for_good_after_its_last_attempt(
    tmp_path: Path, start_watchdog: Callable[..., object], receiver: Callable[..., Receiver]
) -> None:
    url = _flaky(start_watchdog)
    rec = receiver()

    async def body() -> ActivationRecord:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            state = quote(str(tmp_path / "state"))
            request = CallRequest("flaky", query=f"fail=99&state={state}", callback_url=rec.url)
            await queue.enqueue(request)
            [record] = await _work_until_done(
                queue,
                {"flaky": url},
                [request.call_id],
                policy=retry_policy(max_attempts=2, initial_backoff=0.05, max_backoff=0.05),
                with_callbacks=True,
            )
            return record
        finally:
            await queue.close()

    record = run(body())
    assert (record.status, record.attempts, record.status_code) == ("failed", 2, 500)
    assert record.error_kind == "function"
    assert "gave up after 2 of 2 attempts" in (record.error or "")
    [callback] = rec.wait_for(1)
    assert callback.headers["X-Function-Status"] == "500"
    assert callback.headers["X-Call-Status"] == "failed"


def test_an_unreachable_function_is_a_platform_failure(tmp_path: Path) -> None:
    async def body() -> ActivationRecord:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            request = CallRequest("gone")
            await queue.enqueue(request)
            policy = retry_policy(max_attempts=2, initial_backoff=0.05, max_backoff=0.05)
            dead = f"http://127.0.0.1:{free_port()}"
            [record] = await _work_until_done(
                queue, {"gone": dead}, [request.call_id], policy=policy
            )
            return record
        finally:
            await queue.close()

    record = run(body())
    assert (record.status, record.attempts, record.error_kind) == ("failed", 2, "platform")
    assert record.status_code is None and "unreachable" in (record.error or "")


def test_calls_too_old_fail_without_running_and_delays_are_honoured(
    tmp_path: Path, start_watchdog: Callable[..., object]
) -> None:
    url = _flaky(start_watchdog)
    state = tmp_path / "state"

    async def body() -> list[ActivationRecord]:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            stale = CallRequest("flaky", query=f"state={quote(str(state))}")
            await queue.enqueue(stale)
            await asyncio.sleep(0.3)
            delayed = CallRequest("flaky", query=f"state={quote(str(state))}", delay=0.5)
            await queue.enqueue(delayed)
            policy = retry_policy(max_event_age=0.25, initial_backoff=0, max_backoff=0)
            return await _work_until_done(
                queue, {"flaky": url}, [stale.call_id, delayed.call_id], policy=policy
            )
        finally:
            await queue.close()

    too_old, delayed = run(body())
    assert (too_old.status, too_old.error_kind) == ("failed", "platform")
    assert "max_event_age" in (too_old.error or "")
    assert delayed.status == "succeeded"
    assert delayed.started_at is not None and delayed.started_at - delayed.created_at >= 0.5
    assert len(state.read_text().splitlines()) == 1  # only the delayed call ran


def _runs(state: Path) -> list[tuple[float, ...]]:
    lines = Path(f"{state}.runs").read_text().splitlines()
    return sorted(tuple(map(float, line.split())) for line in lines)


def test_a_function_never_runs_more_calls_than_its_limit(
    tmp_path: Path, start_watchdog: Callable[..., object]
) -> None:
    url = _flaky(start_watchdog)
    state = tmp_path / "state"

    async def body() -> list[ActivationRecord]:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            ids = []
            for _ in range(3):
                request = CallRequest("flaky", query=f"sleep=0.2&state={quote(str(state))}")
                ids.append((await queue.enqueue(request)).call_id)
            settings = worker_settings(concurrency=8, poll_interval=0.05)
            return await _work_until_done(
                queue, {"flaky": url}, ids, limits={"flaky": 1}, settings=settings
            )
        finally:
            await queue.close()

    assert [r.status for r in run(body())] == ["succeeded"] * 3
    runs = _runs(state)
    assert len(runs) == 3
    assert all(later[0] >= earlier[1] for earlier, later in zip(runs, runs[1:], strict=False)), runs


def test_a_call_outlasting_its_lease_runs_once_while_its_worker_lives(
    tmp_path: Path, start_watchdog: Callable[..., object]
) -> None:
    url = _flaky(start_watchdog)
    state = tmp_path / "state"

    async def body() -> list[ActivationRecord]:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            ids = []
            for _ in range(2):
                request = CallRequest("flaky", query=f"sleep=0.6&state={quote(str(state))}")
                ids.append((await queue.enqueue(request)).call_id)
            # Leases of 0.3 s on calls taking 0.6 s, two workers competing: only the
            # heartbeat keeps a call from being handed to the other worker.
            settings = worker_settings(concurrency=1, lease_for=0.3, poll_interval=0.05)
            return await _work_until_done(queue, {"flaky": url}, ids, settings=settings, workers=2)
        finally:
            await queue.close()

    assert [r.attempts for r in run(body())] == [1, 1]
    assert len(_runs(state)) == 2


class _SavingFails(SqliteQueue):
    """A real SQLite queue whose first ``failures`` saves of a result fail as a NATS outage
    does (QueueUnavailable), while the rest of the queue keeps working."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.extended_while_failing = 0

    async def complete(self, lease: LeasedCall, result: AttemptResult) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise QueueUnavailable("NATS: NoStreamResponseError: nats: no response from stream")
        return await super().complete(lease, result)

    async def extend(self, lease: LeasedCall, lease_for: float) -> bool:
        if self.failures > 0:
            self.extended_while_failing += 1
        return await super().extend(lease, lease_for)


def test_a_result_waiting_to_be_saved_keeps_its_lease_and_does_not_run_again(
    tmp_path: Path, start_watchdog: Callable[..., object]
) -> None:
    """The function answered, saving its result fails for longer than the lease (four tries,
    about 2.75 s, on a 0.3-s lease) and a second worker is looking: the lease is renewed
    until the result is saved, so the call is not handed over and run again."""
    url = _flaky(start_watchdog)
    state = tmp_path / "state"
    queue = _SavingFails(tmp_path / "q.db", failures=4)

    async def body() -> list[ActivationRecord]:
        await queue.open()
        try:
            request = CallRequest("flaky", query=f"state={quote(str(state))}")
            ids = [(await queue.enqueue(request)).call_id]
            settings = worker_settings(concurrency=1, lease_for=0.3, poll_interval=0.05)
            return await _work_until_done(queue, {"flaky": url}, ids, settings=settings, workers=2)
        finally:
            await queue.close()

    records = run(body())
    assert [(r.status, r.attempts) for r in records] == [("succeeded", 1)]
    assert len(_runs(state)) == 1
    assert queue.extended_while_failing > 0


def test_calls_running_when_the_worker_process_is_killed_complete_after_a_restart(
    tmp_path: Path, start_watchdog: Callable[..., object], receiver: Callable[..., Receiver]
) -> None:
    url = _flaky(start_watchdog)
    rec = receiver()
    db = tmp_path / "q.db"
    state, started = quote(str(tmp_path / "state")), tmp_path / "started"

    async def enqueue() -> list[str]:
        queue = SqliteQueue(db)
        await queue.open()
        try:
            ids = []
            for i in range(4):
                sleep = 2 if i == 0 else 0
                query = f"sleep={sleep}&state={state}&started={quote(str(started))}"
                request = CallRequest("flaky", query=query, callback_url=rec.url)
                ids.append((await queue.enqueue(request)).call_id)
            return ids
        finally:
            await queue.close()

    ids = run(enqueue())

    def worker() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [PYTHON, str(FIXTURES / "async_worker_proc.py"), str(db), f"flaky={url}"],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        return proc

    first = worker()
    try:
        rec.wait_for(3)  # the three quick calls are done; the slow one is starting or running
        deadline = time.monotonic() + 10  # its interpreter may start after the quick calls end
        while len(started.read_text().splitlines()) < 4:
            assert time.monotonic() < deadline, "the slow call never started"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait(10)
    second = worker()
    try:
        callbacks = rec.wait_for_calls(ids, timeout=20)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0

    # Every accepted call's callback arrived; one cut off by the kill may arrive twice.
    assert {r.headers["X-Call-Id"] for r in callbacks} == set(ids)

    async def slow_record() -> ActivationRecord | None:
        queue = SqliteQueue(db)
        await queue.open()
        try:
            return await queue.get(ids[0])
        finally:
            await queue.close()

    record = run(slow_record())
    assert record is not None and (record.status, record.attempts) == ("succeeded", 2)
    interrupted, done = record.attempt_log
    assert interrupted.error_kind == "platform" and "interrupted" in (interrupted.error or "")
    assert done.status_code == 200


def test_the_worker_invokes_through_the_gateways_sync_path(
    tmp_path: Path, start_watchdog: Callable[..., object]
) -> None:
    from watchdog.gateway.invoke import Invoker
    from watchdog.gateway.metrics import GatewayMetrics
    from watchdog.gateway.proxy import FunctionUpstreams
    from watchdog.gateway.registry import Function, InMemoryRegistry
    from watchdog.gateway.worker import InvokePathRunner

    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'reflect.py'}")
    registry = InMemoryRegistry([Function("reflect", wd.url, max_concurrency=2)])  # type: ignore[attr-defined]

    async def body() -> tuple[list[ActivationRecord], int]:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        stop = asyncio.Event()
        try:
            with FunctionUpstreams() as upstreams:
                path = Invoker(
                    registry,
                    upstreams,
                    GatewayMetrics(),
                    namespace="openfaas-fn",
                    default_timeout=5,
                )
                gateway = InvokePathRunner(path)
                assert gateway.limit_for("reflect") == 2 and gateway.limit_for("nope") is None
                ok = CallRequest("reflect.openfaas-fn", path="/p", query="q=1", body=b"hi")
                gone = CallRequest("nope")
                for request in (ok, gone):
                    await queue.enqueue(request)
                worker = AsyncWorker(
                    queue,
                    gateway,
                    policy_for=lambda name: FAST,
                    limit_for=gateway.limit_for,
                    settings=worker_settings(),
                )
                task = asyncio.create_task(worker.run(stop))
                while True:
                    records = [await queue.get(r.call_id) for r in (ok, gone)]
                    if all(r is not None and r.status in ("succeeded", "failed") for r in records):
                        break
                    await asyncio.sleep(0.02)
                stop.set()
                await asyncio.wait_for(task, 10)
                return [r for r in records if r], path.invocations(registry.list()[0])
        finally:
            await queue.close()

    (done, gone), invocations = run(body())
    assert (done.status, done.status_code) == ("succeeded", 200)
    assert json.loads(done.response_body or b"")["path"] == "/p"
    assert json.loads(done.response_body or b"")["call_id"] == done.call_id
    assert invocations == 1  # counted by the gateway's own invoke path
    assert (gone.status, gone.attempts, gone.error_kind) == ("failed", 1, "platform")
    assert "not found" in (gone.error or "")
