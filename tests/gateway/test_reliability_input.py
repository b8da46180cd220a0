"""Issue 16 item 6, the gateway's part: callback URLs whose host is an address in another
spelling are refused at acceptance like the dotted form; a delivery the destination policy
refuses fails at once instead of being retried; ``X-Async-Delay`` takes ASCII seconds and Go
durations only. A real gateway (a child process) in front of a real HTTP function, a real
callback receiver on loopback."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from async_helpers import Receiver, retry_policy, run
from conftest import Reply, RunningWatchdog

from watchdog.gateway.callbacks import CallbackDispatcher, CallbackPolicy, CallbackSettings
from watchdog.gateway.queue.base import ActivationRecord, AttemptResult, CallRequest
from watchdog.gateway.queue.sqlite import SqliteQueue

from .conftest import Launcher


@dataclass
class Gateways:
    """``open`` runs the default destination policy, ``private`` adds --callback-deny-private;
    both serve ``web``, the HTTP fixture function."""

    open: RunningWatchdog
    private: RunningWatchdog
    receiver: Receiver


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    launch = Launcher(tmp_path_factory.mktemp("input"))
    receiver = Receiver()
    try:
        upstream = launch.upstream()
        web = f"web=http://127.0.0.1:{upstream.port}"
        yield Gateways(
            launch.gateway("--function", web),
            launch.gateway("--function", web, "--callback-deny-private"),
            receiver,
        )
    finally:
        receiver.close()
        launch.close()


def _submit(gateway: RunningWatchdog, headers: dict[str, str]) -> Reply:
    """``POST /async-function/web/echo`` with ``headers`` sent as UTF-8 (a test may need
    characters that latin-1, http.client's own encoding, lacks)."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        conn.putrequest("POST", "/async-function/web/echo")
        for name, value in headers.items():
            conn.putheader(name, value.encode())
        conn.putheader("Content-Length", "2")
        conn.endheaders(b"hi")
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def _record(gateway: RunningWatchdog, call_id: str) -> dict[str, Any]:
    reply = gateway.request("GET", f"/system/activations/{call_id}")
    assert reply.status == 200, reply.text
    return dict(json.loads(reply.body))


def _settled_callback(gateway: RunningWatchdog, call_id: str) -> dict[str, Any]:
    """The record once its callback has been delivered or has failed for good."""
    deadline = time.monotonic() + 20
    while (record := _record(gateway, call_id))["callback"]["status"] not in (
        "delivered",
        "failed",
    ):
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
    return record


def _call_ids(gateway: RunningWatchdog) -> set[str]:
    reply = gateway.request("GET", "/system/activations?limit=1000")
    return {item["callId"] for item in json.loads(reply.body)["items"]}


# -- item 1: every spelling of a refused address is refused at acceptance --------------------

# Link-local (cloud metadata) is refused under every policy, however it is written.
METADATA_SPELLINGS = [
    "http://169.254.169.254/latest/meta-data",
    "http://0xa9fea9fe/latest/meta-data",
    "http://0XA9FEA9FE/",
    "http://2852039166/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
    "http://169.254.169.254./",
    "http://169\u3002254\u3002169\u3002254/",  # ideographic full stops: IDNA maps them to dots
    "http://[::ffff:a9fe:a9fe]/",
    "http://[fe80::1%25eth0]/",
]
# Loopback is refused under --callback-deny-private, however it is written.
LOOPBACK_SPELLINGS = [
    "http://127.0.0.1:{port}/hook",
    "http://127.1:{port}/hook",
    "http://0177.0.0.1:{port}/hook",
    "http://0x7f000001:{port}/hook",
    "http://2130706433:{port}/hook",
    "http://127.0.0.1.:{port}/hook",
    "http://127\u30020\u30020\u30021:{port}/hook",
    "http://\uff11\uff12\uff17.0.0.1:{port}/hook",  # fullwidth digits
]


def _assert_refused(gateway: RunningWatchdog, url: str) -> None:
    before = _call_ids(gateway)
    reply = _submit(gateway, {"X-Callback-Url": url})
    assert reply.status == 400, (url, reply.text)
    assert "X-Callback-Url" in reply.text
    assert "is refused" in reply.text
    assert reply.headers["X-OpenFaaS-Internal"] == "gateway"
    assert _call_ids(gateway) == before  # nothing queued


@pytest.mark.parametrize("url", METADATA_SPELLINGS)
def test_a_metadata_address_is_refused_at_acceptance_in_every_spelling(
    gateways: Gateways, url: str
) -> None:
    _assert_refused(gateways.open, url)
    _assert_refused(gateways.private, url)


@pytest.mark.parametrize("url", LOOPBACK_SPELLINGS)
def test_loopback_is_refused_under_deny_private_in_every_spelling(
    gateways: Gateways, url: str
) -> None:
    _assert_refused(gateways.private, url.format(port=gateways.receiver.port))
    assert gateways.receiver.requests == []


def test_loopback_stays_allowed_without_deny_private(gateways: Gateways) -> None:
    url = f"{gateways.receiver.url}/hook"
    reply = _submit(gateways.open, {"X-Callback-Url": url})
    assert reply.status == 202, reply.text
    record = _settled_callback(gateways.open, reply.headers["X-Call-Id"])
    assert (record["callback"]["status"], record["callback"]["attempts"]) == ("delivered", 1)


# -- item 2: a refused delivery is not retried -------------------------------------------


def test_a_delivery_the_policy_refuses_fails_at_its_first_attempt(gateways: Gateways) -> None:
    # A name passes acceptance; at delivery it resolves to loopback, which the policy refuses.
    url = f"http://localhost:{gateways.receiver.port}/hook"
    reply = _submit(gateways.private, {"X-Callback-Url": url})
    assert reply.status == 202, reply.text
    record = _settled_callback(gateways.private, reply.headers["X-Call-Id"])
    callback = record["callback"]
    assert (callback["status"], callback["attempts"], len(callback["log"])) == ("failed", 1, 1)
    assert "refused" in callback["log"][0]["error"]
    assert not any(r.headers["X-Call-Id"] == record["callId"] for r in gateways.receiver.requests)


@pytest.mark.parametrize("host", ["127.1", "0177.0.0.1", "0x7f000001", "2130706433"])
def test_a_numeric_host_the_client_cannot_use_is_refused_at_acceptance(
    gateways: Gateways, host: str
) -> None:
    # Loopback is allowed here, but the delivery client refuses these spellings every time:
    # the caller learns it from a 400 instead of a callback that can never arrive.
    _assert_refused(gateways.open, f"http://{host}:{gateways.receiver.port}/hook")
    reply = _submit(gateways.open, {"X-Callback-Url": f"http://{host}:1/hook"})
    assert "write it as 127.0.0.1" in reply.text


def test_a_stored_url_the_policy_now_refuses_fails_at_its_first_attempt(
    tmp_path: Path, gateways: Gateways
) -> None:
    """A call accepted before --callback-deny-private was turned on, with ``127.1``: the
    dispatcher refuses it once and for all (it was retried as if the error might clear)."""
    retry = retry_policy(max_attempts=5, initial_backoff=0.05, max_backoff=0.1)
    settings = CallbackSettings(
        policy=CallbackPolicy(deny_private=True), retry=retry, timeout=5, poll_interval=0.2
    )

    async def body() -> ActivationRecord:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        stop = asyncio.Event()
        task = asyncio.create_task(CallbackDispatcher(queue, settings).run(stop))
        try:
            url = f"http://127.1:{gateways.receiver.port}/hook"
            call_id = (await queue.enqueue(CallRequest("web", callback_url=url))).call_id
            leased = (await queue.lease(owner="w", limit=1, lease_for=30)).calls[0]
            now = time.time()
            await queue.complete(leased, AttemptResult(now, now, 200))
            while (record := await queue.get(call_id)) is not None and (
                record.callback_status not in ("delivered", "failed")
            ):
                assert not task.done(), task
                await asyncio.sleep(0.02)
            assert record is not None
            return record
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
            await queue.close()

    record = run(body())
    assert (record.callback_status, record.callback_attempts) == ("failed", 1)
    assert "127.1 (that is 127.0.0.1) is refused" in (record.callback_log[0].error or "")


# -- item 3: X-Async-Delay -------------------------------------------------------------------

BAD_DELAYS = [
    "1_0",
    "+5",
    "+5s",
    "-1",
    "1e3",
    "inf",
    "nan",
    "0x10",
    "1.",
    ".5",
    "5 s",
    "soon",
    "",
    "3601",
    "2h",
    "\u0663",  # ARABIC-INDIC DIGIT THREE
    "\uff13",  # FULLWIDTH DIGIT THREE
    "\u0663s",
]
GOOD_DELAYS = [("0", 0.0), ("2", 2.0), ("1.5", 1.5), ("90s", 90.0), ("1m30s", 90.0)]
GOOD_DELAYS += [("500ms", 0.5), ("1h", 3600.0), ("3600", 3600.0)]


@pytest.mark.parametrize("delay", BAD_DELAYS)
def test_a_malformed_delay_is_refused(gateways: Gateways, delay: str) -> None:
    before = _call_ids(gateways.open)
    reply = _submit(gateways.open, {"X-Async-Delay": delay})
    assert reply.status == 400, (delay, reply.text)
    assert "X-Async-Delay" in reply.text
    assert "ASCII digits" in reply.text
    assert _call_ids(gateways.open) == before


def _moment(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize(("delay", "seconds"), GOOD_DELAYS)
def test_seconds_and_go_durations_are_accepted(
    gateways: Gateways, delay: str, seconds: float
) -> None:
    reply = _submit(gateways.open, {"X-Async-Delay": delay})
    assert reply.status == 202, (delay, reply.text)
    call_id = reply.headers["X-Call-Id"]
    record = _record(gateways.open, call_id)
    if record["status"] == "queued":  # not run yet: it is due after the delay
        assert _moment(record["dueAt"]) - _moment(record["createdAt"]) == pytest.approx(
            seconds, abs=0.01
        )
        gateways.open.request("DELETE", f"/system/activations/{call_id}")
