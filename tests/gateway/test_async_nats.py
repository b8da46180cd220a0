"""Several gateways sharing one real ``nats-server -js``: asynchronous calls accepted by any of
them run once in the normal case, and a gateway killed mid-call loses its calls to the others
when the lease runs out; every callback arrives."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from async_helpers import Receiver
from conftest import FIXTURES, PYTHON, RunningWatchdog, free_port
from nats_server import NatsServer, start_nats_server

from watchdog.config import ConfigError
from watchdog.gateway.config import GatewayConfig

from .conftest import Launcher

pytest_plugins = ("async_fixtures",)


def _nats_args(server: NatsServer, prefix: str, *more: str) -> tuple[str, ...]:
    return ("--queue", "nats", "--nats-url", server.url, "--nats-prefix", prefix, *more)


def _functions(tmp_path: Path, launcher: Launcher) -> Path:
    handler = launcher.watchdog(fprocess=f"{PYTHON} {FIXTURES / 'flaky.py'}")
    config = tmp_path / "gateway.yml"
    config.write_text(f"functions:\n  flaky:\n    url: http://127.0.0.1:{handler.port}\n")
    return config


def _post(gateway: RunningWatchdog, query: str, callback: str) -> str:
    reply = gateway.request(
        "POST", f"/async-function/flaky?{query}", headers={"X-Callback-Url": callback}
    )
    assert reply.status == 202, reply.text
    return reply.headers["X-Call-Id"]


def _record(gateway: RunningWatchdog, call_id: str) -> dict[str, object]:
    reply = gateway.request("GET", f"/system/activations/{call_id}")
    assert reply.status == 200, reply.text
    return dict(json.loads(reply.body))


def _wait_delivered(
    gateway: RunningWatchdog, call_id: str, timeout: float = 30
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        record = _record(gateway, call_id)
        callback = record["callback"]
        assert isinstance(callback, dict)
        if callback["status"] == "delivered":
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.05)


def test_two_gateways_share_the_calls_and_each_runs_once(
    launcher: Launcher, nats_server: NatsServer, tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    rec: Receiver = receiver()
    functions = _functions(tmp_path, launcher)
    args = _nats_args(nats_server, f"g{uuid.uuid4().hex[:10]}", "--config", str(functions))
    gateways = [launcher.gateway(*args), launcher.gateway(*args)]
    ids = []
    for i in range(12):
        state = tmp_path / f"call{i}"
        ids.append(_post(gateways[i % 2], f"state={state}&sleep=0.05", rec.url))
    rec.wait_for_calls(ids, timeout=30)
    for i, call_id in enumerate(ids):
        record = _wait_delivered(gateways[(i + 1) % 2], call_id)  # seen from the other one
        assert (record["status"], record["attempts"]) == ("succeeded", 1)
        assert (tmp_path / f"call{i}").read_text() == "run\n"  # ran exactly once
    assert sorted(r.headers["X-Call-Id"] for r in rec.requests) == sorted(ids)
    listed = json.loads(gateways[0].request("GET", "/system/activations?limit=100").body)
    assert [item["callId"] for item in listed["items"]] == ids[::-1]


def test_a_killed_gateways_calls_finish_on_the_other_after_the_lease(
    launcher: Launcher, nats_server: NatsServer, tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    rec: Receiver = receiver()
    functions = _functions(tmp_path, launcher)
    prefix = f"k{uuid.uuid4().hex[:10]}"
    args = _nats_args(nats_server, prefix, "--config", str(functions), "--lease", "1s")
    doomed = launcher.gateway(*args)
    started = tmp_path / "started"
    ids = [
        _post(doomed, f"state={tmp_path / f'call{i}'}&sleep=1.5&started={started}", rec.url)
        for i in range(4)
    ]
    deadline = time.monotonic() + 15
    while not started.exists() or len(started.read_text().splitlines()) < len(ids):
        assert time.monotonic() < deadline, "the calls never started"
        time.sleep(0.01)
    survivor = launcher.gateway(*args)
    doomed.terminate(signal.SIGKILL)
    rec.wait_for_calls(ids, timeout=30)
    for call_id in ids:
        record = _wait_delivered(survivor, call_id)
        assert (record["status"], record["attempts"]) == ("succeeded", 2)
        log = record["attemptLog"]
        assert isinstance(log, list) and "interrupted" in json.dumps(log[0])
    assert {r.headers["X-Call-Id"] for r in rec.requests} == set(ids)


def test_an_unreachable_nats_stops_the_gateway_with_one_line(
    launcher: Launcher, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    url = f"nats://127.0.0.1:{port}"
    gateway = launcher.gateway(
        *("--queue", "nats", "--nats-url", url, "--nats-start-timeout", "1500ms"), wait=False
    )
    assert gateway.proc.wait(30) == 1
    logs = gateway.logs()
    assert f"waiting for NATS at {url}" in logs  # said while it waited
    assert f"cannot start the gateway: cannot reach NATS at {url}" in logs
    assert "within nats_start_timeout=1.5s" in logs
    assert "Traceback" not in logs


def test_nats_settings_and_the_openfaas_variables() -> None:
    config = GatewayConfig.from_args(
        ["--queue", "nats", "--lease", "5s"],
        {"faas_nats_address": "nats", "faas_nats_port": "4223"},
    )
    assert (config.queue_backend, config.nats_url, config.async_lease) == (
        "nats",
        "nats://nats:4223",
        5.0,
    )
    assert GatewayConfig.from_args([], {}).nats_url == "nats://127.0.0.1:4222"
    flagged = GatewayConfig.from_args(
        ["--nats-url", "a:4222,nats://b:4222", "--nats-prefix", "team_1"],
        {"faas_nats_address": "ignored"},
    )
    assert (flagged.nats_url, flagged.nats_prefix) == ("nats://a:4222,nats://b:4222", "team_1")
    with pytest.raises(ConfigError) as refused:
        GatewayConfig.from_args(
            ["--nats-url", "http://x", "--nats-prefix", "a.b", "--lease", "0s"], {}
        )
    for bad in ("--nats-url='http://x'", "--nats-prefix='a.b'", "--lease='0s'"):
        assert bad in str(refused.value)
    with pytest.raises(ConfigError, match="faas_nats_port='99999' is invalid"):
        GatewayConfig.from_args([], {"faas_nats_address": "nats", "faas_nats_port": "99999"})


def test_the_gateway_rides_out_a_nats_restart(
    launcher: Launcher, tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    rec = receiver()
    server = start_nats_server(tmp_path / "own-nats")
    try:
        functions = _functions(tmp_path, launcher)
        gateway = launcher.gateway(*_nats_args(server, "r", "--config", str(functions)))
        before = _post(gateway, f"state={tmp_path / 'before'}", rec.url)
        _wait_delivered(gateway, before)
        server.stop()
        down = gateway.request(
            "POST", f"/async-function/flaky?state={tmp_path / 'down'}", timeout=30
        )
        assert down.status == 503 and down.headers["Retry-After"], down.text
        server.restart()
        deadline = time.monotonic() + 20
        while True:  # the client reconnects on its own
            reply = gateway.request("POST", f"/async-function/flaky?state={tmp_path / 'after'}")
            if reply.status == 202:
                break
            assert reply.status == 503 and time.monotonic() < deadline, reply.text
            time.sleep(0.2)
        after = reply.headers["X-Call-Id"]
        record = _wait_delivered(gateway, before)  # kept across the restart
        assert record["status"] == "succeeded"
        deadline = time.monotonic() + 20
        while _record(gateway, after)["status"] != "succeeded":
            assert time.monotonic() < deadline, _record(gateway, after)
            time.sleep(0.05)
    finally:
        server.stop()
