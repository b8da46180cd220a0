"""The benchmark harness works: wrk's results are read from real wrk runs against the real
bench upstream, the upstream frames requests correctly, the spawn loop spawns. No timing is
asserted here; figures belong to ``python -m bench``."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT, free_port, stop_process

from bench import wrk
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


def test_spawn_loop_spawns_and_checks_answers() -> None:
    result = spawn_loop(["cat"], b"hello", seconds=0.2, workers=2)
    assert result.spawns > 0
    assert result.workers == 2
    with pytest.raises(FileNotFoundError, match="not on PATH"):
        spawn_loop(["no-such-command-for-bench"], b"", seconds=0.1)
