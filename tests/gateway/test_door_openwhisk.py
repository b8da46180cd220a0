"""The OpenWhisk (DigitalOcean Functions) front door, driven by the real npm client
``openwhisk`` (installed under tests/node_modules by ``npm ci``) against the real gateway in
front of real watchdogs."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, PYTHON, ROOT, RunningWatchdog

from .conftest import Launcher

NODE_MODULES = ROOT / "tests" / "node_modules"
HEX32 = re.compile(r"[0-9a-f]{32}")
NOT_FOUND = "The requested resource does not exist."

GATE = """\
import os, sys, time
gate = os.environ["GATE"]
deadline = time.monotonic() + float(os.environ.get("GATE_WAIT", "60"))
while not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.02)
sys.stdout.write(sys.stdin.read())
"""


@dataclass
class OwWorld:
    gateway: RunningWatchdog
    directory: Path
    gate: Path

    @property
    def apihost(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    def node(self, body: str, api_key: str = "x:y") -> Any:
        return run_node(self.directory, self.apihost, body, api_key)

    def record(self, call_id: str) -> dict[str, Any]:
        reply = self.gateway.request("GET", f"/system/activations/{call_id}")
        assert reply.status == 200, reply.text
        return dict(json.loads(reply.body))

    def wait_until_ended(self, call_id: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (record := self.record(call_id))["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, record
            time.sleep(0.05)
        return record


@pytest.fixture(scope="module", autouse=True)
def openwhisk_client() -> None:
    """The npm client as tests/package-lock.json pins it (``.ci/run`` installs it already; a
    plain ``pytest`` on a fresh checkout installs it here, from the npm registry)."""
    if not (NODE_MODULES / "openwhisk").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_MODULES.parent,
            check=True,
            timeout=300,
        )


def run_node(directory: Path, apihost: str, body: str, api_key: str = "x:y") -> Any:
    """Run ``body`` (the inside of an async function given ``ow``, the client) with node;
    its value, or the client's rejection as ``{"rejected": message, "statusCode"}``."""
    script = directory / f"client{time.monotonic_ns()}.js"
    script.write_text(
        textwrap.dedent(
            """\
            const openwhisk = require('openwhisk')
            const ow = openwhisk({apihost: process.env.APIHOST, api_key: process.env.API_KEY,
                                  namespace: '_'})
            async function main () {
            %s
            }
            main().then(
              value => process.stdout.write(JSON.stringify({value: value ?? null})),
              err => process.stdout.write(JSON.stringify({rejected: err.message,
                                                          statusCode: err.statusCode || null})))
            """
        )
        % body
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NODE_PATH": str(NODE_MODULES),
        "APIHOST": apihost,
        "API_KEY": api_key,
    }
    done = subprocess.run(
        ["node", str(script)], env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    outcome = json.loads(done.stdout)
    return outcome["value"] if "value" in outcome else outcome


@pytest.fixture(scope="module")
def ow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwWorld]:
    """One gateway with its OpenWhisk door in front of: ``cat`` (echoes the parameters, a
    JSON object), ``hello`` (plain text), ``fail`` (exits 3: a 500), ``gated`` (answers once
    a file exists), ``stuck`` (never within its 300 ms) and ``demo-echo`` in namespace
    ``staging`` (package ``demo``), and ``web`` (the HTTP fixture function: ``/inspect``)."""
    directory = tmp_path_factory.mktemp("ow")
    launch = Launcher(directory)
    try:
        gate = directory / "gate-open"
        gate_script = directory / "gate.py"
        gate_script.write_text(GATE)
        cat = launch.watchdog(fprocess="cat")
        web = launch.upstream()
        env = launch.watchdog(fprocess="env")
        hello = launch.watchdog(fprocess="echo hello")
        fail = launch.watchdog(fprocess=f"{PYTHON} {FIXTURES / 'fail.py'}")
        gated = launch.watchdog(fprocess=f"{PYTHON} {gate_script}", GATE=str(gate))
        # never opened: each call outlives the gateway's timeout; the handler gives up soon
        stuck = launch.watchdog(
            fprocess=f"{PYTHON} {gate_script}", GATE=str(directory / "never"), GATE_WAIT="2"
        )
        functions = directory / "gateway.yml"
        functions.write_text(
            textwrap.dedent(
                f"""\
                functions:
                  cat: {{url: "http://127.0.0.1:{cat.port}"}}
                  web: {{url: "http://127.0.0.1:{web.port}"}}
                  hello: {{url: "http://127.0.0.1:{hello.port}"}}
                  fail: {{url: "http://127.0.0.1:{fail.port}", max_attempts: 1}}
                  gated: {{url: "http://127.0.0.1:{gated.port}"}}
                  stuck: {{url: "http://127.0.0.1:{stuck.port}", timeout: 300ms, max_attempts: 1}}
                  tools-env: {{url: "http://127.0.0.1:{env.port}", namespace: staging}}
                  demo-echo: {{url: "http://127.0.0.1:{cat.port}", namespace: staging}}
                """
            )
        )
        gateway = launch.gateway("--config", str(functions))
        yield OwWorld(gateway, directory, gate)
    finally:
        launch.close()


def test_blocking_invoke_answers_the_whole_record_and_is_an_ordinary_call(ow: OwWorld) -> None:
    record = ow.node(
        "return await ow.actions.invoke({name: 'cat', blocking: true, params: {who: 'ada'}})"
    )
    assert HEX32.fullmatch(record["activationId"])
    assert record["name"] == "cat" and record["namespace"] == "openfaas-fn"
    assert record["response"] == {
        "status": "success",
        "statusCode": 0,
        "success": True,
        "result": {"who": "ada"},
        "size": len(json.dumps({"who": "ada"})),
    }
    assert (
        record["end"] >= record["start"] and record["duration"] == record["end"] - record["start"]
    )
    assert record["logs"] == []
    # the same call, as the gateway's own API and metrics see it
    own = ow.record(record["activationId"])
    assert own["status"] == "succeeded" and own["function"] == "cat.openfaas-fn"
    assert json.loads(own["response"]["body"]) == {"who": "ada"}
    metrics = ow.gateway.request("GET", "/metrics").text
    assert re.search(
        r'gateway_function_invocation_total\{[^}]*function_name="cat.openfaas-fn"', metrics
    )


def test_blocking_invoke_with_result_gives_the_result_only(ow: OwWorld) -> None:
    results = ow.node(
        """
        const cat = await ow.actions.invoke({name: 'cat', blocking: true, result: true,
                                             params: {n: 1}})
        const hello = await ow.actions.invoke({name: 'hello', blocking: true, result: true})
        return {cat, hello}
        """
    )
    assert results["cat"] == {"n": 1}
    hello = results["hello"]
    assert hello["body"] == "hello\n" and hello["statusCode"] == 200
    assert "X-Call-Id" not in hello["headers"]


def test_non_blocking_invoke_then_the_activation_routes(ow: OwWorld) -> None:
    accepted = ow.node("return await ow.actions.invoke({name: 'cat', params: {later: true}})")
    activation_id = accepted["activationId"]
    assert HEX32.fullmatch(activation_id) and set(accepted) == {"activationId"}
    ow.wait_until_ended(activation_id)
    seen = ow.node(
        f"""
        const id = '{activation_id}'
        return {{
          get: await ow.activations.get(id),
          result: await ow.activations.result(id),
          logs: await ow.activations.logs(id),
          newest: await ow.activations.list({{name: 'cat', limit: 1}}),
          hello: await ow.activations.list({{name: 'hello', limit: 200}}),
          count: await ow.activations.list({{name: 'cat', count: true}}),
        }}
        """
    )
    assert seen["get"]["activationId"] == activation_id
    assert seen["get"]["response"]["result"] == {"later": True}
    assert seen["result"] == {"result": {"later": True}, "success": True, "status": "success"}
    assert seen["logs"] == {"logs": []}
    [newest] = seen["newest"]
    assert newest["activationId"] == activation_id and newest["statusCode"] == 0
    assert "response" not in newest  # a summary, as without docs=true
    assert activation_id not in {summary["activationId"] for summary in seen["hello"]}
    assert seen["count"]["activations"] >= 1


def test_an_unknown_action_is_rejected_with_openwhisks_404(ow: OwWorld) -> None:
    outcome = ow.node("return await ow.actions.invoke({name: 'nope', blocking: true})")
    assert outcome["statusCode"] == 404
    assert NOT_FOUND in outcome["rejected"]
    missing = ow.node("return await ow.activations.get('0123456789abcdef0123456789abcdef')")
    assert missing["statusCode"] == 404 and NOT_FOUND in missing["rejected"]


def test_a_qualified_name_maps_namespace_and_package(ow: OwWorld) -> None:
    result = ow.node(
        """
        return await ow.actions.invoke({name: '/staging/demo/echo', blocking: true,
                                        result: true, params: {pkg: 'demo'}})
        """
    )
    assert result == {"pkg": "demo"}
    listed = ow.node("return await ow.activations.list({namespace: 'staging', limit: 5})")
    assert listed and all(item["namespace"] == "staging" for item in listed)
    assert listed[0]["name"] == "demo-echo"


def test_the_function_gets_the_parameters_and_the_action_but_not_the_api_key(
    ow: OwWorld,
) -> None:
    record = ow.node(
        """
        return await ow.actions.invoke({name: '/staging/tools/env', blocking: true,
                                        params: {q: 1}})
        """,
        api_key="uuid-1:key-1",
    )
    seen = record["response"]["result"]["body"]
    assert "Http_Method=POST" in seen and "Http_Path=/" in seen
    assert "Http_Content_Type=application/json" in seen
    assert "Http_X_Openwhisk_Action_Name=/staging/tools/env" in seen
    assert f"Http_X_Openwhisk_Activation_Id={record['activationId']}" in seen
    assert "Http_X_Request_Id=" in seen
    assert "Authorization" not in seen and "key-1" not in seen


def test_calls_made_through_the_openfaas_routes_are_shown_with_32_hex_ids(ow: OwWorld) -> None:
    reply = ow.gateway.request("POST", "/async-function/cat", body=b'{"via": "openfaas"}')
    assert reply.status == 202
    call_id = reply.headers["X-Call-Id"]
    ow.wait_until_ended(call_id)
    shown = call_id.replace("-", "")
    seen = ow.node(
        f"""
        return {{get: await ow.activations.get('{shown}'),
                 listed: await ow.activations.list({{name: 'cat', limit: 0}})}}
        """
    )
    assert seen["get"]["activationId"] == shown
    assert seen["get"]["response"]["result"] == {"via": "openfaas"}
    assert shown in {item["activationId"] for item in seen["listed"]}


def test_a_failing_action_is_an_application_error(ow: OwWorld) -> None:
    outcome = ow.node("return await ow.actions.invoke({name: 'fail', blocking: true})")
    assert outcome["statusCode"] == 502
    assert "application error, status code: 500" in outcome["rejected"]
    reply = ow.gateway.request("POST", "/api/v1/namespaces/_/actions/fail?blocking=true")
    record = json.loads(reply.body)
    assert reply.status == 502 and record["response"]["status"] == "application error"
    assert record["response"]["success"] is False
    assert record["response"]["result"]["error"]["statusCode"] == 500
    listed = ow.node("return await ow.activations.list({name: 'fail', limit: 1})")
    assert listed[0]["activationId"] == record["activationId"]
    assert listed[0]["statusCode"] == 1  # application error, in a summary too


def test_a_timed_out_action_is_an_action_developer_error(ow: OwWorld) -> None:
    reply = ow.gateway.request("POST", "/api/v1/namespaces/_/actions/stuck?blocking=true")
    assert reply.status == 502, reply.text
    record = json.loads(reply.body)
    assert record["response"]["status"] == "action developer error"
    assert "timeout" in record["response"]["result"]["error"]
    assert {"key": "timeout", "value": True} in record["annotations"]
    assert {"key": "limits", "value": {"timeout": 300}} in record["annotations"]


def test_a_blocking_call_still_running_answers_202_and_runs_on(ow: OwWorld) -> None:
    reply = ow.gateway.request(
        "POST",
        "/api/v1/namespaces/_/actions/gated?blocking=true&timeout=1",
        body=b'{"gate": 1}',
        headers={"Content-Type": "application/json", "X-Request-ID": "req-17"},
    )
    assert reply.status == 202, reply.text
    activation_id = json.loads(reply.body)["activationId"]
    assert reply.headers["x-openwhisk-activation-id"] == activation_id
    assert reply.headers["X-Request-ID"] == "req-17"
    # not ended yet: OpenWhisk has no record until then; the gateway's own API shows it
    early = ow.node(f"return await ow.activations.get('{activation_id}')")
    assert early["statusCode"] == 404
    assert ow.record(activation_id)["status"] in ("queued", "running")
    ow.gate.write_text("open")
    ow.wait_until_ended(activation_id)
    result = ow.node(f"return await ow.activations.result('{activation_id}')")
    assert result["result"] == {"gate": 1} and result["success"] is True


def _count(ow: OwWorld) -> int:
    reply = ow.gateway.request("GET", "/api/v1/namespaces/_/activations?count=true")
    return int(json.loads(reply.body)["activations"])


# -- web actions --------------------------------------------------------------------------


def _activation_count(gateway: RunningWatchdog) -> int:
    return len(json.loads(gateway.request("GET", "/system/activations?limit=200").body)["items"])


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_a_web_action_gets_the_request_as_it_came_and_keeps_no_record(
    ow: OwWorld, method: str
) -> None:
    before = _activation_count(ow.gateway)
    body = b'{"a": 1}' if method in ("POST", "PUT") else None
    reply = ow.gateway.request(
        method,
        "/api/v1/web/_/default/web/inspect/a%2Fb?x=1&y=%20",
        body=body,
        headers={"X-Web-Test": "yes"},
    )
    assert reply.status == 200, reply.text
    seen = json.loads(reply.body)
    assert (seen["method"], seen["raw_path"]) == (method, "/inspect/a%2Fb?x=1&y=%20")
    assert ["X-Web-Test", "yes"] in seen["headers"]
    assert seen["body_length"] == len(body or b"")
    assert _activation_count(ow.gateway) == before


@pytest.mark.parametrize(
    ("extension", "content_type"),
    [
        (".json", "application/json"),
        (".text", "text/plain"),
        (".html", "text/html"),
        (".svg", "image/svg+xml"),
        (".http", "application/octet-stream"),
        ("", "application/octet-stream"),
    ],
)
def test_a_web_actions_extension_sets_the_content_type(
    ow: OwWorld, extension: str, content_type: str
) -> None:
    reply = ow.gateway.request(
        "POST",
        f"/api/v1/web/staging/demo/echo{extension}",
        body=b"from the web",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert reply.status == 200 and reply.body == b"from the web"  # demo/echo is cat
    assert reply.headers["Content-Type"].startswith(content_type)


def test_a_web_action_path_cannot_climb_out_of_the_function(ow: OwWorld) -> None:
    for path in ("/inspect/../../x", "/inspect/%2e%2e/x", "/./inspect"):
        reply = ow.gateway.request("GET", f"/api/v1/web/_/default/web{path}")
        assert reply.status == 400, path
        assert "segments" in json.loads(reply.body)["error"]


def test_json_nested_too_deep_is_a_400_and_a_stored_one_still_lists(ow: OwWorld) -> None:
    deep = b"[" * 100_000
    reply = ow.gateway.request("POST", "/api/v1/namespaces/_/actions/cat?blocking=true", body=deep)
    assert reply.status == 400 and "malformed" in json.loads(reply.body)["error"]
    nested = b"[" * 50_000 + b"]" * 50_000
    accepted = ow.gateway.request("POST", "/async-function/cat", body=nested)
    assert accepted.status == 202
    ow.wait_until_ended(accepted.headers["X-Call-Id"])
    listed = ow.gateway.request("GET", "/api/v1/namespaces/_/activations?docs=true&name=cat")
    assert listed.status == 200, listed.text
    assert json.loads(listed.body)


def test_an_unknown_web_action_is_openwhisks_404(ow: OwWorld) -> None:
    for path in ("/api/v1/web/_/default/nope", "/api/v1/web/_/default", "/api/v1/web/_/x/web"):
        reply = ow.gateway.request("GET", path)
        assert reply.status == 404, path
        assert json.loads(reply.body)["error"] == NOT_FOUND


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("GET", "activations/abc", b"", "Activation id length is 3 but must be 32."),
        ("GET", "activations/" + "g" * 32, b"", "Activation id must be 32 hexadecimal digits."),
        ("GET", "activations?limit=201", b"", "The value '201' is not in the range of 0 to 200"),
        ("GET", "activations?count=true&docs=true", b"", "cannot both be true"),
        ("POST", "actions/cat?blocking=true&timeout=0", b"{}", "Timeout must be number of"),
        ("POST", "actions/cat?timeout=60001", b"{}", "up to 60000."),
        ("POST", "actions/cat", b"[1, 2]", "The request content was malformed"),
    ],
)
def test_bad_input_is_a_400_in_openwhisks_shape_and_queues_nothing(
    ow: OwWorld, method: str, path: str, body: bytes, message: str
) -> None:
    before = _count(ow)
    reply = ow.gateway.request(
        method, f"/api/v1/namespaces/_/{path}", body=body, headers={"X-Request-ID": "bad-1"}
    )
    assert reply.status == 400
    assert reply.headers["Content-Type"] == "application/json"
    error = json.loads(reply.body)
    assert message in error["error"] and error["code"] == "bad-1"
    assert _count(ow) == before


def test_the_door_can_be_turned_off(launcher: Launcher) -> None:
    cat = launcher.watchdog(fprocess="cat")
    gw = launcher.gateway(
        "--function", f"cat=http://127.0.0.1:{cat.port}", "--openwhisk-door=false"
    )
    reply = gw.request("POST", "/api/v1/namespaces/_/actions/cat?blocking=true", body=b"{}")
    assert reply.status == 404 and reply.text == "Not Found\n"
    assert "Front door: openwhisk" not in gw.logs()


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(key.encode()).decode()}


def test_with_basic_auth_the_record_routes_need_credentials(
    launcher: Launcher, tmp_path: Path
) -> None:
    cat = launcher.watchdog(fprocess="cat")
    gw = launcher.gateway(
        "--function",
        f"cat=http://127.0.0.1:{cat.port}",
        basic_auth="true",
        basic_auth_user="admin",
        basic_auth_password="s3cret",
    )
    apihost = f"http://127.0.0.1:{gw.port}"
    # invoking is open (no --basic-auth-invoke); reading records is not
    record = run_node(
        tmp_path, apihost, "return await ow.actions.invoke({name: 'cat', blocking: true})"
    )
    activation_id = record["activationId"]
    refused = run_node(tmp_path, apihost, f"return await ow.activations.get('{activation_id}')")
    assert refused["statusCode"] == 401
    raw = gw.request("GET", "/api/v1/namespaces/_/activations")
    assert raw.status == 401 and "OpenWhisk" in raw.headers["WWW-Authenticate"]
    assert "error" in json.loads(raw.body)
    encoded = gw.request("GET", f"/api/v1/namespaces/_/%61ctivations/{activation_id}")
    assert encoded.status == 401  # decoded before it is classified, as when it is routed
    allowed = run_node(
        tmp_path,
        apihost,
        f"return await ow.activations.get('{activation_id}')",
        api_key="admin:s3cret",
    )
    assert allowed["activationId"] == activation_id
    listed = gw.request("GET", "/api/v1/namespaces/_/activations", headers=_basic("admin:s3cret"))
    assert listed.status == 200 and json.loads(listed.body)[0]["activationId"] == activation_id


def test_with_basic_auth_invoke_the_invoke_route_needs_credentials(
    launcher: Launcher, tmp_path: Path
) -> None:
    cat = launcher.watchdog(fprocess="cat")
    gw = launcher.gateway(
        "--function",
        f"cat=http://127.0.0.1:{cat.port}",
        basic_auth_invoke="true",
        basic_auth_user="admin",
        basic_auth_password="s3cret",
    )
    apihost = f"http://127.0.0.1:{gw.port}"
    body = (
        "return await ow.actions.invoke({name: 'cat', blocking: true, result: true,"
        " params: {a: 1}})"
    )
    refused = run_node(tmp_path, apihost, body)
    assert refused["statusCode"] == 401
    encoded = gw.request("POST", "/api/v1/namespaces/_/%61ctions/cat?blocking=true", body=b"{}")
    assert encoded.status == 401
    assert run_node(tmp_path, apihost, body, api_key="admin:s3cret") == {"a": 1}


def test_with_api_keys_the_door_takes_a_key_and_web_actions_stay_public(
    launcher: Launcher, tmp_path: Path
) -> None:
    cat = launcher.watchdog(fprocess="cat")
    key = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAs"
    gw = launcher.gateway("--function", f"cat=http://127.0.0.1:{cat.port}", openwhisk_api_keys=key)
    apihost = f"http://127.0.0.1:{gw.port}"
    refused = run_node(tmp_path, apihost, "return await ow.actions.invoke({name: 'cat'})")
    assert refused["statusCode"] == 401
    listed = gw.request("GET", "/api/v1/namespaces/_/activations", headers=_basic("x:y"))
    assert listed.status == 401 and "OpenWhisk" in listed.headers["WWW-Authenticate"]
    body = "return await ow.actions.invoke({name: 'cat', blocking: true, params: {k: 1}})"
    record = run_node(tmp_path, apihost, body, api_key=key)
    assert record["response"]["result"] == {"k": 1}
    got = run_node(
        tmp_path,
        apihost,
        f"return await ow.activations.get('{record['activationId']}')",
        api_key=key,
    )
    assert got["activationId"] == record["activationId"]
    web = gw.request("POST", "/api/v1/web/_/default/cat", body=b"public")
    assert (web.status, web.body) == (200, b"public")
    assert key.split(":")[1] not in gw.logs()


@pytest.mark.parametrize(
    ("flag", "named"),
    [("--openwhisk-wait=0s", "--openwhisk-wait"), ("--openwhisk-door=maybe", "--openwhisk-door")],
)
def test_a_malformed_door_setting_stops_the_gateway_naming_it(
    launcher: Launcher, flag: str, named: str
) -> None:
    gw = launcher.gateway(flag, wait=False)
    assert gw.proc.wait(30) == 2
    assert named in gw.logs()
