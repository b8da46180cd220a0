"""Malformed requests: one log line each, a flood of them bounded; HTTP/0.9 refused (issue 16
item 6)."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from conftest import RunningWatchdog
from test_http_mode import start_http

from watchdog.logs import BAD_REQUESTS_PER_SECOND

MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
]


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; everything the watchdog answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def _accounted(wd: RunningWatchdog) -> tuple[int, int]:
    """(bad-request lines, requests the summary lines say were suppressed)."""
    text = wd.logs()
    lines = text.count("bad request from 127.0.0.1: ")
    suppressed = sum(int(n) for n in re.findall(r"suppressed (\d+) more", text))
    return lines, suppressed


def test_each_malformed_request_is_one_line_and_a_flood_is_bounded(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    assert_flood_bounded(wd)
    assert wd.request("POST", "/", body=b"still serving").text == "still serving"


def assert_flood_bounded(wd: RunningWatchdog) -> None:
    """50 malformed requests to ``wd`` (a watchdog or a gateway): each one line, at most
    BAD_REQUESTS_PER_SECOND lines a second and the rest counted in summary lines."""
    count = 50
    for i in range(count):
        assert _exchange(wd.port, MALFORMED[i % len(MALFORMED)]).startswith(b"HTTP/1.")
    deadline = time.monotonic() + 15
    while sum(_accounted(wd)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    lines, suppressed = _accounted(wd)
    logs = wd.logs()
    assert lines + suppressed == count, logs  # every one accounted for, exactly once
    assert BAD_REQUESTS_PER_SECOND <= lines < count and suppressed > 0, logs
    assert "Traceback" not in logs and "Error handling request" not in logs, logs
    first = next(line for line in logs.splitlines() if "bad request from" in line)
    assert "Content-Length" in first, first


@pytest.mark.parametrize(
    "request_line", [b"GET /\r\n\r\n", b"GET /\r\nHost: x\r\n\r\n", b"POST /x?y=1\r\n\r\n"]
)
def test_http_0_9_requests_never_run_the_handler(
    start_watchdog, tmp_path: Path, request_line: bytes
) -> None:
    marker = tmp_path / "ran"
    wd = start_watchdog(fprocess=f"sh -c 'touch {marker}; echo handler answer'")
    reply = _exchange(wd.port, request_line)
    assert b" 400 " in reply.split(b"\r\n", 1)[0], reply
    assert reply.endswith(b"HTTP/0.9 requests are not supported\n"), reply
    assert not marker.exists()
    assert wd.request("GET", "/").text == "handler answer\n" and marker.exists()


def test_http_0_9_requests_never_reach_the_upstream(start_watchdog) -> None:
    wd = start_http(start_watchdog)
    reply = _exchange(wd.port, b"GET /counted\r\n\r\n")
    assert b" 400 " in reply.split(b"\r\n", 1)[0], reply
    assert wd.request("GET", "/hits").text == "0"
