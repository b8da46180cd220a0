"""Issue 16 item 3: every route that reads or changes call records needs the credentials of
``/system/*``, whatever its path (``DELETE /async-function/ID`` was an anonymous alias)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from .conftest import Launcher, RunningWatchdog

CREDENTIALS = {"Authorization": "Basic " + base64.b64encode(b"admin:s3cret").decode()}


@pytest.fixture
def guarded(launcher: Launcher, tmp_path: Path) -> tuple[RunningWatchdog, str]:
    """A gateway under --basic-auth with one call queued for a minute."""
    cat = launcher.watchdog(fprocess="cat")
    gw = launcher.gateway(
        "--function",
        f"cat=http://127.0.0.1:{cat.port}",
        "--queue-path",
        str(tmp_path / "queue.db"),
        basic_auth="true",
        basic_auth_user="admin",
        basic_auth_password="s3cret",
    )
    reply = gw.request(
        "POST", "/async-function/cat?secret=1", body=b"x", headers={"X-Async-Delay": "60"}
    )
    assert reply.status == 202
    return gw, reply.headers["X-Call-Id"]


RECORD_ROUTES = [
    ("DELETE", "/async-function/{id}"),
    ("DELETE", "/system/activations/{id}"),
    ("GET", "/system/activations/{id}"),
    ("GET", "/system/activations/{id}/result"),
    ("GET", "/system/activations"),
    ("HEAD", "/system/activations"),
]


@pytest.mark.parametrize(("method", "path"), RECORD_ROUTES)
def test_a_record_route_refuses_an_anonymous_caller(
    guarded: tuple[RunningWatchdog, str], method: str, path: str
) -> None:
    gw, call_id = guarded
    reply = gw.request(method, path.format(id=call_id))
    assert reply.status == 401
    assert b"secret" not in reply.body
    # the call is untouched: still queued, as an authorised reader sees
    record = gw.request("GET", f"/system/activations/{call_id}", headers=CREDENTIALS)
    assert json.loads(record.body)["status"] == "queued"


def test_an_authorised_caller_cancels_through_the_openfaas_path(
    guarded: tuple[RunningWatchdog, str],
) -> None:
    gw, call_id = guarded
    reply = gw.request("DELETE", f"/async-function/{call_id}", headers=CREDENTIALS)
    assert reply.status == 200
    record = gw.request("GET", f"/system/activations/{call_id}", headers=CREDENTIALS)
    assert json.loads(record.body)["status"] == "cancelled"
