"""max_body_size bounds the bodies the watchdog holds whole (serializing, buffer_http) with its
own 413; streamed bodies are not bounded; a large serializing answer is held once in memory."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import psutil
import pytest
from conftest import FIXTURES, PYTHON, RunningWatchdog, free_port

LIMIT = 1000
REFUSAL = f"Request body larger than max_body_size ({LIMIT} bytes)\n"


def _count_bytes(wd: RunningWatchdog, body: bytes) -> tuple[int, str]:
    reply = wd.request("POST", "/", body=body)
    return reply.status, reply.text


def _chunked_post(wd: RunningWatchdog, path: str, pieces: list[bytes]) -> tuple[int, str]:
    """A body without Content-Length: only counting while reading can find it too long."""
    conn = http.client.HTTPConnection("127.0.0.1", wd.port, timeout=30)
    try:
        conn.request("POST", path, body=iter(pieces), encode_chunked=True)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("mode", "buffers"), [("serializing", True), ("auto", False), ("streaming", False)]
)
def test_fork_modes_refuse_only_a_body_they_would_hold(
    start_watchdog, mode: str, buffers: bool
) -> None:
    wd = start_watchdog(mode=mode, fprocess="wc -c", max_body_size=str(LIMIT))
    assert _count_bytes(wd, b"x" * LIMIT) == (200, f"{LIMIT}\n")
    over = [b"x" * 600, b"x" * (LIMIT + 1 - 600)]
    if buffers:
        assert _count_bytes(wd, b"".join(over)) == (413, REFUSAL)
        assert _chunked_post(wd, "/", over) == (413, REFUSAL)
    else:
        assert _count_bytes(wd, b"".join(over)) == (200, f"{LIMIT + 1}\n")
        assert _chunked_post(wd, "/", over) == (200, f"{LIMIT + 1}\n")


@pytest.mark.parametrize("buffer_http", ["true", "false"])
def test_http_mode_refuses_only_a_body_it_buffers(start_watchdog, buffer_http: str) -> None:
    port = free_port()
    wd = start_watchdog(
        mode="http",
        fprocess=f"{PYTHON} {FIXTURES / 'http_upstream.py'} {port}",
        upstream_url=f"http://127.0.0.1:{port}",
        buffer_http=buffer_http,
        max_body_size=str(LIMIT),
    )
    at_limit = wd.request("POST", "/inspect", body=b"x" * LIMIT)
    assert at_limit.status == 200 and json.loads(at_limit.body)["body_length"] == LIMIT
    over = wd.request("POST", "/inspect", body=b"x" * (LIMIT + 1))
    if buffer_http == "true":
        assert (over.status, over.text) == (413, REFUSAL)
    else:
        assert over.status == 200 and json.loads(over.body)["body_length"] == LIMIT + 1


def test_a_64_mib_upload_passes_serializing_with_the_default(start_watchdog) -> None:
    wd = start_watchdog(mode="serializing", fprocess="wc -c")
    size = 64 * 1024 * 1024
    assert _count_bytes(wd, bytes(size)) == (200, f"{size}\n")


@pytest.mark.parametrize("value", ["64Mi", "1e6", "-1", "0", "12 parsecs"])
def test_a_malformed_limit_stops_the_start_naming_it(start_watchdog, value: str) -> None:
    if value == "64Mi":  # the unit forms are accepted
        start_watchdog(mode="serializing", fprocess="cat", max_body_size=value)
        return
    wd = start_watchdog(wait=False, mode="serializing", fprocess="cat", max_body_size=value)
    assert wd.proc.wait(30) == 2
    assert f"max_body_size={value!r} is invalid" in wd.logs()


def test_a_large_serializing_answer_is_held_once(start_watchdog) -> None:
    """The answer goes out of the buffer stdout was read into: no second copy in memory."""
    size = 200_000_000
    wd = start_watchdog(mode="serializing", fprocess=f"head -c {size} /dev/zero")
    watchdog = psutil.Process(wd.proc.pid)
    before = watchdog.memory_info().rss
    _reset_peak_rss(wd.proc.pid)
    conn = http.client.HTTPConnection("127.0.0.1", wd.port, timeout=60)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        received = 0
        while chunk := resp.read(1 << 20):
            received += len(chunk)
    finally:
        conn.close()
    assert (resp.status, received) == (200, size)
    growth = _peak_rss(wd.proc.pid) - before
    assert growth < 1.5 * size, f"peak RSS grew by {growth} bytes for a {size}-byte answer"


def _reset_peak_rss(pid: int) -> None:
    # The kernel keeps the high-water mark itself (VmHWM), so no peak is missed between
    # samples; writing 5 to clear_refs restarts it from the current RSS.
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")
