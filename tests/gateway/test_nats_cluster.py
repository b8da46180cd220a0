"""Two gateways on a real 3-node NATS JetStream cluster (``--nats-replicas 3``) in front of
one real watchdog, losing the node that leads the call stream while clients submit.

The node is killed with SIGKILL (or frozen with SIGSTOP) and later restarted on its ports
and store (or thawed). While JetStream has no leader for the streams and buckets every
answer is a ``503`` with ``Retry-After`` within the clients' 3-s timeout (never a 500, never
a hang); ``202`` comes back after the election; records and cancellation work from both
gateways; the node's return causes no error (a thawed node may cost one more short election,
answered the same way). Afterwards every accepted call has run and
called back, nothing ran that was not accepted, and no call ran twice: a result that could
not be saved during the election is kept and saved after it, under a lease renewed
meanwhile. Each run prints a ``FAILOVER`` line with the measured seconds of ``503``.

A gateway started while only one node of three is up waits for the cluster (logging so) and
serves once the other two start.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from async_helpers import Receiver
from conftest import Reply, RunningWatchdog
from nats_cluster import ClusterNode, NatsCluster, nats_cluster

from .conftest import Launcher, _wait_for

pytest_plugins = ("async_fixtures",)
pytestmark = pytest.mark.soak  # a fault test: kills a nats-server; `-m 'not soak'` skips it

CLIENT_TIMEOUT = 3.0
PREFIX = "cl"
SUBMITTERS = 4  # client threads, spread over both gateways
PACE = 0.1
"""Seconds each client pauses between submissions: a steady load (tens of calls a second)
that two shared cores run through while three nats-servers, two gateways and the function's
watchdog share them."""
BEFORE_KILL = 24
LEASE = "15s"
"""Longer than an election (up to ~10 s) plus a third of itself: a result waiting to be saved
keeps its lease although renewing it fails while there is no leader."""
STREAMS = tuple(f"{PREFIX}_{name}" for name in ("calls", "callbacks")) + tuple(
    f"KV_{PREFIX}_{name}" for name in ("records", "idempotency")
)


@dataclass(frozen=True)
class Outcome:
    key: str
    gateway: int
    status: int
    call_id: str
    sent: float  # monotonic
    answered: float


class Clients:
    """Client threads submitting one call after another (each with a callback and an
    ``Idempotency-Key``) to both gateways, recording every answer."""

    def __init__(self, gateways: list[RunningWatchdog], callback: str) -> None:
        self.gateways = gateways
        self.callback = callback
        self.outcomes: list[Outcome] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def submit(self, gateway: int, key: str) -> Outcome:
        sent = time.monotonic()
        reply = self.gateways[gateway].request(
            "POST",
            "/async-function/fn",
            body=key.encode(),
            headers={"Idempotency-Key": key, "X-Callback-Url": self.callback},
            timeout=CLIENT_TIMEOUT,
        )
        assert reply.status in (202, 503), reply.text
        if reply.status == 503:
            _assert_unavailable(reply)
        call_id = reply.headers["X-Call-Id"]
        assert call_id and json.loads(reply.body)["callId"] == call_id, reply.text
        outcome = Outcome(key, gateway, reply.status, call_id, sent, time.monotonic())
        with self._lock:
            self.outcomes.append(outcome)
        return outcome

    def run(self, worker: int) -> None:
        n = 0
        while not self.stop.is_set():
            self.submit((worker + n) % len(self.gateways), f"w{worker}-{n}")
            n += 1
            self.stop.wait(PACE)  # load shaping, not synchronisation

    def accepted(self, since: float = 0.0) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.status == 202 and o.sent >= since]

    def refused(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.status == 503]


def _assert_unavailable(reply: Reply) -> None:
    assert reply.status == 503, reply.text
    assert reply.headers["Retry-After"], reply.headers
    assert json.loads(reply.body)["error"] == "queue_unavailable", reply.text


def _gateway(launcher: Launcher, tmp_path: Path, cluster: NatsCluster, url: str) -> RunningWatchdog:
    config = tmp_path / "gateway.yml"
    config.write_text(f"functions:\n  fn:\n    url: {url}\n")
    return launcher.gateway(
        *("--queue", "nats", "--nats-url", cluster.url, "--nats-replicas", "3"),
        *("--nats-prefix", PREFIX, "--config", str(config), "--lease", LEASE),
    )


def _function(launcher: Launcher, runs: Path) -> RunningWatchdog:
    """A ``cat`` watchdog whose handler appends its call id and end time to ``runs`` (one
    short ``O_APPEND`` write per run) just before it answers."""
    script = f'cat; echo "$Http_X_Call_Id $(date +%s.%N)" >> {runs}'
    return launcher.watchdog(fprocess=f"sh -c '{script}'")


def _runs(runs: Path) -> dict[str, list[float]]:
    ended: dict[str, list[float]] = {}
    for line in runs.read_text().splitlines():
        call_id, at = line.split()
        ended.setdefault(call_id, []).append(float(at))
    return ended


def _new_leaders(cluster: NatsCluster, lost: str) -> bool:
    leaders = [cluster.stream_leader(stream) for stream in STREAMS]
    return all(leader is not None and leader != lost for leader in leaders)


def _check_routes(gateways: list[RunningWatchdog], call_id: str, delayed: list[str]) -> None:
    """Records and cancellation from every gateway: a well-formed 503 while JetStream has no
    leader, their usual answer otherwise; never a 500 or a hang."""
    for gateway in gateways:
        for method, path, ok in (
            ("GET", f"/system/activations/{call_id}", 200),
            ("GET", "/system/stats", 200),
            ("DELETE", f"/system/activations/{delayed[0]}-none", 404),
        ):
            reply = gateway.request(method, path, timeout=CLIENT_TIMEOUT)
            if reply.status != ok:
                _assert_unavailable(reply)


def _resubmit(clients: Clients, o: Outcome, deadline: float) -> str:
    """The call a refused submission's key ended up with: submitted again until accepted."""
    while True:
        again = clients.submit(o.gateway, o.key)
        if again.status == 202:
            return again.call_id
        assert time.monotonic() < deadline, f"{o.key} still refused"
        time.sleep(0.2)


def _wait_settled(gateway: RunningWatchdog, ids: set[str], deadline: float) -> None:
    """Until every call in ``ids`` is recorded succeeded with its callback delivered."""
    while True:
        items = {i["callId"]: i for i in _all_records(gateway) if i["callId"] in ids}
        pending = {
            call_id: (item["status"], (item.get("callback") or {}).get("status"))
            for call_id, item in items.items()
            if item["status"] != "succeeded"
            or (item.get("callback") or {}).get("status") != "delivered"
        }
        if len(items) == len(ids) and not pending:
            return
        assert time.monotonic() < deadline, (set(ids) - set(items), pending)
        time.sleep(0.1)


def _all_records(gateway: RunningWatchdog) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = ""
    while True:
        reply = gateway.request("GET", f"/system/activations?limit=1000{cursor}", timeout=10)
        assert reply.status == 200, reply.text
        page = json.loads(reply.body)
        found += page["items"]
        if not page["nextCursor"]:
            return found
        cursor = f"&cursor={page['nextCursor']}"


def _span(outcomes: list[Outcome]) -> str:
    if not outcomes:
        return ""
    return f" (for {max(o.answered for o in outcomes) - min(o.answered for o in outcomes):.1f}s)"


def _lose(node: ClusterNode, how: str) -> None:
    if how == "kill":
        node.kill()
    else:
        node.freeze()


def _bring_back(node: ClusterNode, how: str) -> None:
    if how == "kill":
        node.start()  # same ports, same store
    else:
        node.thaw()


@dataclass(frozen=True)
class Timeline:
    lost_wall: float  # time.time(), to compare with the handler's end times
    lost: float  # the rest monotonic
    elected: float
    resumed: float
    returned: float


def _alive(threads: list[Future[None]]) -> None:
    """Raise what ended a client thread (a 500, a timeout), if one did."""
    for thread in threads:
        if thread.done():
            thread.result()
            raise AssertionError("a client stopped")


def _lose_and_return(
    how: str,
    cluster: NatsCluster,
    lost: ClusterNode,
    clients: Clients,
    threads: list[Future[None]],
    delayed: list[str],
    deadline: float,
) -> Timeline:
    """With the clients running: lose ``lost``, check the routes until new leaders are
    elected, wait for both gateways to accept again, cancel ``delayed`` across gateways,
    bring the node back and wait for ten acceptances after the cluster formed again."""
    gateways = clients.gateways
    while len(clients.accepted()) < BEFORE_KILL:
        assert time.monotonic() < deadline
        _alive(threads)
        time.sleep(0.005)
    lost_wall, lost_at = time.time(), time.monotonic()
    _lose(lost, how)
    try:
        some = clients.accepted()[0].call_id
        while not _new_leaders(cluster, lost.name):
            _check_routes(gateways, some, delayed)
            assert time.monotonic() < deadline, "no new leaders elected"
            _alive(threads)
            time.sleep(0.1)
        elected_at = time.monotonic()
        # Both gateways accept again, with the node still away.
        while {o.gateway for o in clients.accepted(since=elected_at)} != {0, 1}:
            assert time.monotonic() < deadline, "not accepted again"
            _alive(threads)
            time.sleep(0.02)
        resumed_at = time.monotonic()
        for g in range(2):  # cancelled from the gateway that did not accept it
            cancel = gateways[1 - g].request(
                "DELETE", f"/system/activations/{delayed[g]}", timeout=CLIENT_TIMEOUT
            )
            assert cancel.status == 200, cancel.text
            assert json.loads(cancel.body)["status"] == "cancelled"
            seen = gateways[g].request("GET", f"/system/activations/{delayed[g]}")
            assert json.loads(seen.body)["status"] == "cancelled", seen.text
    finally:
        return_at = time.monotonic()
        _bring_back(lost, how)
    cluster.wait_formed(timeout=max(1.0, deadline - time.monotonic()))
    back_at = time.monotonic()
    while len(clients.accepted(since=back_at)) < 10:
        assert time.monotonic() < deadline
        _alive(threads)
        time.sleep(0.02)
    return Timeline(lost_wall, lost_at, elected_at, resumed_at, return_at)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_losing_the_leading_node_answers_503_then_202_and_runs_every_call_once(
    how: str, launcher: Launcher, tmp_path: Path, receiver: Callable[..., Receiver]
) -> None:
    deadline = time.monotonic() + 55
    callbacks = receiver()
    runs = tmp_path / "runs.txt"
    runs.touch()
    function = _function(launcher, runs)
    with nats_cluster(tmp_path / "nats") as cluster:
        url = f"http://127.0.0.1:{function.port}"
        gateways = [_gateway(launcher, tmp_path, cluster, url) for _ in range(2)]
        clients = Clients(gateways, callbacks.url)
        delayed = []  # to cancel from the other gateway after the election
        for g in range(2):
            reply = gateways[g].request(
                "POST", "/async-function/fn", headers={"X-Async-Delay": "60"}
            )
            assert reply.status == 202, reply.text
            delayed.append(reply.headers["X-Call-Id"])
        lost = cluster.node(cluster.wait_stream_leader(STREAMS[0]))
        with ThreadPoolExecutor(SUBMITTERS) as pool:
            threads = [pool.submit(clients.run, worker) for worker in range(SUBMITTERS)]
            try:
                times = _lose_and_return(how, cluster, lost, clients, threads, delayed, deadline)
            finally:
                clients.stop.set()  # the clients stop also when the test fails
            for thread in threads:
                thread.result(timeout=CLIENT_TIMEOUT * 2)
        returned = [o for o in clients.outcomes if o.sent >= times.returned]
        refused_after = [o for o in returned if o.status != 202]
        if how == "kill":  # the restarted node catches up as a follower: no one notices
            assert not refused_after, refused_after
        # A thawed node may still think it leads, and its return can cost another short
        # election (nats-server's doing): refused as above, at once, then accepted again.

        refused = [o for o in clients.refused() if o.sent < times.returned]
        assert refused, "no submission was refused: the loss went unnoticed"
        outage = (min(o.answered for o in refused), max(o.answered for o in refused))
        final = {o.key: o.call_id for o in clients.outcomes if o.status == 202}
        for o in refused + refused_after:
            if o.key not in final:
                final[o.key] = _resubmit(clients, o, deadline)
        ids = set(final.values())
        assert len(ids) == len(final)  # one call per key
        print(
            f"\nFAILOVER ({how} {lost.name}): 503s for {outage[1] - outage[0]:.1f}s"
            f" ({len(refused)} refused, slowest answer"
            f" {max(o.answered - o.sent for o in clients.outcomes):.2f}s); leaders elected"
            f" {times.elected - times.lost:.1f}s after the {how}, both gateways accepting"
            f" {times.resumed - times.elected:.1f}s later; {len(refused_after)} refused after the"
            f" node's return{_span(refused_after)}; {len(ids)} calls accepted"
        )

        # Every accepted call runs and calls back; nothing else runs; none runs twice.
        callbacks.wait_for_calls(sorted(ids), timeout=max(1.0, deadline - time.monotonic()))
        _wait_settled(gateways[1], ids, deadline)
        ran = _runs(runs)
        assert set(ran) == ids, ("ran, not accepted", set(ran) - ids, "missing", ids - set(ran))
        twice = {call_id: ends for call_id, ends in ran.items() if len(ends) > 1}
        answered_before = {c for c, ends in twice.items() if min(ends) < times.lost_wall}
        assert not answered_before, f"answered before the {how}, then ran again: {answered_before}"
        assert not twice, f"ran twice: {twice}"
        delivered = Counter(r.headers["X-Call-Id"] for r in callbacks.requests)
        assert delivered.keys() == ids
        # Callbacks are at-least-once (a delivery whose outcome could not be recorded within
        # its lease is made again): reported, not asserted.
        print(f"FAILOVER callbacks delivered twice: {sum(n - 1 for n in delivered.values())}")
        for gateway in gateways:
            assert gateway.proc.poll() is None
            assert "Traceback" not in gateway.logs(), gateway.logs()


@pytest.mark.timeout(60)
def test_a_gateway_started_on_one_node_of_three_waits_for_the_cluster(
    launcher: Launcher, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.txt"
    runs.touch()
    function = _function(launcher, runs)
    with nats_cluster(tmp_path / "nats", start=False) as cluster:
        cluster.nodes[0].start()
        config = tmp_path / "gateway.yml"
        config.write_text(f"functions:\n  fn:\n    url: http://127.0.0.1:{function.port}\n")
        gateway = launcher.gateway(
            *("--queue", "nats", "--nats-url", cluster.nodes[0].url, "--nats-replicas", "3"),
            *("--nats-prefix", PREFIX, "--config", str(config)),
            wait=False,
        )
        gateway.wait_for_log("waiting for NATS", timeout=20)
        assert gateway.proc.poll() is None, gateway.logs()
        for node in cluster.nodes[1:]:
            node.start()
        _wait_for(gateway, "/healthz", timeout=40)
        reply = gateway.request("POST", "/async-function/fn", body=b"hello")
        assert reply.status == 202, reply.text
        call_id = reply.headers["X-Call-Id"]
        deadline = time.monotonic() + 20
        while call_id not in _runs(runs):
            assert time.monotonic() < deadline, gateway.logs()
            time.sleep(0.05)
        assert "Traceback" not in gateway.logs(), gateway.logs()
