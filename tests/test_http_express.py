"""mode=http's express (watchdog/modes/http_express.py), the hot path that answers the commonest
requests from callbacks: what it hands to the ordinary path is answered as the ordinary path
answers it, and every request is counted once.

The express needs an idle pooled upstream connection, so each test first makes one request
(the ordinary path's, which opens the connection and keeps it)."""

from __future__ import annotations

import json
import re
import socket
from concurrent.futures import ThreadPoolExecutor

from conftest import RunningWatchdog
from test_http_mode import start_http
from test_limits import _wait_for


def _warm(wd: RunningWatchdog) -> None:
    assert wd.request("GET", "/inspect").status == 200


def _received(sock: socket.socket, until: bytes) -> bytes:
    reply = b""
    while until not in reply:
        chunk = sock.recv(65536)
        assert chunk, reply
        reply += chunk
    return reply


def _count(metrics: str, code: str, method: str) -> float:
    found = re.search(rf'http_requests_total{{code="{code}",method="{method}"}} (\S+)', metrics)
    return float(found.group(1)) if found else 0.0


def test_pipelined_requests_are_answered_in_order(start_watchdog) -> None:
    wd = start_http(start_watchdog)
    _warm(wd)
    # The first answer streams (chunked): the express hands it to the ordinary path while
    # the others wait behind it.
    requests = b"".join(
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body)
        for path, body in ((b"/echo", b"FIRST"), (b"/inspect/1", b"bb"), (b"/inspect/2", b"ccc"))
    )
    health = b"GET /_/health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", wd.port), timeout=10) as sock:
        sock.sendall(requests + health)
        reply = _received(sock, b"\r\n\r\nOK")
    assert reply.count(b"HTTP/1.1 200 OK\r\n") == 4, reply
    places = [reply.index(part) for part in (b"FIRST", b'"/inspect/1"', b'"/inspect/2"')]
    assert places == sorted(places) and places[-1] < reply.index(b"\r\n\r\nOK"), reply
    lengths = [int(n) for n in re.findall(rb'"body_length": (\d+)', reply)]
    assert lengths == [2, 3]


def test_a_body_that_arrives_in_pieces_reaches_the_upstream_whole(start_watchdog) -> None:
    wd = start_http(start_watchdog)
    _warm(wd)
    head = b"POST /inspect HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", wd.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head + b"a" * 1000)
        sock.sendall(b"b" * 2000)
        reply = _received(sock, b"}")
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["body_length"] == 3000


def test_answers_to_stream_are_relayed_whole(start_watchdog) -> None:
    wd = start_http(start_watchdog)
    _warm(wd)
    big = wd.request("GET", "/bytes?n=200000")  # longer than the express relays whole
    assert big.status == 200 and big.body == bytes(200000)
    echoed = wd.request("POST", "/echo", body=b"round trip")  # chunked: no length to relay
    assert echoed.body == b"round trip"
    assert echoed.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    head = wd.request("HEAD", "/inspect")
    assert head.status == 200 and head.body == b""


def test_every_request_is_counted_once(start_watchdog) -> None:
    wd = start_http(start_watchdog)
    _warm(wd)
    for _ in range(5):
        assert wd.request("GET", "/inspect").status == 200
    assert wd.request("GET", "/bytes?n=100000").status == 200
    assert wd.request("GET", "/status/418").status == 418
    metrics = wd.metrics()
    assert _count(metrics, "200", "get") == 7
    assert _count(metrics, "418", "get") == 1
    assert "http_requests_in_flight 0.0" in metrics


def test_a_reused_connection_closed_unanswered_is_replayed_on_a_new_one(start_watchdog) -> None:
    """The upstream closes the idle pooled connection the express reuses without answering
    (as a server does that times out idle connections just as one is reused): the request
    is sent again on a new connection, answered, and counted once."""
    wd = start_http(start_watchdog)
    _warm(wd)  # the connection the express reuses
    reply = wd.request("GET", "/drop-reused")
    assert (reply.status, reply.text) == (200, "fresh connection")
    metrics = wd.metrics()
    assert _count(metrics, "200", "get") == 2  # the warm-up and this one
    assert "http_requests_in_flight 0.0" in metrics
    assert wd.request("POST", "/drop-reused", body=b"x").status == 502  # not sent twice


def test_a_client_that_leaves_before_the_answer_is_counted_499(start_watchdog) -> None:
    wd = start_http(start_watchdog)
    _warm(wd)
    with socket.create_connection(("127.0.0.1", wd.port), timeout=10) as sock:
        sock.sendall(b"GET /slow?s=2 HTTP/1.1\r\nHost: x\r\n\r\n")
    _wait_for(lambda: _count(wd.metrics(), "499", "get") == 1, timeout=10, what="a 499")
    assert "http_requests_in_flight 0.0" in wd.metrics()
    assert wd.request("GET", "/inspect").status == 200  # and the next one is answered


def test_exec_timeout_is_a_504_that_counts_towards_hung(start_watchdog) -> None:
    wd = start_http(start_watchdog, exec_timeout="500ms", upstream_hung_after="2")
    _warm(wd)
    for _ in range(2):
        reply = wd.request("GET", "/slow?s=30")
        assert reply.status == 504 and reply.text == "Upstream did not answer within 500ms\n"
    wd.wait_for_log("2 consecutive requests timed out")
    _wait_for(lambda: wd.request("GET", "/_/ready").status == 200, timeout=15, what="back")


def test_requests_that_fall_due_together_all_get_their_504(start_watchdog) -> None:
    wd = start_http(start_watchdog, exec_timeout="500ms", upstream_hung_after="0")
    with ThreadPoolExecutor(4) as pool:  # four idle pooled connections for the express
        assert (
            list(pool.map(lambda _: wd.request("GET", "/slow?s=0.2").status, range(4))) == [200] * 4
        )
        replies = list(pool.map(lambda _: wd.request("GET", "/slow?s=30"), range(4)))
    assert [reply.status for reply in replies] == [504] * 4, [r.text for r in replies]


def _in_flight(wd: RunningWatchdog) -> float:
    found = re.search(r"^http_requests_in_flight (\S+)", wd.metrics(), re.MULTILINE)
    assert found is not None
    return float(found.group(1))


def test_a_client_that_stops_reading_small_answers_is_cut_off(start_watchdog) -> None:
    wd = start_http(start_watchdog, write_timeout="1s")
    _warm(wd)
    ask = b"GET /sized?n=60000 HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", wd.port))
        # One at a time, each once the last was counted: taken by the client, or cut off.
        # (Watching http_requests_in_flight for the answer that waits would be a race: an
        # answer on its way to the upstream and back is in flight too.)
        for sent in range(1, 1000):
            sock.sendall(ask)
            _wait_for(
                lambda answered=sent + 1: _count(wd.metrics(), "200", "get") == answered,
                timeout=10,
                what="the answer taken or cut off",
            )
            if "within write_timeout; cut off" in wd.logs():
                break  # the client's buffers were full: the answer waited, then was cut off
        else:
            raise AssertionError("the client's buffers never filled")
        _wait_for(lambda: _in_flight(wd) == 0, timeout=10, what="the slot given back")
