"""The fork modes' express (watchdog/modes/fork_express.py): a call whose body fits one pipe
write is served from callbacks; it must answer exactly as the ordinary path, which serves the
larger ones, and count and clean up as it does."""

from __future__ import annotations

import http.client
import socket

import pytest
from conftest import Call, RunningWatchdog, on_one_connection

SMALL = b"s" * 100  # taken by the express
LARGE = b"L" * 10_000  # beyond one pipe write's atomic size: the ordinary path's


def _post_all(wd: RunningWatchdog, bodies: list[bytes]) -> list[http.client.HTTPResponse]:
    """POST each body in turn on one keep-alive connection."""
    calls: list[Call] = [("POST", "/f?x=1", body, {"Content-Type": "a/b"}) for body in bodies]
    return on_one_connection(wd.port, calls)


def _counter(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.parametrize("mode", ["auto", "serializing"])
def test_a_small_call_is_answered_as_a_large_one_is(start_watchdog, mode: str) -> None:
    wd = start_watchdog(fprocess="cat", mode=mode)
    small, large = _post_all(wd, [SMALL, LARGE])
    for answer, body in ((small, SMALL), (large, LARGE)):
        assert answer.status == 200
        assert answer.body == body  # type: ignore[attr-defined]
        assert answer.getheader("Content-Length") == str(len(body))
    # The same headers, in the same order; values alike but for the timings and length.
    assert [name for name, _ in small.getheaders()] == [name for name, _ in large.getheaders()]
    timed = {"X-Duration-Seconds", "Date", "Content-Length"}
    untimed = [(name, value) for name, value in small.getheaders() if name not in timed]
    assert untimed == [(name, value) for name, value in large.getheaders() if name not in timed]
    assert small.getheader("Content-Type") == "a/b"  # the request's own, as the classic's


def test_express_calls_are_counted_and_leave_nothing_running(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    answers = _post_all(wd, [SMALL] * 20 + [LARGE] * 2)
    assert [answer.status for answer in answers] == [200] * 22
    metrics = wd.metrics()
    assert _counter(metrics, 'http_requests_total{code="200",method="post"}') == 22
    assert _counter(metrics, 'fwatchdog_handler_exits_total{outcome="success"}') == 22
    assert _counter(metrics, "fwatchdog_handlers_started_total") == 22
    assert _counter(metrics, "http_requests_in_flight") == 0
    assert _counter(metrics, "fwatchdog_handlers_running") == 0


def test_each_hand_off_ends_as_the_ordinary_path_ends_it(start_watchdog) -> None:
    # One handler, steered by its body: the express hands each of these over, and the
    # ordinary path answers it as it answers a large body that never went to the express.
    script = (
        'body=$(cat); case "$body" in '
        "*fail) echo partial; exit 3;; "
        "*big) head -c 300000 /dev/zero;; "
        "*slow) sleep 5;; "
        "esac"
    )
    wd = start_watchdog(fprocess=f"sh -c '{script}'", exec_timeout="1s")
    for prefix in (b"", b" " * 5000):  # (a large body: the ordinary path)
        failed, big, slow = _post_all(wd, [prefix + b"fail", prefix + b"big", prefix + b"slow"])
        assert (failed.status, failed.getheader("Content-Type")) == (
            500,
            "text/plain; charset=utf-8",
        )
        assert big.status == 200 and big.getheader("Transfer-Encoding") == "chunked"
        assert slow.status == 504
    metrics = wd.metrics()
    assert _counter(metrics, 'fwatchdog_handlers_killed_total{reason="exec_timeout"}') == 2
    assert _counter(metrics, "http_requests_in_flight") == 0


def test_an_http_1_0_call_is_answered_and_closed(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    with socket.create_connection(("127.0.0.1", wd.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 3" in head.split(b"\r\n")
    assert body == b"abc"
