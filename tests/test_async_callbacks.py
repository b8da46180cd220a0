"""Callback delivery: signature, destination policy, and the at-least-once delivery job
against a real receiver on loopback and a real SQLite queue."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from async_helpers import Receiver, retry_policy, run
from conftest import free_port

from watchdog.config import ConfigError
from watchdog.gateway.callbacks import (
    SIGNATURE_HEADER,
    CallbackDispatcher,
    CallbackPolicy,
    CallbackSettings,
    sign,
    verify_signature,
)
from watchdog.gateway.queue.base import (
    ActivationRecord,
    AttemptResult,
    CallbackAttempt,
    CallbackJob,
    CallRequest,
    QueueUnavailable,
)
from watchdog.gateway.queue.sqlite import SqliteQueue

pytest_plugins = ("async_fixtures",)
SECRET = b"s3cret"
FAST = retry_policy(max_attempts=3, initial_backoff=0.05, max_backoff=0.1)


def test_signature_covers_timestamp_and_body() -> None:
    value = sign(SECRET, b"payload", 1_800_000_000)
    assert value.startswith("t=1800000000,v1=")
    assert verify_signature(SECRET, value, b"payload", now=1_800_000_010)
    assert not verify_signature(SECRET, value, b"payload!", now=1_800_000_010)
    assert not verify_signature(b"other", value, b"payload", now=1_800_000_010)
    assert not verify_signature(SECRET, value, b"payload", now=1_800_001_000)  # replayed late
    forged = value.replace("t=1800000000", "t=1800000900")
    assert not verify_signature(SECRET, forged, b"payload", now=1_800_000_900)
    assert not verify_signature(SECRET, None, b"payload")
    assert not verify_signature(SECRET, "garbage", b"payload")


def test_policy_refuses_bad_schemes_and_metadata_addresses_by_default() -> None:
    policy = CallbackPolicy()
    assert "scheme" in (policy.check_url("ftp://example.com/") or "")
    assert "no host" in (policy.check_url("http:///path") or "")
    assert "unparsable" in (policy.check_url("http://[::1/") or "")
    assert policy.check_url("http://169.254.169.254/latest/meta-data") is not None
    assert policy.check_url("http://[fe80::1]/") is not None
    assert policy.check_url("http://[::ffff:169.254.169.254]/") is not None
    assert policy.check_url("http://127.0.0.1:8080/hook") is None
    assert policy.check_url("https://hooks.example.com/x") is None


def test_policy_deny_private_and_allow_list() -> None:
    private = CallbackPolicy(deny_private=True)
    assert private.check_url("http://127.0.0.1/") is not None
    assert private.check_url("http://10.1.2.3/") is not None
    assert private.check_url("http://[::1]/") is not None
    assert private.check_url("http://93.184.216.34/") is None

    allowed = CallbackPolicy(allow=("127.0.0.0/8", "*.example.com", "hooks.test"))
    assert allowed.check_url("http://127.0.0.1:9/") is None
    assert allowed.check_url("http://a.b.example.com/") is None
    assert allowed.check_url("http://hooks.test/") is None
    assert allowed.check_url("http://10.0.0.1/") is not None
    assert allowed.check_url("http://other.test/") is None  # a name: decided once resolved

    named = CallbackPolicy(allow=("hooks.test",))
    assert named.check_url("http://other.test/") is not None
    with pytest.raises(ConfigError) as bad:
        CallbackPolicy(allow=("ok.test", "bad host", "*."))
    assert len(bad.value.problems) == 2


async def _finished_call(
    queue: SqliteQueue, url: str, result: AttemptResult, status: str = "complete"
) -> str:
    accepted = await queue.enqueue(CallRequest("echo", callback_url=url))
    leased = (await queue.lease(owner="w", limit=1, lease_for=30)).calls[0]
    if status == "complete":
        await queue.complete(leased, result)
    else:
        await queue.fail(leased, result)
    return accepted.call_id


async def _deliver_until_settled(
    queue: SqliteQueue, call_id: str, settings: CallbackSettings
) -> ActivationRecord:
    stop = asyncio.Event()
    dispatcher = CallbackDispatcher(queue, settings)
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        while True:
            record = await queue.get(call_id)
            assert record is not None
            if record.callback_status in ("delivered", "failed"):
                return record
            assert not task.done(), task
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def _settings(**overrides: object) -> CallbackSettings:
    base: dict[str, object] = {"secret": SECRET, "retry": FAST, "timeout": 5, "poll_interval": 0.2}
    base.update(overrides)
    return CallbackSettings(**base)  # type: ignore[arg-type]


def test_delivery_carries_the_response_every_header_and_a_signature(
    tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    rec = receiver()

    async def body() -> ActivationRecord:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            started = time.time() - 1.5
            result = AttemptResult(
                started,
                started + 1.25,
                201,
                (("Content-Type", "application/json"), ("X-Custom", "yes"), ("Connection", "x")),
                b'{"ok":true}',
            )
            call_id = await _finished_call(queue, rec.url + "/hook?x=1", result)
            return await _deliver_until_settled(queue, call_id, _settings())
        finally:
            await queue.close()

    record = run(body())
    assert (record.callback_status, record.callback_attempts) == ("delivered", 1)
    [got] = rec.wait_for(1)
    assert (got.method, got.path, got.body) == ("POST", "/hook?x=1", b'{"ok":true}')
    headers = got.headers
    assert headers["X-Call-Id"] == record.call_id
    assert headers["X-Function-Name"] == "echo"
    assert headers["X-Function-Status"] == "201"
    assert float(headers["X-Duration-Seconds"]) == pytest.approx(1.25, abs=0.001)
    assert int(headers["X-Start-Time"]) == pytest.approx(record.attempt_log[0].started_at * 1e9)
    assert headers["X-Call-Status"] == "succeeded"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Custom"] == "yes"
    assert headers["Connection"] != "x"
    assert verify_signature(SECRET, headers[SIGNATURE_HEADER], got.body)
    assert [a.status_code for a in record.callback_log] == [200]


@pytest.mark.parametrize("truncated", [False, True])
def test_a_compressed_answer_is_delivered_with_its_encoding_unless_cut(
    tmp_path: Path, receiver: Callable[..., Receiver], truncated: bool
) -> None:
    rec = receiver()
    packed = gzip.compress(b"hello " * 100)

    async def body() -> None:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            now = time.time()
            headers = (("Content-Type", "text/plain"), ("Content-Encoding", "gzip"))
            kept = packed[:10] if truncated else packed
            result = AttemptResult(now, now, 200, headers, kept, truncated=truncated)
            call_id = await _finished_call(queue, rec.url + "/hook", result)
            await _deliver_until_settled(queue, call_id, _settings())
        finally:
            await queue.close()

    run(body())
    [got] = rec.wait_for(1)
    if truncated:  # a cut of a gzip stream cannot be decoded: it goes as bytes, unlabelled
        assert "Content-Encoding" not in got.headers and got.body == packed[:10]
    else:
        assert got.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(got.body) == b"hello " * 100


def test_failed_deliveries_are_retried_honouring_retry_after(
    tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    rec = receiver([(500, {}), (503, {"Retry-After": "1"})])

    async def body() -> ActivationRecord:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            now = time.time()
            call_id = await _finished_call(queue, rec.url, AttemptResult(now, now, 200))
            return await _deliver_until_settled(queue, call_id, _settings())
        finally:
            await queue.close()

    record = run(body())
    assert record.callback_status == "delivered"
    attempts = [(a.attempt, a.status_code) for a in record.callback_log]
    assert attempts == [(1, 500), (2, 503), (3, 200)]
    first, second, third = rec.wait_for(3)
    assert third.at - second.at >= 0.9  # Retry-After: 1 beat the 0.1 s backoff
    assert {r.headers["X-Call-Id"] for r in (first, second, third)} == {record.call_id}
    assert [r.headers["X-Callback-Attempt"] for r in (first, second, third)] == ["1", "2", "3"]


def test_an_unreachable_receiver_fails_after_the_last_attempt(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"

    async def body() -> ActivationRecord:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            now = time.time()
            call_id = await _finished_call(queue, dead, AttemptResult(now, now, 200))
            return await _deliver_until_settled(queue, call_id, _settings())
        finally:
            await queue.close()

    record = run(body())
    assert (record.callback_status, record.callback_attempts) == ("failed", 3)
    assert all("unreachable" in (a.error or "") for a in record.callback_log)


def test_the_policy_is_enforced_on_resolved_addresses_at_delivery(
    tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    rec = receiver()

    async def body() -> ActivationRecord:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            now = time.time()
            # A name passes the check at submit time; it resolves to loopback, refused here.
            url = f"http://localhost:{rec.port}/hook"
            call_id = await _finished_call(queue, url, AttemptResult(now, now, 200))
            settings = _settings(policy=CallbackPolicy(deny_private=True))
            return await _deliver_until_settled(queue, call_id, settings)
        finally:
            await queue.close()

    record = run(body())
    assert (record.callback_status, record.callback_attempts) == ("failed", 1)
    assert "refused" in (record.callback_log[0].error or "")
    assert rec.requests == []


def test_a_call_that_got_no_response_reports_503_and_its_error(
    tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    rec = receiver()

    async def body() -> ActivationRecord:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            now = time.time()
            result = AttemptResult(
                now, now, None, error="function unreachable", error_kind="platform"
            )
            call_id = await _finished_call(queue, rec.url, result, status="fail")
            return await _deliver_until_settled(queue, call_id, _settings(secret=None))
        finally:
            await queue.close()

    record = run(body())
    assert record.callback_status == "delivered"
    [got] = rec.wait_for(1)
    assert got.body == b""
    assert got.headers["X-Function-Status"] == "503"
    assert got.headers["X-Call-Status"] == "failed"
    assert got.headers["X-Function-Error"] == "function unreachable"
    assert SIGNATURE_HEADER not in got.headers


class _SavingDeliveryFails(SqliteQueue):
    """A real SQLite queue whose first ``failures`` saves of a delivered callback fail as a
    NATS outage does (QueueUnavailable), while the rest of the queue keeps working."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.extended_while_failing = 0

    async def callback_delivered(self, job: CallbackJob, attempt: CallbackAttempt) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise QueueUnavailable("NATS: NoStreamResponseError: nats: no response from stream")
        return await super().callback_delivered(job, attempt)

    async def extend_callback(self, job: CallbackJob, lease_for: float) -> bool:
        if self.failures > 0:
            self.extended_while_failing += 1
        return await super().extend_callback(job, lease_for)


def test_a_delivery_waiting_to_be_saved_keeps_its_lease_and_is_not_made_again(
    tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    """The receiver took the callback, saving that fails for longer than the lease (four
    tries, about 2.75 s, on a 0.3-s lease) and a second dispatcher is looking: the lease is
    renewed until the outcome is saved, so the callback is not delivered again."""
    rec = receiver()
    queue = _SavingDeliveryFails(tmp_path / "q.db", failures=4)

    async def body() -> ActivationRecord:
        await queue.open()
        try:
            now = time.time()
            call_id = await _finished_call(queue, rec.url, AttemptResult(now, now, 200, (), b"x"))
            settings = _settings(lease_for=0.3, poll_interval=0.05)
            stop = asyncio.Event()
            other = asyncio.create_task(CallbackDispatcher(queue, settings).run(stop))
            try:
                return await _deliver_until_settled(queue, call_id, settings)
            finally:
                stop.set()
                await asyncio.wait_for(other, 15)
        finally:
            await queue.close()

    record = run(body())
    assert (record.callback_status, record.callback_attempts) == ("delivered", 1)
    assert len(rec.requests) == 1
    assert queue.extended_while_failing > 0
