"""The Altair IoT Studio front door over plain HTTP (Altair has no client library): the real
gateway in front of the real HTTP fixture function, with a real callback receiver."""

from __future__ import annotations

import base64
import json
import re
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from async_helpers import Receiver
from conftest import Reply, RunningWatchdog

from .conftest import Launcher

LEVELS = "/inspect/market/today"
QUERY = "company=Google&when=%7Enow"


@dataclass
class AltairWorld:
    gateway: RunningWatchdog
    receiver: Receiver

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        return self.gateway.request(method, path, body=body, headers=headers)

    def record(self, call_id: str) -> dict[str, Any]:
        reply = self.gateway.request("GET", f"/system/activations/{call_id}")
        assert reply.status == 200, reply.text
        return dict(json.loads(reply.body))

    def count(self) -> int:
        reply = self.gateway.request("GET", "/system/activations?limit=1000")
        return len(json.loads(reply.body)["items"])


@pytest.fixture(scope="module")
def altair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AltairWorld]:
    """One gateway, its Altair door on, in front of the HTTP fixture function as ``web``
    (default namespace), ``staged`` (namespace ``staging``) and ``slow`` (300 ms timeout)."""
    directory = tmp_path_factory.mktemp("altair")
    launch = Launcher(directory)
    receiver = Receiver()
    try:
        upstream = launch.upstream()
        functions = directory / "gateway.yml"
        functions.write_text(
            textwrap.dedent(
                f"""\
                functions:
                  web: {{url: "http://127.0.0.1:{upstream.port}"}}
                  staged: {{url: "http://127.0.0.1:{upstream.port}", namespace: staging}}
                  slow: {{url: "http://127.0.0.1:{upstream.port}", timeout: 300ms}}
                """
            )
        )
        yield AltairWorld(launch.gateway("--config", str(functions)), receiver)
    finally:
        receiver.close()
        launch.close()


def _error(reply: Reply, status: int) -> dict[str, Any]:
    """Altair's error shape ``{"error": {"status", "message", "details"}}``: its inside."""
    assert reply.status == status, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    body = json.loads(reply.body)
    assert set(body) == {"error"} and set(body["error"]) == {"status", "message", "details"}
    assert body["error"]["status"] == status
    return dict(body["error"])


@pytest.mark.parametrize("method", ["POST", "GET", "PUT", "PATCH", "DELETE"])
def test_invoke_passes_method_custom_path_and_query_to_the_function(
    altair: AltairWorld, method: str
) -> None:
    body = b'{"level": 3}' if method in ("POST", "PUT", "PATCH") else None
    reply = altair.call(method, f"/spaces/acme/functions/web/invoke{LEVELS}?{QUERY}", body=body)
    assert reply.status == 200, reply.text
    seen = json.loads(reply.body)
    assert seen["method"] == method
    assert seen["raw_path"] == f"{LEVELS}?{QUERY}"  # byte for byte, %7E as sent
    assert seen["body_length"] == len(body or b"")
    assert reply.headers["X-Call-Id"]


def test_invoke_without_a_custom_path_is_the_functions_root(altair: AltairWorld) -> None:
    reply = altair.call("GET", "/spaces/acme/functions/web/invoke?x=1")
    assert reply.status == 404 and reply.text == "no such route\n"  # the function's own 404
    assert "X-OpenFaaS-Internal" not in reply.headers
    trailing = altair.call("GET", "/spaces/acme/functions/web/invoke/inspect/a/")
    assert json.loads(trailing.body)["raw_path"] == "/inspect/a/"


def test_a_door_call_is_an_ordinary_call(altair: AltairWorld) -> None:
    reply = altair.call(
        "GET", "/spaces/acme/functions/web/invoke/inspect", headers={"X-Call-Id": "altair-1"}
    )
    assert reply.status == 200 and reply.headers["X-Call-Id"] == "altair-1"
    headers = dict(json.loads(reply.body)["headers"])
    assert headers["X-Call-Id"] == "altair-1"
    metrics = altair.gateway.request("GET", "/metrics").text
    assert re.search(
        r'gateway_function_invocation_total\{[^}]*function_name="web.openfaas-fn"', metrics
    )


def test_invoke_relays_the_functions_status_and_headers(altair: AltairWorld) -> None:
    reply = altair.call("POST", "/spaces/acme/functions/web/invoke/echo/a/b", body=b"hello")
    assert reply.status == 200 and reply.body == b"hello"
    assert reply.headers["X-Upstream"] == "http"
    assert reply.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    teapot = altair.call("DELETE", "/spaces/acme/functions/web/invoke/status/418")
    assert teapot.status == 418 and teapot.text == "status\n"


def test_the_gateways_own_refusals_are_in_altairs_shape(altair: AltairWorld) -> None:
    reply = altair.call("GET", "/spaces/acme/functions/slow/invoke/slow?s=5")
    assert "did not answer within its timeout" in _error(reply, 504)["message"]
    assert reply.headers["X-OpenFaaS-Internal"] == "gateway" and reply.headers["X-Call-Id"]


def test_a_fourth_level_is_no_route(altair: AltairWorld) -> None:
    error = _error(altair.call("GET", "/spaces/acme/functions/web/invoke/inspect/a/b/c"), 404)
    assert "at most 3 levels" in error["message"]
    assert error["details"] == {"levels": 4, "max": 3}


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "TRACE"])
def test_invoke_refuses_other_methods(altair: AltairWorld, method: str) -> None:
    reply = altair.call(method, "/spaces/acme/functions/web/invoke/inspect")
    assert reply.status == 405
    assert reply.headers["Allow"] == "POST, GET, PUT, PATCH, DELETE"


def test_a_space_that_is_a_namespace_is_that_namespace(altair: AltairWorld) -> None:
    staged = altair.call("GET", "/spaces/staging/functions/staged/invoke/inspect")
    assert staged.status == 200 and json.loads(staged.body)["method"] == "GET"
    # any other space is the default namespace; a namespace's space has only its functions
    assert altair.call("GET", "/spaces/any-space/functions/web/invoke/inspect").status == 200
    missing = _error(altair.call("GET", "/spaces/staging/functions/web/invoke/inspect"), 404)
    assert missing["details"] == {"space": "staging", "function": "web", "namespace": "staging"}
    assert "web" in missing["message"] and "staging" in missing["message"]


def _wait_for_end(altair: AltairWorld, call_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (record := altair.record(call_id))["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
    return record


def _callback_of(altair: AltairWorld, call_id: str) -> Any:
    received = altair.receiver.wait_for_calls([call_id])
    return next(r for r in received if r.headers["X-Call-Id"] == call_id)


def test_async_invoke_answers_202_and_posts_the_result_to_the_callback(
    altair: AltairWorld,
) -> None:
    url = f"{altair.receiver.url}/hook?from=altair"
    echoed = altair.call(
        "POST",
        "/spaces/acme/functions/web/async-invoke/echo/a/b?x=1",
        body=b"payload",
        headers={"X-Callback-Url": url},
    )
    assert echoed.status == 202, echoed.text
    call_id = echoed.headers["X-Call-Id"]
    assert json.loads(echoed.body)["callId"] == call_id
    delivered = _callback_of(altair, call_id)
    assert delivered.method == "POST" and delivered.path == "/hook?from=altair"
    assert delivered.body == b"payload"  # the function's body
    assert delivered.headers["X-Function-Status"] == "200"
    assert delivered.headers["X-Upstream"] == "http"  # every header the function set
    assert delivered.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    # the same call in the gateway's own records: path and query went to the function
    record = _wait_for_end(altair, call_id)
    assert record["function"] == "web.openfaas-fn" and record["status"] == "succeeded"


def test_async_invoke_passes_the_custom_path_and_query(altair: AltairWorld) -> None:
    accepted = altair.call(
        "POST",
        f"/spaces/staging/functions/staged/async-invoke{LEVELS}?{QUERY}",
        body=b"{}",
        headers={"X-Callback-Url": altair.receiver.url},
    )
    assert accepted.status == 202, accepted.text
    delivered = _callback_of(altair, accepted.headers["X-Call-Id"])
    seen = json.loads(delivered.body)
    assert seen["method"] == "POST" and seen["raw_path"] == f"{LEVELS}?{QUERY}"
    assert delivered.headers["X-Function-Name"] == "staged.staging"


def test_async_invoke_sends_the_functions_status(altair: AltairWorld) -> None:
    accepted = altair.call(
        "POST",
        "/spaces/acme/functions/web/async-invoke/status/404",
        headers={"X-Callback-Url": altair.receiver.url},
    )
    assert accepted.status == 202
    delivered = _callback_of(altair, accepted.headers["X-Call-Id"])
    assert delivered.headers["X-Function-Status"] == "404"
    assert delivered.body == b"status\n"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_async_invoke_is_post_only(altair: AltairWorld, method: str) -> None:
    before = altair.count()
    reply = altair.call(method, "/spaces/acme/functions/web/async-invoke/echo")
    error = _error(reply, 405)
    assert reply.headers["Allow"] == "POST" and "async-invoke" in error["message"]
    assert altair.count() == before


@pytest.mark.parametrize(
    ("path", "headers", "status", "message"),
    [
        ("web/async-invoke/echo", {"X-Callback-Url": "ftp://example.com/"}, 400, "http or https"),
        ("web/async-invoke/echo", {"X-Callback-Url": "http://169.254.169.254/"}, 400, "refused"),
        ("web/async-invoke/echo", {"X-Call-Id": "bad id"}, 400, "X-Call-Id"),
        ("web/async-invoke/a/b/c/d", {}, 404, "at most 3 levels"),
        ("web/async-invoke/a/../b", {}, 400, "'.' or '..'"),
        ("web/async-invoke/a//b", {}, 400, "empty"),
        ("nope/async-invoke", {}, 404, "Function nope not found in space acme"),
        ("web/async", {}, 404, "Not Found"),
    ],
)
def test_bad_async_input_is_refused_in_altairs_shape_and_queues_nothing(
    altair: AltairWorld, path: str, headers: dict[str, str], status: int, message: str
) -> None:
    before = altair.count()
    reply = altair.call("POST", f"/spaces/acme/functions/{path}", body=b"{}", headers=headers)
    assert message in _error(reply, status)["message"]
    assert altair.count() == before


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _basic(user_password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user_password.encode()).decode()}


def _upstream_gateway(launcher: Launcher, *args: str, **env: str) -> RunningWatchdog:
    upstream = launcher.upstream()
    return launcher.gateway("--function", f"web=http://127.0.0.1:{upstream.port}", *args, **env)


def test_bearer_tokens_when_configured(launcher: Launcher, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# one a line\nfile-token\n")
    gw = _upstream_gateway(
        launcher, "--altair-tokens", "tok-1,tok-2", "--altair-tokens-file", str(tokens)
    )
    path = "/spaces/acme/functions/web/invoke/inspect"
    for refused in ({}, _bearer("tok-3"), _basic("tok-1:x")):
        reply = gw.request("GET", path, headers=refused)
        _error(reply, 401)
        assert reply.headers["WWW-Authenticate"] == 'Bearer realm="Altair IoT Studio"'
    before = gw.request("GET", "/system/activations").body
    refused_async = gw.request("POST", path.replace("/invoke", "/async-invoke"), body=b"{}")
    _error(refused_async, 401)
    assert gw.request("GET", "/system/activations").body == before  # nothing queued
    for token in ("tok-1", "tok-2", "file-token"):
        reply = gw.request("GET", path, headers=_bearer(token))
        assert reply.status == 200, reply.text
        seen = dict(json.loads(reply.body)["headers"])
        assert "Authorization" not in seen  # the token stays at the door
    # the gateway's own routes are not the door's: no token asked there
    assert gw.request("GET", "/function/web/inspect").status == 200
    logs = gw.logs()
    assert "tok-1" not in logs and "altair_tokens=2" in logs and "altair_file_tokens=1" in logs


def test_without_tokens_the_authorization_header_reaches_the_function(
    altair: AltairWorld,
) -> None:
    reply = altair.call(
        "GET", "/spaces/acme/functions/web/invoke/inspect", headers=_bearer("fn-own")
    )
    assert reply.status == 200
    assert dict(json.loads(reply.body)["headers"])["Authorization"] == "Bearer fn-own"


BASIC = {"basic_auth_user": "admin", "basic_auth_password": "s3cret"}


def test_with_basic_auth_invoke_the_door_needs_the_gateways_credentials(
    launcher: Launcher,
) -> None:
    gw = _upstream_gateway(launcher, basic_auth_invoke="true", **BASIC)
    path = "/spaces/acme/functions/web/invoke/inspect"
    refused = gw.request("GET", path)
    _error(refused, 401)
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="Restricted"'
    # decoded before it is classified, as when it is routed
    assert gw.request("POST", path.replace("invoke", "%69nvoke"), body=b"{}").status == 401
    assert gw.request("POST", path.replace("invoke", "async-invoke")).status == 401
    assert gw.request("GET", path, headers=_bearer("anything")).status == 401
    assert gw.request("GET", path, headers=_basic("admin:s3cret")).status == 200


def test_with_basic_auth_only_the_invoke_routes_stay_open(launcher: Launcher) -> None:
    gw = _upstream_gateway(launcher, basic_auth="true", **BASIC)
    reply = gw.request("GET", "/spaces/acme/functions/web/invoke/inspect")
    assert reply.status == 200  # invoking is open without --basic-auth-invoke
    assert gw.request("GET", "/system/activations").status == 401


def test_tokens_and_basic_auth_invoke_either_credential_does(launcher: Launcher) -> None:
    gw = _upstream_gateway(launcher, "--altair-tokens", "tok-1", basic_auth_invoke="true", **BASIC)
    path = "/spaces/acme/functions/web/invoke/inspect"
    refused = gw.request("GET", path)
    _error(refused, 401)
    assert refused.headers.get_all("WWW-Authenticate") == [
        'Bearer realm="Altair IoT Studio"',
        'Basic realm="Restricted"',
    ]
    assert gw.request("GET", path, headers=_bearer("tok-1")).status == 200
    assert gw.request("GET", path, headers=_basic("admin:s3cret")).status == 200
    assert gw.request("GET", path, headers=_bearer("tok-2")).status == 401
    # the door's token opens the door only, not the gateway's own routes
    assert gw.request("GET", "/function/web/inspect", headers=_bearer("tok-1")).status == 401


def test_the_door_can_be_turned_off(launcher: Launcher) -> None:
    gw = _upstream_gateway(launcher, "--altair-door=false")
    reply = gw.request("GET", "/spaces/acme/functions/web/invoke/inspect")
    assert reply.status == 404 and reply.text == "Not Found\n"
    assert "Front door: altair" not in gw.logs()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--altair-door=maybe",), "--altair-door"),
        (("--altair-tokens", "bad token"), "--altair-tokens"),
        (("--altair-tokens-file", "/nonexistent/tokens"), "altair_tokens_file"),
    ],
)
def test_a_malformed_altair_setting_stops_the_gateway_naming_it(
    launcher: Launcher, args: tuple[str, ...], named: str
) -> None:
    gw = launcher.gateway(*args, wait=False)
    assert gw.proc.wait(30) == 2
    assert named in gw.logs()
