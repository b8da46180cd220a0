"""The system API, basic auth and configuration errors of the real gateway process."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from conftest import PYTHON, ROOT

from .conftest import Launcher, World


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_system_functions_has_the_openfaas_shape(world: World) -> None:
    reply = world.gateway.request("GET", "/system/functions")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    functions = {fn["name"]: fn for fn in json.loads(reply.body)}
    # the default namespace only, as OpenFaaS lists one namespace at a time
    assert set(functions) == {"cat", "down", "env", "limited", "slow", "web"}
    for fn in functions.values():
        assert fn["namespace"] == "openfaas-fn"
        assert isinstance(fn["image"], str)
        assert isinstance(fn["invocationCount"], float)
        assert fn["replicas"] == 1 and fn["availableReplicas"] == 1
        assert fn["createdAt"].endswith("Z")
        assert isinstance(fn["labels"], dict) and isinstance(fn["annotations"], dict)
    env = functions["env"]
    assert env["image"] == "ghcr.io/example/env:1.0"
    assert env["envProcess"] == "env"
    assert env["labels"] == {"team": "core"}
    assert env["annotations"] == {"com.example/owner": "ada"}
    assert env["envVars"] == {"LEVEL": "debug"}
    staging = json.loads(world.gateway.request("GET", "/system/functions?namespace=staging").body)
    assert [fn["name"] for fn in staging] == ["staged"]


def test_system_function_counts_invocations(world: World) -> None:
    def count() -> float:
        reply = world.gateway.request("GET", "/system/function/env")
        assert reply.status == 200
        return float(json.loads(reply.body)["invocationCount"])

    before = count()
    world.gateway.request("GET", "/function/env")
    world.gateway.request("GET", "/function/env.openfaas-fn")
    assert count() == before + 2
    reply = world.gateway.request("GET", "/system/function/staged?namespace=staging")
    assert json.loads(reply.body)["namespace"] == "staging"
    assert world.gateway.request("GET", "/system/function/nosuch").status == 404
    assert world.gateway.request("GET", "/system/function/Bad").status == 400


def test_info_healthz_and_unknown_routes(world: World) -> None:
    info = json.loads(world.gateway.request("GET", "/system/info").body)
    assert info["provider"]["provider"] == "fwatchdog"
    assert info["version"]["release"]
    assert world.gateway.request("GET", "/healthz").status == 200
    assert world.gateway.request("GET", "/nowhere").status == 404
    assert world.gateway.request("GET", "/system/nowhere").status == 404
    reply = world.gateway.request("POST", "/system/functions", body=b"{}")
    assert (reply.status, reply.headers["Allow"]) == (405, "GET, HEAD")


def test_basic_auth_from_secret_files_guards_system_routes(
    launcher: Launcher, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "basic-auth-user").write_text("admin\n")
    (secrets / "basic-auth-password").write_text("s3cret\n")
    cat = launcher.watchdog(fprocess="cat")
    gw = launcher.gateway(
        "--function",
        f"cat=http://127.0.0.1:{cat.port}",
        basic_auth="true",
        secret_mount_path=str(secrets),
    )
    for headers in ({}, basic("admin", "wrong"), basic("other", "s3cret"), {"Authorization": "x"}):
        reply = gw.request("GET", "/system/functions", headers=headers)
        assert reply.status == 401
        assert reply.headers["WWW-Authenticate"] == 'Basic realm="Restricted"'
    assert gw.request("GET", "/system/functions", headers=basic("admin", "s3cret")).status == 200
    assert gw.request("GET", "/system/info", headers=basic("admin", "s3cret")).status == 200
    # invocation, health and metrics stay open
    assert gw.request("POST", "/function/cat", body=b"open").body == b"open"
    assert gw.request("GET", "/healthz").status == 200


def test_basic_auth_from_the_environment_can_guard_invocations(launcher: Launcher) -> None:
    cat = launcher.watchdog(fprocess="cat")
    gw = launcher.gateway(
        "--function",
        f"cat=http://127.0.0.1:{cat.port}",
        "--basic-auth-invoke",
        basic_auth_user="ci",
        basic_auth_password="pa:ss",
    )
    reply = gw.request("POST", "/function/cat", body=b"x")
    assert reply.status == 401 and reply.headers["WWW-Authenticate"]
    reply = gw.request("POST", "/function/cat", body=b"x", headers=basic("ci", "pa:ss"))
    assert (reply.status, reply.body) == (200, b"x")
    # only invocations were asked for
    assert gw.request("GET", "/system/functions").status == 200


def test_every_configuration_problem_is_reported_at_once(tmp_path: Path) -> None:
    functions = tmp_path / "gateway.yml"
    functions.write_text(
        "functions:\n  good:\n    url: http://127.0.0.1:1\n"
        "  bad:\n    url: ftp://x\n    timeot: 5s\n    max_concurrency: -1\n"
    )
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "watchdog",
            "gateway",
            "--port",
            "nope",
            "--config",
            str(functions),
            "--function",
            "Bad=http://127.0.0.1:1",
            "--function",
            "good=http://127.0.0.1:2",
            "--frobnicate",
        ],
        env={
            "PYTHONPATH": str(ROOT),
            "upstream_timeout": "soon",
            "basic_auth": "true",
            "secret_mount_path": str(tmp_path / "missing"),
        },  # fmt: skip
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    err = result.stderr
    for needle in (
        "--port='nope'",
        "upstream_timeout='soon'",
        "functions.bad.url='ftp://x'",
        "unknown key(s) timeot",
        "functions.bad.max_concurrency=-1",
        "--function 'Bad=http://127.0.0.1:1'",
        "function good.openfaas-fn is already defined",
        "unknown argument '--frobnicate'",
        "basic-auth-user cannot be read",
    ):
        assert needle in err, (needle, err)
    prefix = "fwatchdog gateway: configuration error: "
    assert all(line.startswith(prefix) for line in err.splitlines())


def test_help_and_a_bare_fwatchdog_stays_the_watchdog() -> None:
    env = {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [PYTHON, "-m", "watchdog", "gateway", "--help"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and "--upstream-timeout" in result.stdout
    result = subprocess.run([PYTHON, "-m", "watchdog"], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "fprocess is required" in result.stderr
