"""Health endpoints, the lock file, graceful shutdown, metrics and bounded streaming memory."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import threading
import time

import psutil
from conftest import FIXTURES, PYTHON
from test_limits import _in_background, _wait_for


def test_health_ready_and_lock_file(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    assert wd.request("GET", "/_/health").text == "OK"
    assert wd.request("GET", "/_/ready").status == 200
    assert wd.request("POST", "/_/health").status == 405
    assert (wd.tmpdir / ".lock").exists()
    assert wd.terminate() == 0
    assert not (wd.tmpdir / ".lock").exists()


def test_run_healthcheck_flag_reads_the_lock_file(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    env = {"TMPDIR": str(wd.tmpdir), "PATH": "/usr/bin:/bin"}
    check = [sys.executable, "-m", "watchdog", "-run-healthcheck"]
    assert subprocess.run(check, env=env, timeout=30).returncode == 0
    wd.terminate()
    assert subprocess.run(check, env=env, timeout=30, capture_output=True).returncode == 1


def test_suppress_lock_keeps_health_working(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat", suppress_lock="true")
    assert wd.request("GET", "/_/health").status == 200
    assert wd.request("GET", "/_/ready").status == 200
    assert not (wd.tmpdir / ".lock").exists()


def test_sigterm_drains_in_flight_work_then_exits_0(start_watchdog) -> None:
    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'sleepy.py'}", healthcheck_interval="10s")
    thread, result = _in_background(wd, "/?seconds=1.5")
    _wait_for(lambda: "http_requests_in_flight 1.0" in wd.metrics(), what="one in flight")
    wd.proc.send_signal(signal.SIGTERM)
    _wait_for(lambda: not (wd.tmpdir / ".lock").exists(), what="lock removed")
    # Still accepting during the notice period, but reporting unhealthy.
    assert wd.request("GET", "/_/health").status == 503
    assert wd.request("GET", "/_/ready").status == 503
    thread.join(15)
    assert result[0].status == 200 and result[0].text == "slept 1.5\n"
    assert wd.proc.wait(15) == 0
    assert "draining" in wd.logs()


def test_shutdown_finishes_early_when_idle(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat", healthcheck_interval="60s")
    started = time.monotonic()
    assert wd.terminate(signal.SIGINT) == 0
    assert time.monotonic() - started < 10


def test_shutdown_kills_work_that_outlives_write_timeout(start_watchdog) -> None:
    wd = start_watchdog(
        fprocess=f"{PYTHON} {FIXTURES / 'sleepy.py'}",
        healthcheck_interval="0",
        write_timeout="1s",
        exec_timeout="0",
    )
    thread, result = _in_background(wd, "/?seconds=120")
    _wait_for(lambda: "fwatchdog_handlers_running 1.0" in wd.metrics(), what="running")
    handler_pids = [p.pid for p in psutil.Process(wd.proc.pid).children(recursive=True)]
    started = time.monotonic()
    assert wd.terminate() == 0
    assert time.monotonic() - started < 15
    thread.join(15)
    assert isinstance(result[0], http.client.RemoteDisconnected)  # cut off, never a false 200
    assert not any(psutil.pid_exists(pid) for pid in handler_pids)


def test_metrics_count_requests_by_code_and_method(start_watchdog) -> None:
    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'fail.py'}")
    for _ in range(3):
        wd.request("POST", "/", body=b"x")
    wd.request("GET", "/")
    text = wd.metrics()
    assert 'http_requests_total{code="500",method="post"} 3.0' in text
    assert 'http_requests_total{code="500",method="get"} 1.0' in text
    assert 'http_request_duration_seconds_bucket{code="500",le="300.0",method="post"} 3.0' in text
    assert "http_requests_in_flight 0.0" in text
    assert "fwatchdog_handlers_started_total 4.0" in text
    assert 'fwatchdog_handler_exits_total{outcome="error"} 4.0' in text
    assert "fwatchdog_handlers_cpu_seconds_total" in text


def test_streaming_a_large_body_through_cat_keeps_memory_flat(start_watchdog) -> None:
    size = 1 << 30  # 1 GiB each way
    wd = start_watchdog(fprocess="cat", mode="streaming", exec_timeout="120s")
    watchdog = psutil.Process(wd.proc.pid)
    baseline = watchdog.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], watchdog.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    chunk = b"z" * (1 << 20)
    conn = http.client.HTTPConnection("127.0.0.1", wd.port, timeout=120)
    received = 0
    try:
        conn.putrequest("POST", "/")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        reader_result: list[int] = []

        def send() -> None:
            for _ in range(size // len(chunk)):
                conn.sock.sendall(chunk)

        sender = threading.Thread(target=send)
        sender.start()
        response = conn.getresponse()
        while data := response.read(1 << 20):
            received += len(data)
        sender.join(60)
        reader_result.append(received)
    finally:
        done.set()
        sampler.join()
        conn.close()
    assert received == size
    growth_mib = (peak[0] - baseline) / (1 << 20)
    assert growth_mib < 16, f"watchdog RSS grew by {growth_mib:.1f} MiB"


def test_running_handlers_report_their_memory(start_watchdog) -> None:
    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'sleepy.py'}")
    thread, result = _in_background(wd, "/?seconds=2")

    def rss() -> float:
        for line in wd.metrics().splitlines():
            if line.startswith("fwatchdog_handlers_rss_bytes "):
                return float(line.split()[1])
        return 0.0

    _wait_for(lambda: rss() > 1024 * 1024, what="a running handler's RSS in the metrics")
    thread.join(15)
    assert result[0].status == 200
    _wait_for(lambda: rss() == 0, what="no RSS once no handler runs")


def test_after_healthcheck_interval_new_connections_are_refused(start_watchdog) -> None:
    wd = start_watchdog(
        fprocess=f"{PYTHON} {FIXTURES / 'sleepy.py'}",
        healthcheck_interval="1s",
        write_timeout="30s",
    )
    thread, result = _in_background(wd, "/?seconds=4")  # keeps the drain from ending early
    _wait_for(lambda: "http_requests_in_flight 1.0" in wd.metrics(), what="one in flight")
    wd.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    _wait_for(lambda: not (wd.tmpdir / ".lock").exists(), what="lock removed")
    assert wd.request("GET", "/_/health").status == 503  # still accepting, unhealthy
    wd.wait_for_log("No new connections allowed")
    assert time.monotonic() - signalled >= 0.9  # not before healthcheck_interval

    def refused() -> bool:
        try:
            wd.request("GET", "/_/health", timeout=2)
        except ConnectionRefusedError:
            return True
        return False

    _wait_for(refused, timeout=2, what="new connections refused")
    assert result == []  # while the request in flight still runs
    thread.join(15)
    assert result[0].status == 200  # the request in flight still finished
    assert wd.proc.wait(15) == 0
