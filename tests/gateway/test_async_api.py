"""Asynchronous calls end to end: the real gateway (a child process) in front of real
watchdogs, with a real callback receiver on loopback."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from async_helpers import Receiver
from conftest import FIXTURES, PYTHON, ROOT, Reply, RunningWatchdog

from watchdog.gateway.callbacks import verify_signature

from .conftest import Launcher

pytest_plugins = ("async_fixtures",)

SECRET = "s3cret"
FAST_RETRIES = ("--initial-backoff", "50ms", "--max-backoff", "100ms")


def _json(reply: Reply) -> Any:
    return json.loads(reply.body)


@dataclass
class AsyncWorld:
    launcher: Launcher
    gateway: RunningWatchdog
    flaky_url: str
    queue_path: Path
    state_dir: Path
    extra_args: tuple[str, ...]

    def post(self, path: str, body: bytes = b"", **headers: str) -> Reply:
        return self.gateway.request("POST", path, body=body, headers=_headers(headers))

    def flaky(self, name: str, **params: object) -> str:
        """The query of a ``flaky.py`` call keeping its state in ``name``."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"state={self.state_dir / name}" + (f"&{query}" if query else "")

    def record(self, call_id: str) -> dict[str, Any]:
        reply = self.gateway.request("GET", f"/system/activations/{call_id}")
        assert reply.status == 200, reply.text
        return dict(_json(reply))

    def wait_for_status(self, call_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            record = self.record(call_id)
            if record["status"] in statuses:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"still {record['status']}: {record}")
            time.sleep(0.05)

    def wait_for_delivery(self, call_id: str, timeout: float = 20) -> dict[str, Any]:
        """The record once its callback is delivered (the receiver may see the callback a
        moment before the gateway records the delivery)."""
        deadline = time.monotonic() + timeout
        while (record := self.record(call_id))["callback"]["status"] != "delivered":
            assert time.monotonic() < deadline, record
            time.sleep(0.05)
        return record

    def restart(self, *args: str) -> RunningWatchdog:
        """A new gateway on the same queue file (after the old one died)."""
        self.gateway = self.launcher.gateway(
            "--queue-path", str(self.queue_path), *self.extra_args, *args
        )
        return self.gateway


def _headers(headers: dict[str, str]) -> dict[str, str]:
    return {name.replace("_", "-"): value for name, value in headers.items()}


@pytest.fixture(params=["sqlite", "nats"])
def world(
    request: pytest.FixtureRequest, launcher: Launcher, tmp_path: Path
) -> Callable[..., AsyncWorld]:
    """``world(*gateway_args, functions_yaml=...)``: a ``flaky.py`` watchdog registered as
    ``flaky`` and a gateway with fast retries and a callback secret, queueing in SQLite or
    in a real nats-server (a prefix of its own, short leases)."""
    backend: tuple[str, ...] = ()
    if request.param == "nats":
        url = request.getfixturevalue("nats_server").url
        prefix = f"w{uuid.uuid4().hex[:12]}"
        backend = ("--queue", "nats", "--nats-url", url, "--nats-prefix", prefix, "--lease", "2s")

    def start(*args: str, functions: str = "", **watchdog_env: str) -> AsyncWorld:
        handler = launcher.watchdog(fprocess=f"{PYTHON} {FIXTURES / 'flaky.py'}", **watchdog_env)
        url = f"http://127.0.0.1:{handler.port}"
        config = tmp_path / "gateway.yml"
        config.write_text(
            "functions:\n"
            f"  flaky:\n    url: {url}\n" + textwrap.indent(textwrap.dedent(functions), "    ")
        )
        queue_path = tmp_path / "queue.db"
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        extra = (
            "--config", str(config), "--callback-secret", SECRET, *FAST_RETRIES, *backend, *args
        )  # fmt: skip
        gateway = launcher.gateway("--queue-path", str(queue_path), *extra)
        return AsyncWorld(launcher, gateway, url, queue_path, state_dir, extra)

    return start


@pytest.fixture
def receiver_started(receiver: Callable[..., Receiver]) -> Iterator[Receiver]:
    yield receiver()


def test_202_comes_before_the_call_runs_and_the_callback_carries_every_header(
    world: Callable[..., AsyncWorld], receiver_started: Receiver
) -> None:
    w = world()
    runs = w.state_dir / "slow.runs"
    accepted_at = time.time()
    reply = w.post(
        f"/async-function/flaky/sub/path?{w.flaky('slow', sleep=1)}",
        b"payload",
        X_Callback_Url=receiver_started.url + "/hook",
        Content_Type="text/plain",
    )
    assert reply.status == 202, reply.text
    assert not runs.exists()  # the handler is still sleeping (or not yet started)
    call_id = reply.headers["X-Call-Id"]
    body = _json(reply)
    assert body == {
        "callId": call_id,
        "status": "queued",
        "statusUrl": f"/system/activations/{call_id}",
    }
    assert reply.headers["Location"] == body["statusUrl"]
    assert w.record(call_id)["status"] in ("queued", "running")

    (callback,) = receiver_started.wait_for(1)
    assert callback.path == "/hook"
    assert callback.body == b"ok after 1\n"
    headers = callback.headers
    assert headers["X-Call-Id"] == call_id
    assert headers["X-Function-Name"] == "flaky.openfaas-fn"
    assert headers["X-Function-Status"] == "200"
    assert float(headers["X-Duration-Seconds"]) >= 1.0
    assert int(headers["X-Start-Time"]) / 1e9 >= accepted_at - 1
    assert headers["Content-Type"] == "text/plain"
    assert verify_signature(SECRET.encode(), headers["X-Callback-Signature"], callback.body)

    record = w.wait_for_status(call_id, "succeeded")
    assert record["attempts"] == 1
    assert record["request"] == {
        "method": "POST",
        "path": "/sub/path",
        "query": w.flaky("slow", sleep=1),
    }
    assert record["response"]["body"] == "ok after 1\n"
    assert w.wait_for_delivery(call_id)["callback"]["attempts"] == 1
    result = w.gateway.request("GET", f"/system/activations/{call_id}/result")
    assert (result.status, result.body) == (200, b"ok after 1\n")
    assert result.headers["X-Call-Id"] == call_id


def test_a_call_failing_twice_is_retried_until_it_succeeds(
    world: Callable[..., AsyncWorld], receiver_started: Receiver
) -> None:
    w = world()
    reply = w.post(
        f"/async-function/flaky?{w.flaky('twice', fail=2)}",
        X_Callback_Url=receiver_started.url,
    )
    call_id = reply.headers["X-Call-Id"]
    record = w.wait_for_status(call_id, "succeeded")
    assert record["attempts"] == 3
    assert [a["statusCode"] for a in record["attemptLog"]] == [500, 500, 200]
    assert all(a["error"]["kind"] == "function" for a in record["attemptLog"][:2])
    callbacks = receiver_started.wait_for(1)
    assert callbacks[0].headers["X-Function-Status"] == "200"
    assert callbacks[0].headers["X-Call-Attempts"] == "3"


def test_a_call_fails_for_good_after_the_functions_last_attempt(
    world: Callable[..., AsyncWorld], receiver_started: Receiver
) -> None:
    w = world(functions="max_attempts: 2\n")
    reply = w.post(
        f"/async-function/flaky?{w.flaky('always', fail=100)}",
        X_Callback_Url=receiver_started.url,
    )
    call_id = reply.headers["X-Call-Id"]
    record = w.wait_for_status(call_id, "failed")
    assert record["attempts"] == 2
    assert record["error"]["kind"] == "function"
    assert "gave up after 2 of 2 attempts" in record["error"]["message"]
    (callback,) = receiver_started.wait_for(1)
    assert callback.headers["X-Function-Status"] == "500"
    assert callback.headers["X-Call-Status"] == "failed"
    assert (w.state_dir / "always").read_text().count("run") == 2


def test_the_delay_is_honoured_and_checked(world: Callable[..., AsyncWorld]) -> None:
    w = world()
    for bad in ("3601", "-1", "soon"):
        reply = w.post(f"/async-function/flaky?{w.flaky('bad')}", X_Async_Delay=bad)
        assert reply.status == 400, bad
        assert "X-Async-Delay" in reply.text
    reply = w.post(f"/async-function/flaky?{w.flaky('later')}", X_Async_Delay="1.5")
    assert reply.status == 202
    record = w.wait_for_status(reply.headers["X-Call-Id"], "succeeded")
    started = time.mktime(time.strptime(record["startedAt"][:19], "%Y-%m-%dT%H:%M:%S"))
    created = time.mktime(time.strptime(record["createdAt"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert started - created >= 1  # whole seconds of two stamps 1.5 s apart
    listed = _json(w.gateway.request("GET", "/system/activations"))["items"]
    assert [item["callId"] for item in listed] == [reply.headers["X-Call-Id"]]


def test_an_idempotent_resubmission_returns_the_first_call(
    world: Callable[..., AsyncWorld],
) -> None:
    w = world()
    path = f"/async-function/flaky?{w.flaky('once')}"
    first = w.post(path, Idempotency_Key="order-42")
    second = w.post(path, Idempotency_Key="order-42")
    other = w.post(path, Idempotency_Key="order-43")
    assert first.status == second.status == other.status == 202
    assert second.headers["X-Call-Id"] == first.headers["X-Call-Id"]
    assert other.headers["X-Call-Id"] != first.headers["X-Call-Id"]
    for reply in (first, other):
        w.wait_for_status(reply.headers["X-Call-Id"], "succeeded")
    assert (w.state_dir / "once").read_text().count("run") == 2


def test_cancellation_of_a_call_that_has_not_started(
    world: Callable[..., AsyncWorld], receiver_started: Receiver
) -> None:
    w = world()
    reply = w.post(
        f"/async-function/flaky?{w.flaky('never')}",
        X_Async_Delay="60",
        X_Callback_Url=receiver_started.url,
    )
    call_id = reply.headers["X-Call-Id"]
    cancelled = w.gateway.request("DELETE", f"/system/activations/{call_id}")
    assert cancelled.status == 200
    assert _json(cancelled)["status"] == "cancelled"
    again = w.gateway.request("DELETE", f"/system/activations/{call_id}")
    assert again.status == 409
    assert _json(again)["error"] == "call_finished"
    assert w.gateway.request("DELETE", "/system/activations/no-such-call").status == 404
    # The OpenFaaS Pro form of the same operation.
    second = w.post(f"/async-function/flaky?{w.flaky('never')}", X_Async_Delay="60")
    openfaas_form = w.gateway.request("DELETE", f"/async-function/{second.headers['X-Call-Id']}")
    assert openfaas_form.status == 200
    assert w.record(call_id)["status"] == "cancelled"
    assert not (w.state_dir / "never").exists()
    time.sleep(0.3)
    assert receiver_started.requests == []


def test_records_are_purged_after_the_retention(world: Callable[..., AsyncWorld]) -> None:
    w = world("--activation-retention", "1s")
    call_id = w.post(f"/async-function/flaky?{w.flaky('short')}").headers["X-Call-Id"]
    w.wait_for_status(call_id, "succeeded")
    deadline = time.monotonic() + 10
    while (reply := w.gateway.request("GET", f"/system/activations/{call_id}")).status == 200:
        assert time.monotonic() < deadline, "record never purged"
        time.sleep(0.1)
    assert reply.status == 404
    body = _json(reply)
    assert body["error"] == "not_found"
    assert "activation_retention" in body["message"]


def test_refused_requests_queue_nothing(world: Callable[..., AsyncWorld]) -> None:
    w = world("--max-async-body", "1KiB", "--max-queue-depth", "1")
    assert w.post("/async-function/nope").status == 404
    assert w.post("/async-function/Bad_Name").status == 400
    assert w.gateway.request("GET", "/async-function/flaky").status == 405
    too_big = w.post(f"/async-function/flaky?{w.flaky('x')}", b"x" * 1025)
    assert too_big.status == 413
    bad_callback = w.post("/async-function/flaky", X_Callback_Url="ftp://127.0.0.1/x")
    assert bad_callback.status == 400
    first = w.post(f"/async-function/flaky?{w.flaky('x')}", X_Async_Delay="60")
    assert first.status == 202
    full = w.post(f"/async-function/flaky?{w.flaky('x')}")
    assert full.status == 429
    assert full.headers["Retry-After"] == "1"
    listed = _json(w.gateway.request("GET", "/system/activations"))["items"]
    assert [item["callId"] for item in listed] == [first.headers["X-Call-Id"]]


def test_activation_listing_filters_and_pages(world: Callable[..., AsyncWorld]) -> None:
    w = world()
    ids = [
        w.post(f"/async-function/flaky?{w.flaky(f'p{i}')}").headers["X-Call-Id"] for i in range(3)
    ]
    for call_id in ids:
        w.wait_for_status(call_id, "succeeded")
    page = _json(w.gateway.request("GET", "/system/activations?limit=2&function=flaky"))
    assert [item["callId"] for item in page["items"]] == ids[::-1][:2]
    rest = _json(
        w.gateway.request("GET", f"/system/activations?limit=2&cursor={page['nextCursor']}")
    )
    assert [item["callId"] for item in rest["items"]] == ids[:1]
    assert _json(w.gateway.request("GET", "/system/activations?status=failed"))["items"] == []
    assert w.gateway.request("GET", "/system/activations?status=bogus").status == 400
    assert w.gateway.request("GET", "/system/activations?limit=0").status == 400
    bad_cursor = w.gateway.request("GET", "/system/activations?cursor=abc")
    assert bad_cursor.status == 400
    assert "cursor" in _json(bad_cursor)["message"]


@pytest.mark.parametrize("moment", ["after_202", "while_running"])
def test_no_accepted_call_is_lost_when_the_gateway_is_killed(
    world: Callable[..., AsyncWorld], receiver_started: Receiver, moment: str
) -> None:
    w = world()
    started = w.state_dir / "started"
    sleep = 0 if moment == "after_202" else 1
    ids = []
    for i in range(8):
        query = w.flaky(f"k{i}", sleep=sleep, started=started)
        reply = w.post(f"/async-function/flaky?{query}", X_Callback_Url=receiver_started.url)
        assert reply.status == 202
        ids.append(reply.headers["X-Call-Id"])
    if moment == "while_running":
        deadline = time.monotonic() + 10
        while not started.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    w.gateway.terminate(signal.SIGKILL)
    w.restart()
    receiver_started.wait_for_calls(ids, timeout=30)
    for call_id in ids:
        record = w.wait_for_delivery(call_id)
        assert record["status"] == "succeeded"
        assert record["response"]["body"].startswith("ok after")


def test_a_slow_sync_call_with_prefer_wait_turns_asynchronous(
    world: Callable[..., AsyncWorld], receiver_started: Receiver
) -> None:
    w = world()
    fast = w.post(f"/function/flaky?{w.flaky('fast')}", b"in", Prefer="wait=10")
    assert (fast.status, fast.body) == (200, b"ok after 1\n")
    assert fast.headers["X-Call-Id"]

    slow = w.post(
        f"/function/flaky/x?{w.flaky('slow', sleep=2)}",
        b"in",
        Prefer="respond-async, wait=1",
        X_Callback_Url=receiver_started.url,
    )
    assert slow.status == 202, slow.text
    call_id = slow.headers["X-Call-Id"]
    # Answered before the function ended: the record it names is still running (an event,
    # where a wall-clock bound flaked on a loaded machine).
    assert _json(slow)["status"] == "running"
    record = w.wait_for_status(call_id, "succeeded")
    assert record["attempts"] == 1
    assert record["response"]["body"] == "ok after 1\n"
    assert (w.state_dir / "slow").read_text().count("run") == 1
    (callback,) = receiver_started.wait_for(1)
    assert callback.headers["X-Call-Id"] == call_id


def test_convert_after_per_function(world: Callable[..., AsyncWorld]) -> None:
    w = world(functions="convert_after: 500ms\n")
    reply = w.post(f"/function/flaky?{w.flaky('conv', sleep=1.5)}")
    assert reply.status == 202
    w.wait_for_status(reply.headers["X-Call-Id"], "succeeded")


def _cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [PYTHON, "-m", "watchdog", *args], input=stdin, capture_output=True, env=env, timeout=60
    )


def test_the_invoke_and_activations_commands(world: Callable[..., AsyncWorld]) -> None:
    w = world()
    gateway = ("--gateway", w.gateway.url)
    state = str(w.state_dir / "cli")
    sync = _cli("invoke", "flaky", *gateway, "--query", f"state={state}", stdin=b"hi")
    assert (sync.returncode, sync.stdout) == (0, b"ok after 1\n")
    failed = _cli("invoke", "flaky", *gateway, "--query", f"state={state}", "--query", "fail=9")
    assert failed.returncode == 1
    assert b"answered 500" in failed.stderr

    queued = _cli("invoke", "flaky.openfaas-fn", *gateway, "--async", "--query", f"state={state}")
    assert queued.returncode == 0, queued.stderr
    call_id = queued.stdout.decode().strip()
    w.wait_for_status(call_id, "succeeded")
    got = _cli("activations", *gateway, "get", call_id)
    assert json.loads(got.stdout)["callId"] == call_id
    assert _cli("activations", *gateway, "result", call_id).stdout == b"ok after 3\n"
    assert _cli("activations", *gateway, "result", "--last").stdout == b"ok after 3\n"
    listing = _cli("activations", *gateway, "list").stdout.decode()
    assert listing.splitlines()[0].split()[:3] == ["CALL", "ID", "FUNCTION"]
    assert call_id in listing
    missing = _cli("activations", *gateway, "get", "no-such-call")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["error"] == "not_found"
    down = _cli("invoke", "flaky", "--gateway", "http://127.0.0.1:1")
    assert down.returncode == 1
    assert b"cannot reach the gateway" in down.stderr


@pytest.mark.parametrize("world", ["sqlite"], indirect=True)  # SQLite's own lock
def test_a_second_gateway_on_the_same_queue_file_stops_with_a_clear_error(
    world: Callable[..., AsyncWorld],
) -> None:
    w = world()
    second = w.launcher.gateway("--queue-path", str(w.queue_path), wait=False)
    assert second.proc.wait(15) == 1
    assert "cannot start the gateway" in second.logs()
    assert "Traceback" not in second.logs()
    assert w.gateway.request("GET", "/healthz").status == 200


def test_a_callers_call_id_is_kept_when_safe_and_refused_otherwise(
    world: Callable[..., AsyncWorld],
) -> None:
    w = world()
    mine = w.post(f"/async-function/flaky?{w.flaky('id')}", X_Call_Id="order-42.v1")
    assert mine.status == 202
    assert mine.headers["X-Call-Id"] == "order-42.v1"
    w.wait_for_status("order-42.v1", "succeeded")
    assert w.post("/async-function/flaky", X_Call_Id="order-42.v1").status == 409
    for bad in ("a/b", "a?b", "x" * 129, "-lead"):
        reply = w.post("/async-function/flaky", X_Call_Id=bad)
        assert reply.status == 400, bad
        assert "X-Call-Id" in reply.text


def test_the_watchdogs_own_refusals_are_platform_failures_and_retried(
    world: Callable[..., AsyncWorld],
) -> None:
    # 429 is not among the retried statuses here, but the watchdog's max_inflight refusal
    # (X-OpenFaaS-Internal) is a failure of the platform, not of the function: retried.
    w = world("--retry-codes", "500", max_inflight="1")
    ids = [
        w.post(f"/async-function/flaky?{w.flaky(name, sleep=0.5)}").headers["X-Call-Id"]
        for name in ("a", "b")
    ]
    records = [w.wait_for_status(call_id, "succeeded") for call_id in ids]
    refused = [a for r in records for a in r["attemptLog"] if a["statusCode"] == 429]
    assert refused, records
    assert {a["error"]["kind"] for a in refused} == {"platform"}


def test_a_response_over_the_result_limit_is_cut_and_flagged(
    world: Callable[..., AsyncWorld],
) -> None:
    w = world("--max-result-body", "5")
    call_id = w.post(f"/async-function/flaky?{w.flaky('big')}").headers["X-Call-Id"]
    record = w.wait_for_status(call_id, "succeeded")
    assert record["response"]["truncated"] is True
    assert record["response"]["body"] == "ok af"
    result = w.gateway.request("GET", f"/system/activations/{call_id}/result")
    assert (result.status, result.body) == (200, b"ok af")
    assert result.headers["X-Result-Truncated"] == "true"


def test_the_gateway_wide_async_concurrency_limit(world: Callable[..., AsyncWorld]) -> None:
    w = world("--async-concurrency", "1")
    ids = [
        w.post(f"/async-function/flaky?{w.flaky('serial', sleep=0.3)}").headers["X-Call-Id"]
        for _ in range(3)
    ]
    for call_id in ids:
        w.wait_for_status(call_id, "succeeded")
    runs = sorted(
        tuple(map(float, line.split()))
        for line in (w.state_dir / "serial.runs").read_text().splitlines()
    )
    assert len(runs) == 3
    for (_, end), (start, _) in itertools.pairwise(runs):
        assert start >= end - 0.05, runs  # one at a time (the handler's own clock)


def test_the_gateway_wide_convert_after(world: Callable[..., AsyncWorld]) -> None:
    w = world("--convert-after", "300ms")
    fast = w.post(f"/function/flaky?{w.flaky('f')}")
    assert (fast.status, fast.body) == (200, b"ok after 1\n")
    slow = w.post(f"/function/flaky?{w.flaky('s', sleep=1.5)}")
    assert slow.status == 202
    assert w.wait_for_status(slow.headers["X-Call-Id"], "succeeded")["attempts"] == 1
