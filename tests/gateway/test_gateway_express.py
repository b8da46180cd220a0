"""The gateway's express (watchdog/gateway/express.py): a small ``/function/`` call on a
connection the gateway already has to the function's watchdog is relayed from callbacks. It
must answer as the ordinary path does, count as it does, and hand over whatever it does not
finish itself (a streamed answer, a failure, a timeout, a dropped connection) so that the
caller sees what the ordinary path would have given."""

from __future__ import annotations

import http.client
import socket

from conftest import Call, on_one_connection, recv_until
from test_limits import _wait_for

from .conftest import World
from .test_routing import metric

_TIMED = {"x-call-id", "x-start-time", "x-duration-seconds", "date"}


def _calls(world: World, calls: list[Call]) -> list:
    """Each call in turn on one keep-alive connection (after the first, the gateway has an
    idle connection to the function: the express's)."""
    return on_one_connection(world.gateway.port, calls)


def _untimed(answer: http.client.HTTPResponse) -> list[tuple[str, str]]:
    return [(name, value) for name, value in answer.getheaders() if name.lower() not in _TIMED]


def test_a_small_call_is_answered_as_on_the_ordinary_path(world: World) -> None:
    typed = {"Content-Type": "text/x-mine"}
    _, express, ordinary = _calls(
        world,
        [
            ("POST", "/function/cat", b"warm", typed),
            ("POST", "/function/cat", b"same body", typed),
            ("POST", "/function/cat", [b"same body"], typed),  # chunked: never an express's
        ],
    )
    assert express.status == ordinary.status == 200
    assert express.body == ordinary.body == b"same body"  # type: ignore[attr-defined]
    assert [name for name, _ in express.getheaders()] == [name for name, _ in ordinary.getheaders()]
    assert _untimed(express) == _untimed(ordinary)
    assert express.getheader("X-Served-By") and express.getheader("X-Call-Id")


def test_a_callers_call_id_is_kept_and_calls_are_counted(world: World) -> None:
    name = "web.openfaas-fn"
    before = world.gateway.metrics()
    answers = _calls(
        world,
        [("GET", "/function/web/sized?n=10", None, {"X-Call-Id": f"id-{n}"}) for n in range(12)],
    )
    after = world.gateway.metrics()
    assert [answer.status for answer in answers] == [200] * 12
    assert [answer.getheader("X-Call-Id") for answer in answers] == [f"id-{n}" for n in range(12)]

    def delta(metric_name: str, **labels: str) -> float:
        return metric(after, metric_name, **labels) - metric(before, metric_name, **labels)

    assert delta("gateway_function_invocation_total", function_name=name, code="200") == 12
    assert delta("gateway_function_invocation_started", function_name=name) == 12
    assert metric(after, "gateway_function_invocation_inflight", function_name=name) == 0


def test_what_the_express_hands_over_ends_as_the_ordinary_path_ends_it(world: World) -> None:
    warm = ("GET", "/function/web/sized?n=1", None, {})  # leaves an idle connection
    cases = [
        ("GET", "/function/web/bytes?n=200000", None, {}),  # a body to stream
        ("GET", "/function/slow/slow?s=5", None, {}),  # its timeout is 500ms
        ("POST", "/function/web/drop", b"once", {}),  # not sent twice: a 502
        ("GET", "/function/web/drop-reused", None, {}),  # sent again, on a new connection
        ("GET", "/function/web/drop", None, {}),  # sent again, and dropped again: 502
    ]
    name = "web.openfaas-fn"
    before = world.gateway.metrics()
    answers = _calls(world, [call for case in cases for call in (warm, case)])
    after = world.gateway.metrics()
    assert [answer.status for answer in answers[::2]] == [200] * len(cases)
    streamed, timed_out, failed, replayed, dropped = answers[1::2]
    assert streamed.status == 200 and streamed.body == bytes(200000)  # type: ignore[attr-defined]
    assert timed_out.status == 504 and timed_out.getheader("X-Call-Id")
    assert failed.status == 502 and b"unreachable" in failed.body  # type: ignore[attr-defined]
    assert (replayed.status, replayed.body) == (200, b"fresh connection")  # type: ignore[attr-defined]
    assert dropped.status == 502
    # Each call started once, the replayed one too (9 to web, the timed-out one to slow).
    started = metric(after, "gateway_function_invocation_started", function_name=name)
    assert started - metric(before, "gateway_function_invocation_started", function_name=name) == 9
    assert metric(after, "gateway_function_invocation_inflight", function_name=name) == 0


def test_a_caller_gone_mid_call_is_counted_as_499(world: World) -> None:
    name = "web.openfaas-fn"

    def counted(metric_name: str, **labels: str) -> float:
        return metric(world.gateway.metrics(), metric_name, function_name=name, **labels)

    gone_before = counted("gateway_function_invocation_total", code="499")
    with socket.create_connection(("127.0.0.1", world.gateway.port), timeout=30) as sock:
        sock.sendall(b"GET /function/web/sized?n=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        recv_until(sock, b"\r\n\r\n")  # answered: the next call has an idle connection
        sock.sendall(b"GET /function/web/slow?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        _wait_for(lambda: counted("gateway_function_invocation_inflight") == 1, what="in flight")
    _wait_for(
        lambda: counted("gateway_function_invocation_total", code="499") == gone_before + 1,
        what="the call counted as the caller's going",
    )
    assert counted("gateway_function_invocation_inflight") == 0
