"""No request can steer the gateway to a host other than the function's configured URL (issue 16
item 1, gateway part): request targets that are not origin-form are refused before any route,
and odd paths after ``/function/NAME`` reach the function itself, byte for byte, or nothing.
A bystander listener stands for every other host and must see no connection."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from async_helpers import HttpAttemptRunner, run
from conftest import RunningWatchdog, free_port
from test_request_targets import Bystander

from watchdog.gateway.invoke import Invoker
from watchdog.gateway.metrics import GatewayMetrics
from watchdog.gateway.proxy import FunctionUpstreams
from watchdog.gateway.queue.base import CallRequest, LeasedCall
from watchdog.gateway.registry import Function, InMemoryRegistry
from watchdog.gateway.worker import InvokePathRunner, InvokeResult

from .conftest import Launcher

# Request lines the watchdog refuses too, with the same answers.
TARGET_PROBES = [
    ("CONNECT x@127.0.0.1:{port} HTTP/1.1", 405),
    ("CONNECT 127.0.0.1:{port} HTTP/1.1", 405),
    ("CONNECT 1 HTTP/1.1", 405),
    ("CONNECT /function/web HTTP/1.1", 405),
    ("GET http://127.0.0.1:{port}/function/web HTTP/1.1", 400),
    ("POST http://127.0.0.1:{port}/async-function/web HTTP/1.1", 400),
    ("GET http://x@127.0.0.1:{port}/function/web/inspect HTTP/1.1", 400),
    ("OPTIONS * HTTP/1.1", 400),
    ("GET /function/web/inspect", 400),  # HTTP/0.9: no version
    ("POST /async-function/web", 400),
]

# Paths that carry another address after /function/NAME: the function gets them as its path.
REACHING_THE_FUNCTION = [
    "/inspect/@127.0.0.1:{port}/x",
    "/inspect/x@127.0.0.1:{port}",
    "/inspect/\\127.0.0.1:{port}/x",
    "/inspect/%2F%2F127.0.0.1:{port}/x",
    "/inspect/%40127.0.0.1:{port}",
    "/inspect/%2e%2e%2f%2f127.0.0.1:{port}",
    "/inspect?@127.0.0.1:{port}/x",
    "/inspect?url=http://127.0.0.1:{port}/",
]

# Paths the gateway answers itself: a malformed function name, or a cleaned-path redirect.
ANSWERED_BY_THE_GATEWAY = [
    ("/function/web@127.0.0.1:{port}/inspect", 400),
    ("/function/web:{port}/inspect", 400),
    ("/function/web%2F@127.0.0.1:{port}", 400),
    ("/function/web%40127.0.0.1:{port}", 400),
    ("/function/web\\127.0.0.1:{port}", 400),
    ("/function/web//127.0.0.1:{port}/inspect", 301),
    ("/function/web/inspect/http://127.0.0.1:{port}/", 301),
    ("//127.0.0.1:{port}/function/web/inspect", 404),
]


@dataclass
class Targets:
    gateway: RunningWatchdog
    bystander: Bystander


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Targets]:
    """A gateway with one function, ``web`` (the HTTP fixture function), and a bystander."""
    launch = Launcher(tmp_path_factory.mktemp("targets"))
    bystander = Bystander()
    try:
        upstream = launch.upstream()
        gateway = launch.gateway("--function", f"web=http://127.0.0.1:{upstream.port}")
        yield Targets(gateway, bystander)
    finally:
        bystander.close()
        launch.close()


def _exchange(port: int, request_line: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send one raw request (the target exactly as given); the status and body of the answer."""
    head = f"{request_line}\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split(b" ", 2)[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(("line", "expected"), TARGET_PROBES)
def test_a_target_that_is_not_a_path_is_refused_before_any_route(
    targets: Targets, line: str, expected: int
) -> None:
    status, _ = _exchange(targets.gateway.port, line.format(port=targets.bystander.port))
    assert status == expected
    assert targets.bystander.accepted == 0


@pytest.mark.parametrize("sub_path", REACHING_THE_FUNCTION)
def test_an_address_in_the_path_reaches_the_function_as_its_path(
    targets: Targets, sub_path: str
) -> None:
    path = sub_path.format(port=targets.bystander.port)
    status, body = _exchange(targets.gateway.port, f"GET /function/web{path} HTTP/1.1")
    assert status == 200
    assert json.loads(body)["raw_path"] == path
    assert targets.bystander.accepted == 0


@pytest.mark.parametrize(("path", "expected"), ANSWERED_BY_THE_GATEWAY)
def test_an_address_in_the_name_is_answered_by_the_gateway(
    targets: Targets, path: str, expected: int
) -> None:
    line = f"GET {path.format(port=targets.bystander.port)} HTTP/1.1"
    status, _ = _exchange(targets.gateway.port, line)
    assert status == expected
    assert targets.bystander.accepted == 0


def _record(gateway: RunningWatchdog, call_id: str) -> dict[str, Any]:
    reply = gateway.request("GET", f"/system/activations/{call_id}")
    assert reply.status == 200, reply.text
    return dict(json.loads(reply.body))


def test_a_queued_call_replays_its_path_to_the_function_only(targets: Targets) -> None:
    port = targets.bystander.port
    path = f"/inspect/@127.0.0.1:{port}/x?to=//127.0.0.1:{port}"
    status, body = _exchange(targets.gateway.port, f"POST /async-function/web{path} HTTP/1.1")
    assert status == 202
    call_id = json.loads(body)["callId"]
    deadline = time.monotonic() + 20
    while (record := _record(targets.gateway, call_id))["status"] != "succeeded":
        assert record["status"] in ("queued", "running"), record
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
    assert json.loads(record["response"]["body"])["raw_path"] == path
    assert targets.bystander.accepted == 0


def test_a_stored_path_that_is_not_a_path_never_reaches_another_host() -> None:
    """A queued call replays its stored path; one that does not start with / (a record of
    another writer) would extend the function's authority (``http://fn:P`` + ``@other:Q``):
    both replay paths refuse it at once instead."""
    bystander = Bystander()
    url = f"http://127.0.0.1:{free_port()}"  # the function's own (closed) address
    now = time.time()
    stored = CallRequest("fn.openfaas-fn", path=f"@127.0.0.1:{bystander.port}/x", query="a=1")
    leased = LeasedCall(stored, 1, now, now + 30, "w")

    async def replay() -> list[InvokeResult]:
        async with aiohttp.ClientSession() as session:
            direct = HttpAttemptRunner(session, {stored.function: url}.get, lambda name: 5.0)
            registry = InMemoryRegistry([Function("fn", url)])
            metrics = GatewayMetrics()
            with FunctionUpstreams() as upstreams:
                invoker = Invoker(
                    registry, upstreams, metrics, namespace="openfaas-fn", default_timeout=5.0
                )
                return [await direct.invoke(leased), await InvokePathRunner(invoker).invoke(leased)]

    try:
        for outcome in run(replay()):
            assert not outcome.retryable
            assert "is not a path" in (outcome.result.error or "")
        assert bystander.accepted == 0
    finally:
        bystander.close()
