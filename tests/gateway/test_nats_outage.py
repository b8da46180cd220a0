"""A NATS outage with a real ``nats-server -js`` killed with SIGKILL while submissions run.

While NATS is down every route that needs the queue answers ``503`` with ``Retry-After`` and
a JSON reason at once (the clients here give up after 3 s; the queue used to wait 5 s per
request). Nothing is lost or run twice: every call answered ``202`` (before the kill, or
after the restart on the same port and store) runs exactly once, and a submission answered
``503`` (its outcome unknown) either never ran or ran exactly once under the id its ``503``
named; resubmitted with the same ``Idempotency-Key`` it finds that call instead of running
again.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from async_helpers import Receiver
from conftest import Reply, RunningWatchdog
from nats_server import NatsServer, start_nats_server

from .conftest import Launcher

pytest_plugins = ("async_fixtures",)
pytestmark = pytest.mark.soak  # a fault test: kills nats-server; `-m 'not soak'` skips it

CLIENT_TIMEOUT = 3.0
"""Longer than the 1 s the routes must answer in, shorter than the 5 s they used to take."""
SUBMITTERS = 4
BEFORE_KILL = 20


@dataclass(frozen=True)
class Outcome:
    key: str
    status: int
    call_id: str


def _submit(gateway: RunningWatchdog, key: str) -> Outcome:
    """POST one call (its body is its key); a 202 or a well-formed 503, nothing else."""
    reply = gateway.request(
        "POST",
        "/async-function/fn",
        body=key.encode(),
        headers={"Idempotency-Key": key},
        timeout=CLIENT_TIMEOUT,
    )
    assert reply.status in (202, 503), reply.text
    if reply.status == 503:
        _assert_unavailable(reply)
    call_id = reply.headers["X-Call-Id"]
    assert call_id and json.loads(reply.body)["callId"] == call_id, reply.text
    return Outcome(key, reply.status, call_id)


def _assert_unavailable(reply: Reply) -> None:
    assert reply.status == 503, reply.text
    assert reply.headers["Retry-After"], reply.headers
    assert reply.headers["Content-Type"].startswith("application/json"), reply.headers
    assert json.loads(reply.body)["error"] == "queue_unavailable", reply.text


def _submit_until_killed(
    gateway: RunningWatchdog, worker: int, killed: threading.Event, outcomes: list[Outcome]
) -> None:
    """Submit one call after another; stop at the first refusal after the kill."""
    for n in range(2000):
        outcome = _submit(gateway, f"w{worker}-{n}")
        outcomes.append(outcome)
        if killed.is_set() and outcome.status != 202:
            return
    raise AssertionError("the kill was never seen")


def _resubmit(gateway: RunningWatchdog, key: str, deadline: float) -> Outcome:
    """Submit ``key`` again until it is accepted (NATS is back; an idempotency claim whose
    call was never stored answers 503 until its grace is over)."""
    while True:
        outcome = _submit(gateway, key)
        if outcome.status == 202:
            return outcome
        assert time.monotonic() < deadline, f"{key} still refused"
        time.sleep(0.2)


def _gateway(
    launcher: Launcher, tmp_path: Path, server: NatsServer, function: Receiver
) -> RunningWatchdog:
    config = tmp_path / "gateway.yml"
    config.write_text(f"functions:\n  fn:\n    url: {function.url}\n")
    return launcher.gateway(
        *("--queue", "nats", "--nats-url", server.url, "--nats-prefix", "outage"),
        *("--config", str(config), "--lease", "8s"),
    )


def _assert_routes_unavailable(gateway: RunningWatchdog, call_id: str) -> None:
    """Every route that reads or changes the queue answers 503 (submitting is checked by
    the caller)."""
    for method, path in (
        ("GET", "/system/activations"),
        ("GET", f"/system/activations/{call_id}"),
        ("GET", f"/system/activations/{call_id}/result"),
        ("DELETE", f"/system/activations/{call_id}"),
        ("DELETE", f"/async-function/{call_id}"),
        ("GET", "/system/stats"),
    ):
        _assert_unavailable(gateway.request(method, path, timeout=CLIENT_TIMEOUT))


def _wait_succeeded(gateway: RunningWatchdog, ids: set[str], deadline: float) -> None:
    """Until exactly ``ids`` are stored, all succeeded (so none runs again)."""
    while True:
        records = _records(gateway)
        if set(records) == ids and all(r["status"] == "succeeded" for r in records.values()):
            return
        assert set(records) <= ids, set(records) - ids  # a 503's call under no key's id
        assert time.monotonic() < deadline, {
            i: r["status"] for i, r in records.items() if r["status"] != "succeeded"
        }
        time.sleep(0.05)


def _records(gateway: RunningWatchdog) -> dict[str, dict[str, object]]:
    reply = gateway.request("GET", "/system/activations?limit=1000")
    assert reply.status == 200, reply.text
    return {item["callId"]: item for item in json.loads(reply.body)["items"]}


@pytest.mark.timeout(40)
def test_a_killed_nats_server_gets_503_at_once_and_loses_or_repeats_nothing(
    launcher: Launcher, tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    deadline = time.monotonic() + 35
    function = receiver()  # the function itself: records every run
    server = start_nats_server(tmp_path / "nats")
    try:
        gateway = _gateway(launcher, tmp_path, server, function)
        outcomes: list[Outcome] = []
        killed = threading.Event()
        with ThreadPoolExecutor(SUBMITTERS) as pool:
            submitters = [
                pool.submit(_submit_until_killed, gateway, worker, killed, outcomes)
                for worker in range(SUBMITTERS)
            ]
            while sum(o.status == 202 for o in outcomes) < BEFORE_KILL:
                assert time.monotonic() < deadline and not any(s.done() for s in submitters)
                time.sleep(0.005)
            server.proc.kill()  # SIGKILL, while the submitters run
            server.proc.wait(10)
            killed.set()
            for submitter in submitters:
                submitter.result(timeout=CLIENT_TIMEOUT * 3)

        # NATS is down: every route that needs the queue answers 503 at once.
        outcomes.append(_submit(gateway, "down-0"))
        assert outcomes[-1].status == 503
        _assert_routes_unavailable(gateway, next(o.call_id for o in outcomes if o.status == 202))

        server.restart()  # same port, same store
        n = 0
        while True:  # accepted again once the gateway's probe sees JetStream answer
            outcomes.append(_submit(gateway, f"after-{n}"))
            n += 1
            if outcomes[-1].status == 202:
                break
            assert time.monotonic() < deadline, "never accepted again"
            time.sleep(0.05)
        outcomes += [_submit(gateway, f"after-{n + i}") for i in range(10)]
        assert all(o.status == 202 for o in outcomes[-10:])

        first = {o.key: o for o in outcomes}
        assert len(first) == len(outcomes)  # one submission per key so far
        refused = [o for o in outcomes if o.status == 503]
        final = {o.key: o.call_id for o in outcomes if o.status == 202}
        for o in refused:
            final[o.key] = _resubmit(gateway, o.key, deadline).call_id
        ids = set(final.values())
        assert len(ids) == len(final)  # one call per key

        # Every accepted call runs and succeeds; nothing else is stored.
        function.wait_for_calls(sorted(ids), timeout=max(1.0, deadline - time.monotonic()))
        _wait_succeeded(gateway, ids, deadline)
        runs = Counter(r.headers["X-Call-Id"] for r in function.requests)
        assert runs == Counter(ids), "a call ran twice, or one ran that was not accepted"
        key_of = {call_id: key for key, call_id in final.items()}
        assert all(key_of[r.headers["X-Call-Id"]] == r.body.decode() for r in function.requests)
        # A 503's id that the retry did not find was never stored, so never runs.
        for o in refused:
            if final[o.key] != o.call_id:
                reply = gateway.request("GET", f"/system/activations/{o.call_id}")
                assert reply.status == 404, reply.text
        assert gateway.proc.poll() is None
        assert "Traceback" not in gateway.logs(), gateway.logs()
    finally:
        server.stop()


@pytest.mark.timeout(40)
def test_a_frozen_nats_server_is_found_out_by_one_timeout_and_no_202_is_a_guess(
    launcher: Launcher, tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    """SIGSTOP: the connection stays up, NATS just stops answering. The first submission
    waits one NATS deadline and answers 503 (its idempotency claim reaches NATS when it
    wakes, its call never does); the routes after it answer at once. Resubmitted, the key
    answers 503 naming the first call while that claim is young, never a 202 for a call
    that is not stored, then runs once."""
    deadline = time.monotonic() + 35
    function = receiver()
    server = start_nats_server(tmp_path / "nats")
    try:
        gateway = _gateway(launcher, tmp_path, server, function)
        before = _submit(gateway, "before")
        assert before.status == 202
        function.wait_for_calls([before.call_id])
        server.freeze()
        try:
            frozen = _submit(gateway, "frozen")
            assert frozen.status == 503
            _assert_routes_unavailable(gateway, before.call_id)
        finally:
            server.thaw()
        again = _resubmit(gateway, "frozen", deadline)
        _wait_succeeded(gateway, {before.call_id, again.call_id}, deadline)
        runs = Counter(r.headers["X-Call-Id"] for r in function.requests)
        assert runs == Counter([before.call_id, again.call_id])
        if again.call_id != frozen.call_id:
            reply = gateway.request("GET", f"/system/activations/{frozen.call_id}")
            assert reply.status == 404, reply.text
        assert "Traceback" not in gateway.logs(), gateway.logs()
    finally:
        server.thaw()
        server.stop()
