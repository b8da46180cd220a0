"""max_inflight, read_timeout, exec_timeout (whole trees), and reaping of orphans."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import FIXTURES, PYTHON, RunningWatchdog, free_port, leftovers


def _wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _in_background(wd: RunningWatchdog, path: str) -> tuple[threading.Thread, list]:
    """Send a request from a thread; the list receives its Reply, or the exception it raised."""
    result: list = []

    def call() -> None:
        try:
            result.append(wd.request("GET", path))
        except Exception as exc:  # noqa: BLE001 - handed to the test to assert on
            result.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, result


def test_max_inflight_refuses_with_429_and_ready_says_so(start_watchdog) -> None:
    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'sleepy.py'}", max_inflight="1")
    thread, result = _in_background(wd, "/?seconds=1.5")
    _wait_for(lambda: "http_requests_in_flight 1.0" in wd.metrics(), what="one in flight")
    refused = wd.request("GET", "/?seconds=0")
    assert refused.status == 429
    assert refused.text == "Concurrent request limit exceeded. Max concurrent requests: 1\n"
    assert refused.headers["Content-Type"].startswith("text/plain")
    assert "X-Duration-Seconds" in refused.headers
    assert wd.request("GET", "/_/ready").status == 429
    assert wd.request("GET", "/_/health").status == 200
    thread.join(10)
    assert result[0].status == 200
    assert wd.request("GET", "/_/ready").status == 200
    assert 'fwatchdog_requests_rejected_total{reason="max_inflight"} 1.0' in wd.metrics()


def test_read_timeout_cuts_off_a_slow_body_with_408(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat", read_timeout="1s")
    with socket.create_connection(("127.0.0.1", wd.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part")
        started = time.monotonic()
        reply = sock.recv(65536).decode()
        elapsed = time.monotonic() - started
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "read_timeout of 1s" in reply
    assert elapsed < 8


def test_read_timeout_closes_a_connection_that_never_sends_headers(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat", read_timeout="1s")
    with socket.create_connection(("127.0.0.1", wd.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the watchdog
        assert time.monotonic() - started < 8


@pytest.mark.parametrize("mode", ["auto", "serializing", "streaming"])
def test_exec_timeout_kills_the_whole_tree(start_watchdog, tmp_path: Path, mode: str) -> None:
    pid_file = tmp_path / f"pids-{mode}"
    wd = start_watchdog(
        fprocess=f"{PYTHON} {FIXTURES / 'tree.py'}",
        exec_timeout="1500ms",
        PID_FILE=str(pid_file),
        mode=mode,
    )
    reply = wd.request("GET", "/")
    assert reply.status == 504
    assert reply.text == "Function exceeded its exec_timeout of 1.5s\n"
    pids = [int(p) for p in pid_file.read_text().split()]
    assert len(pids) == 3  # the handler, a grandchild in its group, one that left it

    def all_gone() -> bool:
        return not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            for pid in pids
        )

    _wait_for(all_gone, what="the handler's tree to be dead")
    assert 'fwatchdog_handlers_killed_total{reason="exec_timeout"} 1.0' in wd.metrics()


def test_handler_ignoring_sigterm_is_killed_after_grace(start_watchdog) -> None:
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    wd = start_watchdog(
        fprocess=f'{PYTHON} -c "{script}"', exec_timeout="500ms", kill_grace="300ms"
    )
    started = time.monotonic()
    assert wd.request("GET", "/").status == 504
    assert time.monotonic() - started < 10
    _wait_for(lambda: "fwatchdog_handlers_running 0.0" in wd.metrics(), what="no handler left")


def test_orphaned_grandchildren_are_reaped(start_watchdog) -> None:
    # Each request leaves an orphan that outlives the handler; as subreaper the watchdog
    # inherits them and must reap them, or zombies pile up (the anchors never reap).
    orphan = "sleep 0.3 </dev/null >/dev/null 2>&1 & echo started"
    wd = start_watchdog(fprocess=f"sh -c '{orphan}'")
    for _ in range(10):
        assert wd.request("GET", "/").text == "started\n"
    _wait_for(lambda: not leftovers(wd.proc.pid), timeout=10, what="orphans reaped")


def test_leftover_holding_stdout_does_not_hold_the_response(start_watchdog) -> None:
    wd = start_watchdog(fprocess="sh -c 'sleep 30 & echo quick'", kill_grace="200ms")
    started = time.monotonic()
    reply = wd.request("GET", "/")
    assert reply.text == "quick\n"
    assert time.monotonic() - started < 10
    _wait_for(lambda: not leftovers(wd.proc.pid), what="leftover killed")


def test_client_disconnect_kills_the_handler(start_watchdog) -> None:
    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'sleepy.py'}")
    with socket.create_connection(("127.0.0.1", wd.port), timeout=10) as sock:
        sock.sendall(b"GET /?seconds=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        _wait_for(lambda: "fwatchdog_handlers_running 1.0" in wd.metrics(), what="running")
    _wait_for(lambda: "fwatchdog_handlers_running 0.0" in wd.metrics(), what="handler killed")
    assert 'fwatchdog_handlers_killed_total{reason="request_ended"} 1.0' in wd.metrics()


def test_a_dead_fork_server_makes_the_watchdog_unhealthy(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    (helper,) = [p for p in psutil.Process(wd.proc.pid).children() if p.name() == "fw-spawner"]
    helper.kill()
    _wait_for(lambda: wd.request("GET", "/_/health").status == 503, what="unhealthy")
    reply = wd.request("POST", "/", body=b"x")
    assert reply.status == 500 and "fork server" in reply.text
    wd.wait_for_log("the fork server")


def _metric(wd: RunningWatchdog, name: str) -> float:
    for line in wd.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[int, float]:
    """Drain ``sock`` until the watchdog closes or resets it: (bytes received, when)."""
    received = 0
    deadline = time.monotonic() + limit
    sock.settimeout(limit)
    try:
        while time.monotonic() < deadline and (chunk := sock.recv(1 << 20)):
            received += len(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return received, time.monotonic()


@pytest.mark.parametrize("exit_status", [0, 3])
def test_write_timeout_cuts_a_client_that_never_reads_a_buffered_answer(
    start_watchdog, exit_status: int
) -> None:
    # A buffered answer (a serializing 200, or a 500 carrying the output with combine_output)
    # must be written within write_timeout, holding its in-flight slot until then.
    size = 64 * 1024 * 1024
    wd = start_watchdog(
        fprocess=f"sh -c 'head -c {size} /dev/zero; exit {exit_status}'",
        mode="serializing",
        write_timeout="2s",
        combine_output="true",
    )
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", wd.port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        _wait_for(
            lambda: (
                _metric(wd, "fwatchdog_handlers_started_total") == 1
                and _metric(wd, "fwatchdog_handlers_running") == 0
            ),
            what="the handler done",
        )
        # The handler is done and the answer is stuck in the socket: the request still counts.
        assert _metric(wd, "http_requests_in_flight") == 1
        wd.wait_for_log("within write_timeout")  # the watchdog gave up on this client
        gave_up = time.monotonic()
        received, _ = _read_until_closed(sock, 10)
    assert received < size  # cut off, not delivered late
    assert gave_up - started < 2 + 4  # write_timeout plus slack
    _wait_for(lambda: _metric(wd, "http_requests_in_flight") == 0, what="slot released")


def _running_with_args(*args: str) -> list[psutil.Process]:
    """Live processes anywhere on the machine with exactly this command line."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["cmdline"] == list(args) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _double_fork(seconds: str) -> str:
    # The subshell exits at once, so `sleep` is re-parented (to the fork server, a subreaper)
    # before any kill: neither the process group nor the handler's children lead to it.
    return f"(setsid sleep {seconds} </dev/null >/dev/null 2>&1 &)"


def test_exec_timeout_kills_a_double_forked_descendant(start_watchdog) -> None:
    seconds = f"297.{os.getpid()}"
    wd = start_watchdog(fprocess=f"sh -c '{_double_fork(seconds)}; sleep 299'", exec_timeout="1s")
    try:
        assert wd.request("GET", "/").status == 504
        _wait_for(lambda: not _running_with_args("sleep", seconds), what="the orphan killed")
        assert not leftovers(wd.proc.pid)
    finally:
        for proc in _running_with_args("sleep", seconds):
            proc.kill()


@pytest.mark.parametrize("mode", ["auto", "http"])
def test_no_orphan_of_a_handler_survives_shutdown(start_watchdog, mode: str) -> None:
    seconds = f"296.{os.getpid()}"
    fprocess = f"{PYTHON} {FIXTURES / 'double_fork.py'} {seconds}"
    env = {}
    if mode == "http":
        port = free_port()
        env = {"upstream_url": f"http://127.0.0.1:{port}"}
        fprocess += f" {PYTHON} {FIXTURES / 'plain_upstream.py'} {port}"
    wd = start_watchdog(fprocess=fprocess, mode=mode, **env)
    try:
        assert wd.request("GET", "/").status < 300
        assert _running_with_args("sleep", seconds)  # the handler is done, its orphan is not
        assert wd.terminate() == 0
        assert not _running_with_args("sleep", seconds)
    finally:
        for proc in _running_with_args("sleep", seconds):
            proc.kill()
