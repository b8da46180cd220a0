"""/function/NAME through the real gateway to real watchdogs and a real HTTP function."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import FIXTURES, PYTHON, Reply, free_port, recv_until

from .conftest import Launcher, World


def env_of(reply: Reply) -> dict[str, str]:
    return dict(line.split("=", 1) for line in reply.text.splitlines() if "=" in line)


def inspect(world: World, path: str, **kwargs: object) -> dict[str, object]:
    reply = world.gateway.request(path=path, **kwargs)  # type: ignore[arg-type]
    assert reply.status == 200, reply.text
    return dict(json.loads(reply.body))


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition(" ")[0]))
            if found == labels:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- pass-through ---------------------------------------------------------------------------


def test_body_and_content_type_pass_through_a_fork_mode_watchdog(world: World) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    reply = world.gateway.request(
        "POST", "/function/cat", body=body, headers={"Content-Type": "application/x-thing"}
    )
    assert reply.status == 200
    assert reply.body == body
    assert reply.headers["Content-Type"] == "application/x-thing"


def test_method_sub_path_raw_query_and_headers_reach_the_function(world: World) -> None:
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        reply = world.gateway.request(
            method,
            "/function/env/some/path?a=1&b=two%20words&c=%7e",
            body=b"12345" if method != "GET" else None,
            headers={"X-Custom-Header": "value-1"},
        )
        assert reply.status == 200, (method, reply.text)
        env = env_of(reply)
        assert env["Http_Method"] == method
        assert env["Http_Path"] == "/some/path"
        assert env["Http_Query"] == "a=1&b=two%20words&c=%7e"
        assert env["Http_X_Custom_Header"] == "value-1"
        assert env["Http_X_Forwarded_For"] == "127.0.0.1"
        assert env["Http_X_Forwarded_Host"].startswith("127.0.0.1:")
        # the call id and start time go to the function as well as back to the caller
        assert env["Http_X_Call_Id"] == reply.headers["X-Call-Id"]
        assert env["Http_X_Start_Time"] == reply.headers["X-Start-Time"]


def test_head_reaches_the_function(world: World) -> None:
    data = inspect(world, "/function/web/inspect/x")
    assert data["method"] == "GET"
    reply = world.gateway.request("HEAD", "/function/web/inspect/x")
    assert reply.status == 200
    assert reply.body == b""


def test_raw_path_and_query_reach_the_function_byte_for_byte(world: World) -> None:
    target = "/inspect/a%2Fb/%7Euser/sp%20ace?x=%7e&y=a+b&z=%zz&&w"
    data = inspect(world, "/function/web" + target)
    assert data["raw_path"] == target


def test_headers_are_kept_and_hop_by_hop_ones_dropped(world: World) -> None:
    data = inspect(
        world,
        "/function/web/inspect",
        headers={
            "X-Multi": "one",
            "Authorization": "Bearer t0ken",
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
        },
    )
    headers = {k.lower(): v for k, v in data["headers"]}  # type: ignore[union-attr]
    assert headers["x-multi"] == "one"
    assert headers["authorization"] == "Bearer t0ken"
    assert "x-drop-me" not in headers and "keep-alive" not in headers and "te" not in headers
    # nothing invented by the gateway's HTTP client (http.client itself sends "identity")
    assert headers["accept-encoding"] == "identity"
    assert "user-agent" not in headers and "accept" not in headers
    assert uuid.UUID(headers["x-call-id"])


def test_response_headers_and_status_come_back(world: World) -> None:
    reply = world.gateway.request("POST", "/function/web/echo", body=b"ping")
    assert reply.status == 200
    assert reply.body == b"ping"
    assert reply.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert reply.headers["X-Upstream"] == "http"
    assert float(reply.headers["X-Duration-Seconds"]) >= 0
    assert abs(int(reply.headers["X-Start-Time"]) / 1e9 - time.time()) < 60
    assert world.gateway.request("GET", "/function/web/status/418").status == 418
    assert world.gateway.request("GET", "/function/web/status/503").status == 503


def test_a_callers_call_id_is_kept(world: World) -> None:
    reply = world.gateway.request("GET", "/function/env", headers={"X-Call-Id": "call-123"})
    assert reply.headers["X-Call-Id"] == "call-123"
    assert env_of(reply)["Http_X_Call_Id"] == "call-123"


def test_the_response_streams_as_the_function_writes_it(world: World) -> None:
    with socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10) as sock:
        sock.sendall(b"GET /function/web/drip HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        received = recv_until(sock, b"first\n")
        assert time.monotonic() - started < 1.2  # "second" comes 1.5 s later
        assert b"second\n" not in received
        recv_until(sock, b"second\n", received)


def test_the_request_body_streams_to_the_function_and_back(world: World) -> None:
    """The function answers after the first chunk; the client sends the rest only after it has
    seen that answer, so neither direction can be buffered whole by the gateway."""
    with socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10) as sock:
        sock.sendall(
            b"POST /function/web/duplex HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        received = recv_until(sock, b"got:hello\n")
        sock.sendall(b"6\r\n world\r\n0\r\n\r\n")
        recv_until(sock, b" world", received)


def test_a_function_breaking_off_cuts_the_callers_connection(world: World) -> None:
    with pytest.raises(http.client.IncompleteRead) as info:
        world.gateway.request("GET", "/function/web/break")
    assert info.value.partial == b"partial\n"
    assert world.gateway.request("GET", "/function/web/status/200").status == 200


def test_a_caller_going_away_mid_answer_counts_as_499(world: World) -> None:
    def gone() -> float:
        return metric(
            world.gateway.metrics(),
            "gateway_function_invocation_total",
            function_name="web.openfaas-fn",
            code="499",
        )

    warnings = world.gateway.logs().count("broke off")
    before = gone()
    with socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10) as sock:
        sock.sendall(b"GET /function/web/drip HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"first\n" not in received:
            received += sock.recv(65536)
    deadline = time.monotonic() + 5
    while gone() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone() == before + 1
    assert world.gateway.logs().count("broke off") == warnings  # not blamed on the function


# -- names and namespaces ------------------------------------------------------------------


def test_the_default_namespace_suffix_resolves(world: World) -> None:
    reply = world.gateway.request("POST", "/function/cat.openfaas-fn", body=b"ns")
    assert (reply.status, reply.body) == (200, b"ns")
    reply = world.gateway.request("GET", "/function/env.openfaas-fn/p?q=1")
    assert (env_of(reply)["Http_Path"], env_of(reply)["Http_Query"]) == ("/p", "q=1")


def test_a_function_in_another_namespace_needs_its_suffix(world: World) -> None:
    assert inspect(world, "/function/staged.staging/inspect")["method"] == "GET"
    reply = world.gateway.request("GET", "/function/staged/inspect")
    assert reply.status == 404


def test_an_unknown_function_is_404_naming_it(world: World) -> None:
    reply = world.gateway.request("GET", "/function/nosuch")
    assert reply.status == 404
    assert "nosuch" in reply.text
    assert reply.headers["X-OpenFaaS-Internal"] == "gateway"
    assert reply.headers["X-Call-Id"]
    assert world.gateway.request("GET", "/function/cat.otherns").status == 404
    mine = world.gateway.request("GET", "/function/nosuch", headers={"X-Call-Id": "c-1"})
    assert mine.headers["X-Call-Id"] == "c-1"


def test_malformed_names_are_400(world: World) -> None:
    for name in ("Cat", "cat_1", "-cat", "cat-", "a" * 64, "cat.ns.extra", "cat.", ".ns", "c%21"):
        reply = world.gateway.request("GET", f"/function/{name}")
        assert reply.status == 400, (name, reply.status)
        assert "invalid function name" in reply.text
        assert reply.headers["X-Call-Id"]
    assert world.gateway.request("GET", "/function/" + "a" * 63).status == 404


# -- trailing slashes, encoded and unclean paths, long queries -----------------------------


def test_trailing_slashes(world: World) -> None:
    assert env_of(world.gateway.request("GET", "/function/env"))["Http_Path"] == "/"
    assert env_of(world.gateway.request("GET", "/function/env/"))["Http_Path"] == "/"
    assert env_of(world.gateway.request("GET", "/function/env/a/"))["Http_Path"] == "/a/"
    assert env_of(world.gateway.request("GET", "/function/env?x=1"))["Http_Query"] == "x=1"


def test_an_encoded_function_name_is_decoded_to_match(world: World) -> None:
    assert world.gateway.request("POST", "/function/c%61t", body=b"enc").body == b"enc"


def test_unclean_paths_redirect_to_the_clean_one(world: World) -> None:
    cases = {
        "/function/env/a/../b?q=1": "/function/env/b?q=1",
        "/function/env//a": "/function/env/a",
        "/function/env/./a/": "/function/env/a/",
        "/function/env/%2e%2e/cat": "/function/cat",
    }
    for path, location in cases.items():
        reply = world.gateway.request("GET", path)
        assert (reply.status, reply.headers["Location"]) == (301, location), path


def test_long_query_strings_pass(world: World) -> None:
    query = "q=" + "x" * 200_000
    data = inspect(world, "/function/web/inspect?" + query)
    assert data["raw_path"] == "/inspect?" + query
    reply = world.gateway.request("GET", "/function/web/inspect?q=" + "x" * (1024 * 1024 + 10))
    assert reply.status == 400  # past 1 MiB (Go's servers answer 431 there)


# -- failures and limits -------------------------------------------------------------------


def test_a_down_function_is_502_at_once(world: World) -> None:
    started = time.monotonic()
    reply = world.gateway.request("POST", "/function/down", body=b"x")
    assert reply.status == 502
    assert time.monotonic() - started < 1
    assert "down" in reply.text
    assert reply.headers["X-OpenFaaS-Internal"] == "gateway"
    assert reply.headers["X-Call-Id"]


def test_a_slow_function_is_504_after_its_timeout(world: World) -> None:
    started = time.monotonic()
    reply = world.gateway.request("GET", "/function/slow/slow?s=5")
    elapsed = time.monotonic() - started
    assert reply.status == 504
    assert 0.4 < elapsed < 2
    assert "500ms" in reply.text
    assert world.gateway.request("GET", "/function/slow/slow?s=0.01").status == 200


def test_max_concurrency_answers_429_without_reaching_the_function(world: World) -> None:
    results: list[int] = []
    first = threading.Thread(
        target=lambda: results.append(
            world.gateway.request("GET", "/function/limited/slow?s=1.5").status
        )
    )
    first.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            text = world.gateway.metrics()
            if metric(
                text, "gateway_function_invocation_inflight", function_name="limited.openfaas-fn"
            ):
                break
            time.sleep(0.02)
        reply = world.gateway.request("GET", "/function/limited/counted")
        assert reply.status == 429
        assert reply.headers["Retry-After"] == "1"
        assert "concurrency limit of 1" in reply.text
    finally:
        first.join(10)
    assert results == [200]
    assert world.upstream.request("GET", "/hits").text == "0"  # the 429 never reached it
    assert world.gateway.request("GET", "/function/limited/counted").status == 200
    assert world.upstream.request("GET", "/hits").text == "1"


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_count_calls_per_function_and_code(world: World) -> None:
    name = "cat.openfaas-fn"
    before = world.gateway.metrics()
    for _ in range(3):
        assert world.gateway.request("POST", "/function/cat", body=b"m").status == 200
    assert world.gateway.request("GET", "/function/down").status == 502
    world.gateway.request("GET", "/function/unknown-fn")
    after = world.gateway.metrics()

    def delta(metric_name: str, **labels: str) -> float:
        return metric(after, metric_name, **labels) - metric(before, metric_name, **labels)

    assert delta("gateway_function_invocation_total", function_name=name, code="200") == 3
    assert delta("gateway_functions_seconds_count", function_name=name, code="200") == 3
    assert delta("gateway_function_invocation_started", function_name=name) == 3
    assert metric(after, "gateway_function_invocation_inflight", function_name=name) == 0
    assert (
        delta("gateway_function_invocation_total", function_name="down.openfaas-fn", code="502")
        == 1
    )
    assert "unknown-fn" not in after


# -- behind an http-mode watchdog, gateway-wide timeout, functions file ---------------------


def test_calls_reach_an_http_mode_watchdog_and_its_upstream(launcher: Launcher) -> None:
    port = free_port()
    watchdog = launcher.watchdog(
        mode="http",
        fprocess=f"{PYTHON} {FIXTURES / 'http_upstream.py'} {port}",
        upstream_url=f"http://127.0.0.1:{port}",
        ready_path="/status/200",
    )
    gateway = launcher.gateway("--function", f"web=http://127.0.0.1:{watchdog.port}")
    reply = gateway.request(
        "PUT", "/function/web/inspect/a%2Fb?x=%7e&y", body=b"body", headers={"X-Test": "1"}
    )
    assert reply.status == 200
    seen = json.loads(reply.body)
    assert seen["method"] == "PUT"
    assert seen["raw_path"] == "/inspect/a%2Fb?x=%7e&y"
    assert ["X-Test", "1"] in seen["headers"]
    assert seen["body_length"] == 4
    assert reply.headers["X-Call-Id"]
    assert gateway.request("GET", "/function/web/status/418").status == 418


def test_the_gateway_wide_upstream_timeout_answers_504(launcher: Launcher) -> None:
    upstream = launcher.upstream()
    gateway = launcher.gateway(
        "--upstream-timeout", "300ms", "--function", f"up=http://127.0.0.1:{upstream.port}"
    )
    started = time.monotonic()
    reply = gateway.request("GET", "/function/up/slow?s=5")
    assert reply.status == 504
    assert 0.25 < time.monotonic() - started < 2
    assert "300ms" in reply.text


def test_a_function_defined_twice_in_the_file_stops_the_gateway(
    launcher: Launcher, tmp_path: Path
) -> None:
    config = tmp_path / "twice.yml"
    config.write_text(
        "functions:\n  echo:\n    url: http://127.0.0.1:1\n  echo:\n    url: http://127.0.0.1:2\n"
    )
    gateway = launcher.gateway("--config", str(config), wait=False)
    assert gateway.proc.wait(15) == 2
    assert "'echo' is defined twice" in gateway.logs()


def test_a_small_body_that_stops_arriving_is_408_after_the_functions_timeout(
    world: World,
) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", world.gateway.port), timeout=10) as sock:
        sock.sendall(
            b"POST /function/slow/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert 0.4 < time.monotonic() - started < 5
