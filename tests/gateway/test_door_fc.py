"""The Alibaba Function Compute front door, driven by the real Python SDK ``aliyun-fc2``
(``import fc2``) against the real gateway in front of real watchdogs."""

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

import fc2
import pytest
import requests
from conftest import FIXTURES, PYTHON, RunningWatchdog

from .conftest import Launcher

TASKS = "/2016-08-15/services/default/functions/cat/stateful-async-invocations"


@dataclass
class FcWorld:
    gateway: RunningWatchdog

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    def client(self, key_id: str = "any-id", secret: str = "any-secret") -> fc2.Client:
        return fc2.Client(endpoint=self.endpoint, accessKeyID=key_id, accessKeySecret=secret)

    def record(self, call_id: str) -> dict[str, Any]:
        reply = self.gateway.request("GET", f"/system/activations/{call_id}")
        assert reply.status == 200, reply.text
        return dict(json.loads(reply.body))

    def get_json(self, path: str) -> tuple[int, Any]:
        reply = self.gateway.request("GET", path)
        assert reply.headers["Content-Type"] == "application/json", reply.text
        return reply.status, json.loads(reply.body)

    def task_until(self, path: str, status: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            code, task = self.get_json(path)
            assert code == 200, task
            if task["status"] == status:
                return dict(task)
            assert time.monotonic() < deadline, task
            time.sleep(0.05)


def fc_world(launch: Launcher, directory: Path, *args: str, **env: str) -> RunningWatchdog:
    """A gateway in front of ``cat`` (echoes the payload), ``fail`` (exits 3: a 500),
    ``echo`` (an HTTP function that sets headers), ``lost`` (answers 404), ``inspect`` (shows
    the request it got) and ``tools`` in namespace ``staging``."""
    cat = launch.watchdog(fprocess="cat")
    fail = launch.watchdog(fprocess=f"{PYTHON} {FIXTURES / 'fail.py'}")
    upstream = launch.upstream()
    functions = directory / "gateway.yml"
    functions.write_text(
        textwrap.dedent(
            f"""\
            functions:
              cat: {{url: "http://127.0.0.1:{cat.port}"}}
              fail: {{url: "http://127.0.0.1:{fail.port}", max_attempts: 1}}
              echo: {{url: "http://127.0.0.1:{upstream.port}/echo"}}
              lost: {{url: "http://127.0.0.1:{upstream.port}/nothing"}}
              inspect: {{url: "http://127.0.0.1:{upstream.port}/inspect"}}
              tools: {{url: "http://127.0.0.1:{cat.port}", namespace: staging}}
            """
        )
    )
    return launch.gateway("--config", str(functions), *args, **env)


@pytest.fixture(scope="module")
def fc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FcWorld]:
    directory = tmp_path_factory.mktemp("fc")
    launch = Launcher(directory)
    try:
        yield FcWorld(fc_world(launch, directory))
    finally:
        launch.close()


def test_a_synchronous_invoke_answers_the_functions_status_headers_and_body(fc: FcWorld) -> None:
    client = fc.client()
    answer = client.invoke_function("default", "cat", payload=b'{"who": "ada"}')
    assert answer.data == b'{"who": "ada"}'
    assert re.fullmatch(r"[0-9a-f-]{36}", answer.headers["X-Fc-Request-Id"])
    assert "X-Fc-Error-Type" not in answer.headers
    echoed = client.invoke_function("default", "echo", payload=b"hello", headers={"X-Mine": "1"})
    assert echoed.data == b"hello"
    assert echoed.headers["X-Upstream"] == "http"  # the function's own headers
    assert "a=1" in echoed.headers["Set-Cookie"]
    # a qualifier is accepted and ignored; another service is that namespace
    tools = client.invoke_function("staging", "tools", payload=b"staged", qualifier="LATEST")
    assert tools.data == b"staged"
    metrics = fc.gateway.request("GET", "/metrics").text
    assert re.search(
        r'gateway_function_invocation_total\{[^}]*function_name="cat.openfaas-fn"', metrics
    )


def test_the_function_gets_the_payload_and_the_request_id_but_not_the_signature(
    fc: FcWorld,
) -> None:
    answer = fc.client("akid", "secret").invoke_function(
        "default", "inspect", payload=b"12345", headers={"X-Fc-Request-Id": "req-7", "X-Mine": "1"}
    )
    seen = json.loads(answer.data)
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert seen["method"] == "POST" and seen["raw_path"] == "/inspect/"
    assert seen["body_length"] == 5 and headers["content-type"] == "application/json"
    assert headers["x-fc-request-id"] == "req-7" and headers["x-mine"] == "1"
    assert "authorization" not in headers and "x-fc-invocation-type" not in headers
    assert answer.headers["X-Fc-Request-Id"] == "req-7"


def test_log_type_tail_answers_an_empty_log_result(fc: FcWorld) -> None:
    answer = fc.client().invoke_function(
        "default", "cat", payload=b"x", headers={"x-fc-log-type": "Tail"}
    )
    assert answer.headers["X-Fc-Log-Result"] == ""
    assert base64.b64decode(answer.headers["X-Fc-Log-Result"]) == b""


def test_a_failing_function_raises_fcerror_with_its_status_and_error_type(fc: FcWorld) -> None:
    with pytest.raises(fc2.FcError) as failed:
        fc.client().invoke_function("default", "fail", payload=b"{}")
    assert failed.value.status_code == 500
    assert failed.value.err_code == "UnhandledInvocationError"
    assert "exit status 3" in failed.value.message
    with pytest.raises(fc2.FcError) as handled:
        fc.client().invoke_function("default", "lost", payload=b"{}")
    assert handled.value.status_code == 404
    assert handled.value.err_code == "HandledInvocationError"
    reply = fc.gateway.request(
        "POST", "/2016-08-15/services/default/functions/fail/invocations", body=b"{}"
    )
    assert reply.status == 500 and reply.headers["X-Fc-Error-Type"] == "UnhandledInvocationError"
    assert json.loads(reply.body) == {
        "ErrorCode": "UnhandledInvocationError",
        "ErrorMessage": "exit status 3\n",  # the function's text body, in FC's error shape
    }
    assert reply.headers["X-Call-Id"] and reply.headers["X-Fc-Request-Id"]


def test_an_asynchronous_invoke_is_queued_and_is_an_ordinary_call(fc: FcWorld) -> None:
    answer = fc.client().invoke_function(
        "default", "cat", payload=b"later", headers={"x-fc-invocation-type": "Async"}
    )
    assert answer.data == b""
    call_id = answer.headers["X-Fc-Request-Id"]
    assert answer.headers["X-Call-Id"] == call_id
    deadline = time.monotonic() + 20
    while (record := fc.record(call_id))["status"] != "succeeded":
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
    assert record["function"] == "cat.openfaas-fn" and record["response"]["body"] == "later"


def test_an_async_delay_defers_the_call_and_a_stop_cancels_it(fc: FcWorld) -> None:
    answer = fc.client().invoke_function(
        "default",
        "cat",
        payload=b"much later",
        headers={"x-fc-invocation-type": "Async", "x-fc-async-delay": "3600"},
    )
    call_id = answer.headers["X-Fc-Request-Id"]
    record = fc.record(call_id)
    assert record["status"] == "queued"
    created = time.mktime(time.strptime(record["createdAt"][:19], "%Y-%m-%dT%H:%M:%S"))
    due = time.mktime(time.strptime(record["dueAt"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert 3599 <= due - created <= 3601
    code, task = fc.get_json(f"{TASKS}/{call_id}")
    assert code == 200 and task["status"] == "Enqueued"
    stopped = fc.gateway.request("PUT", f"{TASKS}/{call_id}")
    assert stopped.status == 200 and json.loads(stopped.body) == {}
    code, task = fc.get_json(f"{TASKS}/{call_id}")
    assert task["status"] == "Stopped" and task["events"][-1]["status"] == "Stopped"
    again = fc.gateway.request("PUT", f"{TASKS}/{call_id}")
    assert again.status == 400 and json.loads(again.body)["ErrorCode"] == "InvalidArgument"
    # FC 3.0's stop
    later = fc.client().invoke_function(
        "default",
        "cat",
        payload=b"",
        headers={"x-fc-invocation-type": "Async", "x-fc-async-delay": "600"},
    )
    task_id = later.headers["X-Fc-Request-Id"]
    v3 = f"/2023-03-30/functions/cat/async-tasks/{task_id}"
    assert fc.gateway.request("PUT", f"{v3}/stop").status == 200
    assert fc.get_json(v3)[1]["status"] == "Stopped"


def test_a_named_task_is_read_back_until_it_succeeded(fc: FcWorld) -> None:
    client = fc.client()
    headers = {"x-fc-invocation-type": "Async", "x-fc-stateful-async-invocation-id": "job_1"}
    answer = client.invoke_function("default", "cat", payload=b'{"n": 1}', headers=headers)
    assert answer.headers["X-Fc-Request-Id"] == "job_1"
    task = fc.task_until(f"{TASKS}/job_1", "Succeeded")
    assert task["invocationId"] == "job_1" and task["functionName"] == "cat"
    assert task["serviceName"] == "default" and task["qualifier"] == "LATEST"
    assert task["returnPayload"] == '{"n": 1}' and task["alreadyRetriedTimes"] == 0
    assert [event["status"] for event in task["events"]] == ["Enqueued", "Running", "Succeeded"]
    assert task["endTime"] >= task["startedTime"]
    assert fc.record("job_1")["status"] == "succeeded"  # the same call, by the same id
    # the id is taken now: FC's 409
    with pytest.raises(fc2.FcError) as refused:
        client.invoke_function("default", "cat", payload=b"{}", headers=headers)
    assert refused.value.status_code == 409
    assert refused.value.err_code == "StatefulAsyncInvocationAlreadyExists"
    # FC 3.0's names for the same
    code, shown = fc.get_json("/2023-03-30/functions/cat/async-tasks/job_1")
    assert code == 200 and shown["taskId"] == "job_1" and shown["status"] == "Succeeded"


def test_tasks_are_listed_by_status_prefix_time_and_page(fc: FcWorld) -> None:
    client = fc.client()
    for n in (1, 2, 3):
        headers = {"x-fc-invocation-type": "Async", "x-fc-async-task-id": f"page_{n}"}
        client.invoke_function("default", "cat", payload=b"p", headers=headers)
    for n in (1, 2, 3):
        fc.task_until(f"{TASKS}/page_{n}", "Succeeded")
    code, first = fc.get_json(f"{TASKS}?invocationIdPrefix=page_&limit=2&status=Succeeded")
    assert code == 200
    assert [task["invocationId"] for task in first["invocations"]] == ["page_3", "page_2"]
    code, rest = fc.get_json(
        f"{TASKS}?invocationIdPrefix=page_&limit=2&nextToken={first['nextToken']}"
    )
    assert [task["invocationId"] for task in rest["invocations"]] == ["page_1"]
    assert rest["nextToken"] is None
    begin = first["invocations"][1]["startedTime"]
    code, oldest = fc.get_json(
        f"/2023-03-30/functions/cat/async-tasks?prefix=page_&sortOrderByTime=asc"
        f"&startedTimeBegin={begin}&includePayload=true"
    )
    assert [task["taskId"] for task in oldest["tasks"]] == ["page_2", "page_3"]
    assert oldest["tasks"][0]["returnPayload"] == "p"
    code, none = fc.get_json(f"{TASKS}?invocationIdPrefix=page_&status=Failed")
    assert none == {"invocations": [], "nextToken": None}


def test_an_unknown_function_raises_fcerror_function_not_found(fc: FcWorld) -> None:
    with pytest.raises(fc2.FcError) as missing:
        fc.client().invoke_function("default", "nope", payload=b"{}")
    assert missing.value.status_code == 404 and missing.value.err_code == "FunctionNotFound"
    assert missing.value.request_id != "unknown"
    with pytest.raises(fc2.FcError) as service:
        fc.client().invoke_function("no-such-service", "cat", payload=b"{}")
    assert service.value.err_code == "ServiceNotFound"
    code, body = fc.get_json(f"{TASKS}/never-there")
    assert code == 404 and body["ErrorCode"] == "StatefulAsyncInvocationNotFound"


def _calls(fc: FcWorld) -> int:
    reply = fc.gateway.request("GET", "/system/activations?function=cat&limit=1000")
    return len(json.loads(reply.body)["items"])


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ({"X-Fc-Invocation-Type": "Later"}, "must be Sync or Async"),
        ({"X-Fc-Invocation-Type": "Async", "X-Fc-Async-Delay": "3601"}, "from 0 to 3600"),
        ({"X-Fc-Invocation-Type": "Async", "X-Fc-Async-Delay": "1.5"}, "whole seconds"),
        ({"X-Fc-Invocation-Type": "Async", "X-Fc-Async-Task-Id": "1abc"}, "starting with"),
        ({"X-Fc-Invocation-Type": "Async", "X-Fc-Async-Task-Id": "a" * 129}, "at most 128"),
    ],
)
def test_bad_input_is_fcs_invalid_argument_and_queues_nothing(
    fc: FcWorld, headers: dict[str, str], needle: str
) -> None:
    before = _calls(fc)
    reply = fc.gateway.request(
        "POST",
        "/2016-08-15/services/default/functions/cat/invocations",
        body=b"{}",
        headers=headers,
    )
    assert reply.status == 400 and reply.headers["Content-Type"] == "application/json"
    error = json.loads(reply.body)
    assert error["ErrorCode"] == "InvalidArgument" and needle in error["ErrorMessage"]
    assert _calls(fc) == before


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "status=Sleeping", "nextToken=x", "sortOrderByTime=up"]
)
def test_bad_list_parameters_are_invalid_argument(fc: FcWorld, query: str) -> None:
    code, error = fc.get_json(f"{TASKS}?{query}")
    assert code == 400 and error["ErrorCode"] == "InvalidArgument"


def test_fc_3_invokes_and_unknown_routes_are_fc_errors(fc: FcWorld) -> None:
    reply = fc.gateway.request("POST", "/2023-03-30/functions/cat/invocations", body=b"v3")
    assert reply.status == 200 and reply.body == b"v3"
    code, error = fc.get_json("/2016-08-15/services/default/functions/cat/triggers")
    assert code == 404 and error["ErrorCode"] == "PathNotFound"
    wrong = fc.gateway.request("GET", "/2016-08-15/services/default/functions/cat/invocations")
    assert wrong.status == 405 and json.loads(wrong.body)["ErrorCode"] == "MethodNotAllowed"


def _signed_get(
    world: FcWorld, client: fc2.Client, path: str, params: dict[str, str] | None = None
) -> requests.Response:
    """A GET signed by the SDK's own code (it has no task methods), as it signs its list
    calls: the path unescaped, the query parameters as sorted ``k=v`` lines."""
    headers = client._build_common_headers("GET", path, {}, params)
    return requests.get(world.endpoint + path, params=params, headers=headers, timeout=30)


def test_with_access_keys_a_wrong_secret_is_refused(launcher: Launcher, tmp_path: Path) -> None:
    keys = tmp_path / "fc-keys"
    keys.write_text("akid-2:other\n")
    world = FcWorld(
        fc_world(
            launcher,
            tmp_path,
            "--fc-access-keys",
            "akid-1:s3cret",
            fc_access_keys_file=str(keys),
        )
    )
    with pytest.raises(fc2.FcError) as refused:
        world.client("akid-1", "wrong").invoke_function("default", "cat", payload=b"{}")
    assert refused.value.status_code == 403 and refused.value.err_code == "SignatureNotMatch"
    with pytest.raises(fc2.FcError) as unknown:
        world.client("akid-9", "s3cret").invoke_function("default", "cat", payload=b"{}")
    assert unknown.value.err_code == "SignatureNotMatch"
    right = world.client("akid-1", "s3cret")
    assert right.invoke_function("default", "cat", payload=b"ok").data == b"ok"
    async_headers = {"x-fc-invocation-type": "Async", "x-fc-async-task-id": "signed_1"}
    world.client("akid-2", "other").invoke_function("default", "cat", b"s", async_headers)
    deadline = time.monotonic() + 20
    while (task := _signed_get(world, right, f"{TASKS}/signed_1").json())["status"] != "Succeeded":
        assert time.monotonic() < deadline, task
        time.sleep(0.05)
    unsigned = world.gateway.request("GET", f"{TASKS}/signed_1")
    assert unsigned.status == 403 and json.loads(unsigned.body)["ErrorCode"] == "SignatureNotMatch"
    assert "s3cret" not in world.gateway.logs()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_with_basic_auth_the_task_routes_need_credentials(
    launcher: Launcher, tmp_path: Path
) -> None:
    gateway = fc_world(
        launcher, tmp_path, basic_auth="true", basic_auth_user="admin", basic_auth_password="pw"
    )
    world = FcWorld(gateway)
    headers = {"x-fc-invocation-type": "Async", "x-fc-async-task-id": "guarded_1"}
    world.client().invoke_function("default", "cat", payload=b"g", headers=headers)  # open
    refused = gateway.request("GET", f"{TASKS}/guarded_1")
    assert refused.status == 401 and json.loads(refused.body)["ErrorCode"] == "AccessDenied"
    assert refused.headers["X-Fc-Request-Id"] and "Basic" in refused.headers["WWW-Authenticate"]
    encoded = gateway.request("GET", TASKS.replace("stateful", "%73tateful") + "/guarded_1")
    assert encoded.status == 401  # decoded before it is classified, as when it is routed
    stop = gateway.request("PUT", f"{TASKS}/guarded_1")
    assert stop.status == 401
    allowed = gateway.request("GET", f"{TASKS}/guarded_1", headers=_basic("admin", "pw"))
    assert allowed.status == 200 and json.loads(allowed.body)["invocationId"] == "guarded_1"


def test_with_basic_auth_and_access_keys_a_signature_stands_in(
    launcher: Launcher, tmp_path: Path
) -> None:
    gateway = fc_world(
        launcher,
        tmp_path,
        "--fc-access-keys",
        "akid:key",
        basic_auth_invoke="true",
        basic_auth_user="admin",
        basic_auth_password="pw",
    )
    world = FcWorld(gateway)
    client = world.client("akid", "key")
    assert client.invoke_function("default", "cat", payload=b"in").data == b"in"
    listed = _signed_get(world, client, TASKS, {"limit": "1", "sortOrderByTime": "asc"})
    assert listed.status_code == 200 and listed.json()["invocations"] == []
    raw = gateway.request(
        "POST", "/2023-03-30/functions/cat/invocations", body=b"{}", headers=_basic("admin", "pw")
    )
    assert raw.status == 403  # the door's keys are set: its requests must be signed


def test_the_door_can_be_turned_off(launcher: Launcher) -> None:
    cat = launcher.watchdog(fprocess="cat")
    gateway = launcher.gateway("--function", f"cat=http://127.0.0.1:{cat.port}", "--fc-door=false")
    reply = gateway.request("POST", "/2023-03-30/functions/cat/invocations", body=b"{}")
    assert reply.status == 404 and reply.text == "Not Found\n"
    assert "Front door: fc" not in gateway.logs() and "Front door: openwhisk" in gateway.logs()


@pytest.mark.parametrize(
    ("flag", "named"),
    [
        ("--fc-access-keys=akid:s3cret,broken", "fc_access_keys is invalid (value not shown)"),
        ("--fc-access-keys-file=/nonexistent/keys", "fc_access_keys_file"),
        ("--fc-default-service=a.b", "--fc-default-service"),
    ],
)
def test_a_malformed_door_setting_stops_the_gateway_naming_it(
    launcher: Launcher, flag: str, named: str
) -> None:
    gateway = launcher.gateway(flag, wait=False)
    assert gateway.proc.wait(30) == 2
    assert named in gateway.logs() and "s3cret" not in gateway.logs()
