"""The benchmark harness works: wrk's results are read from real wrk runs against the real
bench upstream, the upstream frames requests correctly, the spawn loop spawns, the Go anchors
are looked for where the bench says and skipped when missing, issue 13's targets are judged
from the rows given, and the profiler's summary comes from a real py-spy recording. No timing
is asserted here; figures belong to ``python -m bench``."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT, free_port, stop_process

from bench import anchor_targets, anchors, profile, report, wrk
from bench.__main__ import parse_args
from bench.report import Measurement, Run
from bench.scenarios import http_mode, startup
from bench.scenarios.common import median_round
from bench.spawn_limit import spawn_loop
from bench.upstream import BODY, RESPONSE


@pytest.fixture
def upstream() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-m", "bench.upstream", str(port)], cwd=ROOT)
    try:
        _wait_listening(port, proc)
        yield port
    finally:
        stop_process(proc)


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            assert proc.poll() is None, f"server exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.05)


def test_wrk_results_from_a_real_run(upstream: int) -> None:
    wrk.ensure_wrk()
    url = f"http://127.0.0.1:{upstream}/"
    get = wrk.run(url, connections=2, seconds=1)
    post = wrk.run(url, connections=2, seconds=1, method="POST", body_size=64 * 1024)
    for result in (get, post):
        assert result.requests > 0
        assert result.errors == 0
        assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms
        assert result.rps == pytest.approx(result.requests / result.seconds, rel=0.01)


def test_wrk_counts_error_answers(tmp_path: Path) -> None:
    # A real server answering 404 for everything (an empty directory): errors, not successes.
    port = free_port()
    server = subprocess.Popen(
        [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, server)
        result = wrk.run(f"http://127.0.0.1:{port}/missing", connections=1, seconds=1)
    finally:
        stop_process(server)
    assert result.requests > 0
    assert result.errors >= result.requests


def test_wrk_failing_to_connect_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="wrk exited"):
        wrk.run(f"http://127.0.0.1:{free_port()}/", connections=1, seconds=1)


def test_wrk_refuses_anything_but_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        wrk.run("http://example.com/", connections=1, seconds=1)


def test_parse_names_missing_output() -> None:
    with pytest.raises(ValueError, match="WRK_JSON"):
        wrk.parse("Running 1s test @ http://127.0.0.1:1/\n")


def test_upstream_answers_pipelined_requests_with_split_bodies(upstream: int) -> None:
    body = b"b" * 100_000
    first = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    second = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", upstream), 5) as sock:
        sock.sendall(first + body[:1000])
        time.sleep(0.05)
        sock.sendall(body[1000:] + second)
        received = b""
        while received.count(BODY) < 2:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {received!r}"
            received += chunk
    assert received == RESPONSE * 2


def test_upstream_answers_chunked_requests_once_each(upstream: int) -> None:
    # As the Go of-watchdog relays bodies: chunked, split anywhere, a trailer on the second.
    chunked = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    first = chunked + b"5\r\nhello\r\n10000\r\n" + b"c" * 0x10000 + b"\r\n0\r\n\r\n"
    second = chunked + b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
    third = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    stream = first + second + third
    with socket.create_connection(("127.0.0.1", upstream), 5) as sock:
        for start in range(0, len(stream), 7000):
            sock.sendall(stream[start : start + 7000])
            time.sleep(0.01)
        received = b""
        while received.count(BODY) < 3:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {received!r}"
            received += chunk
        sock.settimeout(0.3)  # nothing more: a body taken for requests would get answers
        with pytest.raises(TimeoutError):
            received += sock.recv(65536)
    assert received == RESPONSE * 3


def test_spawn_loop_spawns_and_checks_answers() -> None:
    result = spawn_loop(["cat"], b"hello", seconds=0.2, workers=2)
    assert result.spawns > 0
    assert result.workers == 2
    with pytest.raises(FileNotFoundError, match="not on PATH"):
        spawn_loop(["no-such-command-for-bench"], b"", seconds=0.1)


def test_anchors_default_to_the_shared_folder_beside_the_repository() -> None:
    assert anchors.DEFAULT_DIR == ROOT.resolve().parent / "shared" / "anchors" / "bin"
    assert parse_args(["http"]).anchors == anchors.DEFAULT_DIR
    assert parse_args(["http", "--anchors", "/elsewhere"]).anchors == Path("/elsewhere")


def test_a_missing_anchor_is_skipped_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert anchors.find(tmp_path, "of-watchdog") is None
    assert anchors.find(tmp_path, "of-watchdog") is None
    said = capsys.readouterr().err.splitlines()
    assert said == [f"   {tmp_path / 'of-watchdog'} not found: of-watchdog rows skipped"]
    binary = tmp_path / "classic-watchdog"
    binary.write_text("#!/bin/sh\n")
    assert anchors.find(tmp_path, "classic-watchdog") == binary


def _row(scenario: str, path: str, concurrency: int, **figures: float) -> Measurement:
    return Measurement(scenario, path, concurrency, **figures)  # type: ignore[arg-type]


def test_median_round_keeps_a_real_round_and_every_rounds_figures() -> None:
    rows = [_row("s", "p", 16, rps=rps, p50_ms=p50) for rps, p50 in ((3, 1), (1, 3), (2, 2))]
    chosen = median_round(rows)
    assert (chosen.rps, chosen.p50_ms) == (2, 2)
    assert chosen.extra["rounds_rps"] == [3, 1, 2]
    assert median_round(rows, "p50_ms").p50_ms == 2


def test_issue_13_targets_are_judged_against_the_go_rows_of_the_run() -> None:
    run = Run("test", "now", {}, {})
    get = "1 http small GET"
    run.add(_row(get, http_mode.WATCHDOG, 16, rps=3000, p99_ms=5, cpu_ms_per_req=0.3))
    run.add(_row(get, http_mode.OF_WATCHDOG, 16, rps=1900, p99_ms=6, cpu_ms_per_req=0.7))
    run.add(_row(get, http_mode.WATCHDOG, 1, rps=1, p50_ms=0.30))
    run.add(_row(get, http_mode.OF_WATCHDOG, 1, rps=1, p50_ms=0.20))
    run.add(_row(get, http_mode.DIRECT, 1, rps=1, p50_ms=0.05))
    run.add(_row(startup.SCENARIO, startup.FORK, 0, rps=0, p50_ms=300, peak_rss_mb=20))
    anchor_targets.add_checks(run)
    verdicts = {check.target: check.passed for check in run.checks}
    prefix = "issue 13: http small GET, c"
    assert verdicts == {
        f"{prefix}16: req/s ≥ 1.5× of-watchdog's (same run)": True,
        f"{prefix}16: watchdog CPU/req ≤ 0.5× of-watchdog's": True,
        f"{prefix}16: p99 ≤ of-watchdog's": True,
        f"{prefix}1: added latency (p50 − direct p50) ≤ of-watchdog's": False,
        "issue 13: start-up, fork mode: exec → /_/health 200 ≤ 120 ms (median)": False,
        "issue 13: idle RSS, fork mode (watchdog + fork server) ≤ 26 MB": True,
    }


def test_the_table_compares_with_the_go_row() -> None:
    run = Run("test", "now", {"cpu": "x", "cores": "2", "memory": "1", "kernel": "k",
                              "python": "3", "wrk": "w"}, {})  # fmt: skip
    run.add(_row("1 http small GET", http_mode.OF_WATCHDOG, 16, rps=2000))
    run.measurements[-1].anchor = True
    run.add(_row("1 http small GET", http_mode.WATCHDOG, 16, rps=3000))
    table = report.render(run, "x.json")
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if "1 http" in line}
    assert rows[http_mode.OF_WATCHDOG].endswith("| Go |")
    assert rows[http_mode.WATCHDOG].endswith("| 1.50× |")


BUSY = """
import time

def leaf():
    return sum(range(20_000))

def caller():
    return leaf()

print("busy", flush=True)
while True:
    caller()
"""


def test_profile_summary_from_a_real_py_spy_recording(tmp_path: Path) -> None:
    script = tmp_path / "busy.py"
    script.write_text(BUSY)
    busy = subprocess.Popen([PYTHON, str(script)], stdout=subprocess.PIPE)
    try:
        assert busy.stdout is not None and busy.stdout.readline() == b"busy\n"
        output = tmp_path / "busy.speedscope.json"
        subprocess.run(
            [profile.find_py_spy(), "record", "--pid", str(busy.pid), "--duration", "1"]
            + ["--rate", "100", "--format", "speedscope", "--output", str(output)],
            check=True,
            capture_output=True,
        )
    finally:
        stop_process(busy)
    document = json.loads(output.read_text())
    functions = profile.own_times(document)
    by_name = {function.name.split()[0]: function for function in functions}
    assert functions[0].name.split()[0] == "leaf"  # it holds nearly every sample
    assert by_name["<module>"].total >= by_name["caller"].total >= by_name["leaf"].own > 0
    summary = profile.render(functions, "test", profile.process_seconds(document, {}))
    assert "| leaf (" in summary
    assert "By process: watchdog 100%." in summary
