"""kill -9 durability of asynchronous calls, for both queue backends.

A real gateway (``python -m watchdog gateway``) takes N asynchronous calls from a few
concurrent clients and is killed with SIGKILL twice along the way (after a third and after two
thirds of the submissions), each time restarted on the same port over the same queue (the same
SQLite file, or the same nats-server and prefix). The function is a real watchdog whose handler
appends the ``X-Call-Id`` it was called with to a file, so the test knows what ran; a real
receiver on loopback takes the callbacks. The README promises at-least-once: every call
answered ``202`` runs and reaches its callback (more than once is allowed), and nothing runs
that the gateway did not accept.

The client chooses every call id (``X-Call-Id``), so a submission the kill cut off (no answer,
or an answer other than 202) still has an id: its outcome is read from the gateway afterwards
(``GET /system/activations/ID``). A record found means the call was written and must run like
any accepted one; no record means it must never run.
"""

from __future__ import annotations

import http.client
import os
import shlex
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from async_helpers import Receiver
from conftest import PYTHON, ROOT, RunningWatchdog, free_port
from nats_server import NatsServer

pytest_plugins = ("async_fixtures",)
# Skipped with -m "not soak"; the bound keeps each backend's run within the suite's budget.
pytestmark = [pytest.mark.soak, pytest.mark.timeout(40)]

CALLS = 60
SUBMITTERS = 4
KILL_AFTER = (CALLS // 3, 2 * CALLS // 3)  # answered submissions before each kill
SETTLE = 25.0  # seconds for every written call to run and call back after the last submission


@dataclass
class Gateway:
    """One gateway's command line, started again on the same port after each kill."""

    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.starts += 1
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 15) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.logs()}")
            try:
                if request(self.port, "GET", "/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"gateway did not become healthy:\n{self.logs()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Tally:
    """What the clients learned of each submission, by call id."""

    accepted: list[str] = field(default_factory=list)  # answered 202
    unknown: dict[str, str] = field(default_factory=dict)  # id -> what came instead of a 202
    cond: threading.Condition = field(default_factory=threading.Condition)

    def answered(self) -> int:
        return len(self.accepted) + len(self.unknown)

    def note(self, call_id: str, outcome: str) -> None:
        with self.cond:
            if outcome == "202":
                self.accepted.append(call_id)
            else:
                self.unknown[call_id] = outcome
            self.cond.notify_all()

    def wait_answered(self, count: int, timeout: float = 15) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.answered() >= count, timeout):
                raise AssertionError(f"only {self.answered()} of {count} submissions answered")


def _submit(gateway: Gateway, call_id: str, callback_url: str) -> str:
    headers = {"X-Call-Id": call_id, "X-Callback-Url": callback_url}
    try:
        status, body = request(gateway.port, "POST", "/async-function/ran", headers)
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    return "202" if status == 202 else f"{status} {body[:200]!r}"


def _submitters(
    gateway: Gateway, ids: list[str], callback_url: str, up: threading.Event, tally: Tally
) -> list[threading.Thread]:
    """Threads that submit ``ids`` between them, each waiting while the gateway is down."""
    pending = list(reversed(ids))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not pending:
                    return
                call_id = pending.pop()
            up.wait(30)
            tally.note(call_id, _submit(gateway, call_id, callback_url))

    return [threading.Thread(target=work, daemon=True) for _ in range(SUBMITTERS)]


def _ran(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _record_exists(gateway: Gateway, call_id: str) -> bool:
    status, body = request(gateway.port, "GET", f"/system/activations/{call_id}")
    assert status in (200, 404), (call_id, status, body)
    return status == 200


def _records(gateway: Gateway, call_ids: set[str], shown: int = 5) -> str:
    """The records of some of ``call_ids`` (status, attempts and their log): what a failure
    needs to say where those calls stopped."""
    first = sorted(call_ids)[:shown]
    records = [request(gateway.port, "GET", f"/system/activations/{i}")[1] for i in first]
    return f"{sorted(call_ids)}, the first records: " + "\n".join(
        record.decode(errors="replace")[:1500] for record in records
    )


def _wait_settled(
    receiver: Receiver, ran_file: Path, written: set[str], timeout: float
) -> tuple[set[str], set[str]]:
    """The ids that ran and the ids called back, once every written call did both (or the
    deadline passed: the assertions then say what is missing)."""
    deadline = time.monotonic() + timeout
    while True:
        ran = set(_ran(ran_file))
        called_back = {r.headers["X-Call-Id"] for r in receiver.requests}
        if (written <= ran and written <= called_back) or time.monotonic() > deadline:
            return ran, called_back
        time.sleep(0.05)


@dataclass
class Kill9World:
    gateway: Gateway
    ran_file: Path
    receiver: Receiver
    prefix: str
    queue_log: Path | None = None  # the nats-server's log, for a failure's report

    def queue_log_tail(self, lines: int = 40) -> str:
        if self.queue_log is None:
            return ""
        tail = self.queue_log.read_text(errors="replace").splitlines()[-lines:]
        return "\nnats-server's log, last lines:\n" + "\n".join(tail)


@pytest.fixture(params=["sqlite", "nats"])
def kill9_world(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    start_watchdog: Callable[..., RunningWatchdog],
    receiver: Callable[..., Receiver],
) -> Iterator[Kill9World]:
    """A gateway (not started yet) in front of a watchdog that records the call ids it runs,
    queueing in a SQLite file or in the session's nats-server under a prefix of its own."""
    ran_file = tmp_path / "ran.txt"
    # Appends of one short line are atomic (O_APPEND); the sleep keeps calls running when
    # the gateway is killed, so interrupted attempts happen too.
    script = f'printf "%s\\n" "$Http_X_Call_Id" >> {shlex.quote(str(ran_file))}; sleep 0.1; echo ok'
    handler = start_watchdog(fprocess=shlex.join(["sh", "-c", script]))
    prefix = f"k{uuid.uuid4().hex[:12]}"
    port = free_port()
    argv = [
        PYTHON, "-m", "watchdog", "gateway", "--port", str(port),
        "--function", f"ran=http://127.0.0.1:{handler.port}",
        "--initial-backoff", "50ms", "--max-backoff", "200ms",
    ]  # fmt: skip
    queue_log = None
    if request.param == "sqlite":
        argv += ["--queue-path", str(tmp_path / "queue.db")]  # the same file at every start
    else:
        server: NatsServer = request.getfixturevalue("nats_server")
        queue_log = server.log_path
        argv += ["--queue", "nats", "--nats-url", server.url, "--nats-prefix", prefix]
        argv += ["--lease", "2s"]  # a killed gateway's calls are taken over after this
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "XDG_STATE_HOME": str(tmp_path),
    }
    gateway = Gateway(argv, env, port, tmp_path / "gateway.log")
    try:
        yield Kill9World(gateway, ran_file, receiver(), prefix, queue_log)
    finally:
        gateway.close()


def test_calls_survive_two_kill9_of_the_gateway(kill9_world: Kill9World) -> None:
    w = kill9_world
    gateway = w.gateway
    gateway.start()
    ids = [f"{w.prefix}-{i}" for i in range(CALLS)]
    tally = Tally()
    up = threading.Event()
    up.set()
    threads = _submitters(gateway, ids, w.receiver.url, up, tally)
    for thread in threads:
        thread.start()
    try:
        for count in KILL_AFTER:
            tally.wait_answered(count)
            up.clear()  # no new submission starts while it is down; those in flight are cut
            gateway.kill()
            gateway.start()
            up.set()
        tally.wait_answered(CALLS)
    finally:
        up.set()
        for thread in threads:
            thread.join(30)
    assert gateway.starts == 3
    cut_written = {i for i in tally.unknown if _record_exists(gateway, i)}
    accepted = set(tally.accepted)
    written = accepted | cut_written
    ran, called_back = _wait_settled(w.receiver, w.ran_file, written, SETTLE)
    report = (
        f"{len(accepted)} accepted, cut off: {tally.unknown} ({len(cut_written)} written)\n"
        f"{gateway.logs()}{w.queue_log_tail()}"
    )
    # A submitter starts no request while the gateway is down, so each kill cuts off at most
    # one submission per submitter; any other refusal is the gateway failing, not the kill.
    assert len(tally.unknown) <= len(KILL_AFTER) * SUBMITTERS, report
    assert all(_record_exists(gateway, i) for i in accepted), report
    never_ran = written - ran
    assert not never_ran, f"written, never ran: {_records(gateway, never_ran)}; {report}"
    assert not written - called_back, f"no callback: {sorted(written - called_back)}; {report}"
    assert not ran - written, f"ran, never accepted: {sorted(ran - written)}; {report}"
    assert not called_back - written, f"called back, not accepted: {sorted(called_back - written)}"
