"""Scenario 8, the queue backends side by side (issue 18): SQLite, NATS on one node, NATS on
a 3-node cluster with ``--nats-replicas 3``; one gateway and two.

Acceptances (concurrency 32 in all, split evenly between the gateways): wrk POSTs small calls
to ``/async-function/echo`` with ``X-Async-Delay: 3600`` (the workers leave them alone); each
202 comes once the record and the call's job are durable. CPU per call is the gateways'
together (psutil), and for NATS the nats-servers' together.

Completions: N calls are stored first through the queue API (as the gateway's route stores
them), then the gateways start and their workers (32 each) run them to one ``cat`` watchdog;
the time is from the first gateway answering ``/healthz`` until the watchdog has answered N
(counted on its ``http_requests_total``).

Every row is measured in ROUNDS interleaved rounds and the round of median calls/s is kept:
single runs on a shared machine swing by a third from one minute to the next.

Every nats-server is started by the bench in its own directory and reaped at the end (the
launchers of the tests: ``tests/nats_server.py``, ``tests/nats_cluster.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvloop

from .. import wrk
from ..async_drain import fill
from ..procs import (
    Children,
    Meter,
    Service,
    base_env,
    free_port,
    fwatchdog_command,
    tests_on_path,
    wait_http,
    wait_idle,
)
from ..report import Measurement, Run
from .async_calls import FUNCTION, NAMESPACE, served
from .common import ROUNDS, Settings, median_round

ACCEPT = "8 queue accept"
DRAIN = "8 queue drain"
CONCURRENCY = 32
ACCEPT_BODY = 64
DRAIN_BODY = 64
DRAIN_CALLS = 2_000
REPLICAS = 3


@dataclass(frozen=True)
class Backend:
    """Where the gateways keep calls: their queue options and the servers' processes."""

    name: str
    options: list[str]
    server_pids: list[int]
    nats_url: str = ""
    replicas: int = 1


def label(backend: Backend, gateways: int) -> str:
    return f"{backend.name}, {'one gateway' if gateways == 1 else f'{gateways} gateways'}"


def run(result: Run, settings: Settings, run_dir: Path) -> None:
    """Every row ROUNDS times, the rounds interleaved (each round runs every backend in turn,
    so a change in the shared machine's load moves them all); per row, the round of median
    calls/s, with every round's figures in its ``extra``."""
    rows: dict[tuple[str, str], list[Measurement]] = {}
    for round_ in range(1, ROUNDS + 1):
        for make, counts in ((sqlite, (1,)), (nats_single, (1, 2)), (nats_cluster, (1, 2))):
            for gateways in counts:
                where = run_dir / f"round{round_}-{make.__name__}"
                with make(where / f"accept-{gateways}") as backend:
                    measured = accept(backend, gateways, settings, run_dir)
                rows.setdefault((measured.scenario, measured.path), []).append(measured)
                with make(where / f"drain-{gateways}") as backend:
                    measured = drain(backend, gateways, run_dir)
                rows.setdefault((measured.scenario, measured.path), []).append(measured)
    for rounds in rows.values():
        result.add(median_round(rounds))


@contextmanager
def sqlite(workdir: Path) -> Iterator[Backend]:
    workdir.mkdir(parents=True, exist_ok=True)
    yield Backend("SQLite", ["--queue-path", str(workdir / "queue.db")], [])


@contextmanager
def nats_single(workdir: Path) -> Iterator[Backend]:
    tests_on_path()
    from nats_server import start_nats_server

    server = start_nats_server(workdir)
    try:
        yield Backend(
            "NATS 1 node", ["--queue", "nats", "--nats-url", server.url], [server.proc.pid],
            server.url,
        )  # fmt: skip
    finally:
        server.stop()


@contextmanager
def nats_cluster(workdir: Path) -> Iterator[Backend]:
    tests_on_path()
    from nats_cluster import nats_cluster as cluster_of

    with cluster_of(workdir) as cluster:
        pids = [node.proc.pid for node in cluster.nodes if node.proc is not None]
        options = ["--queue", "nats", "--nats-url", cluster.url]
        yield Backend(
            f"NATS 3 nodes R{REPLICAS}", options + ["--nats-replicas", str(REPLICAS)], pids,
            cluster.url, REPLICAS,
        )  # fmt: skip


def start_gateways(
    children: Children, run_dir: Path, backend: Backend, function_url: str, count: int
) -> list[Service]:
    started = []
    for n in range(count):
        port = free_port()
        argv = fwatchdog_command() + [
            "gateway",
            "--port", str(port),
            "--function", f"{FUNCTION}={function_url}",
            "--async-concurrency", str(CONCURRENCY),
            *backend.options,
        ]  # fmt: skip
        env = base_env(run_dir, port=str(port))
        started.append(children.start(f"gateway{n + 1}", argv, env, port))
    return started


class Meters:
    """CPU seconds of several processes over one ``with`` block."""

    def __init__(self, pids: list[int]) -> None:
        self.meters = [Meter(pid) for pid in pids]
        self._stack = ExitStack()

    def __enter__(self) -> Meters:
        for meter in self.meters:
            self._stack.enter_context(meter)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def cpu_seconds(self) -> float:
        return sum(m.usage.cpu_seconds for m in self.meters if m.usage is not None)


def _per_call_ms(seconds: float, calls: int) -> float:
    return round(seconds * 1000 / max(calls, 1), 4)


def accept(backend: Backend, gateways: int, settings: Settings, run_dir: Path) -> Measurement:
    with Children(run_dir) as children:
        watchdog = children.watchdog("accept-watchdog", fprocess="cat")
        started = start_gateways(children, run_dir, backend, watchdog.url, gateways)
        for gateway in started:
            wait_http(gateway, "/healthz", timeout=60)
        delayed = {"X-Async-Delay": "3600"}
        for gateway in started:  # a first call sets up the client pools, streams, buckets
            wrk.run(
                f"{gateway.url}/async-function/{FUNCTION}", connections=4, seconds=1,
                method="POST", body_size=ACCEPT_BODY, headers=delayed,
            )  # fmt: skip
        for gateway in started:
            wait_idle(gateway.pid)
        results: list[wrk.WrkResult] = []

        def load(gateway: Service) -> Callable[[], None]:
            def go() -> None:
                results.append(
                    wrk.run(
                        f"{gateway.url}/async-function/{FUNCTION}",
                        connections=CONCURRENCY // gateways, seconds=settings.async_seconds,
                        method="POST", body_size=ACCEPT_BODY, headers=delayed,
                    )
                )  # fmt: skip

            return go

        threads = [threading.Thread(target=load(g)) for g in started]
        with Meters([g.pid for g in started]) as gw, Meters(backend.server_pids) as servers:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if len(results) != gateways:
            raise RuntimeError("a wrk load failed")
        requests = sum(r.requests for r in results)
        seconds = max(r.seconds for r in results)
        return Measurement(
            ACCEPT,
            label(backend, gateways),
            CONCURRENCY,
            rps=round(requests / seconds, 1) if seconds else 0.0,
            p50_ms=max(r.p50_ms for r in results),
            p99_ms=max(r.p99_ms for r in results),
            cpu_ms_per_req=_per_call_ms(gw.cpu_seconds(), requests),
            requests=requests,
            errors=sum(r.errors for r in results),
            limit=backend.name == "SQLite",
            extra={
                "gateways": gateways,
                "server_cpu_ms_per_req": _per_call_ms(servers.cpu_seconds(), requests),
            },
        )


def drain(backend: Backend, gateways: int, run_dir: Path) -> Measurement:
    calls = DRAIN_CALLS
    fill_seconds = uvloop.run(_fill(backend, calls))
    with Children(run_dir) as children:
        watchdog = children.watchdog("drain-watchdog", fprocess="cat")
        served_before = served(watchdog)
        with Meters(backend.server_pids) as servers:
            started = start_gateways(children, run_dir, backend, watchdog.url, gateways)
            first = min(wait_http(g, "/healthz", timeout=60) for g in started)
            with Meters([g.pid for g in started]) as gw:  # start-up is not counted
                deadline = first + max(60, calls / 20)
                while (done := served(watchdog) - served_before) < calls:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the gateways ran {done} of {calls} calls in time")
                    time.sleep(0.02)
                elapsed = time.monotonic() - first
    return Measurement(
        DRAIN,
        label(backend, gateways),
        CONCURRENCY,
        rps=round(calls / elapsed, 1),
        cpu_ms_per_req=_per_call_ms(gw.cpu_seconds(), calls),
        requests=calls,
        limit=backend.name == "SQLite",
        extra={
            "gateways": gateways,
            "drain_seconds": round(elapsed, 2),
            "fill_seconds": round(fill_seconds, 2),
            "server_cpu_ms_per_req": _per_call_ms(servers.cpu_seconds(), calls),
        },
    )


async def _fill(backend: Backend, calls: int) -> float:
    from watchdog.gateway.queue.base import QueueBackend
    from watchdog.gateway.queue.nats import NatsQueue
    from watchdog.gateway.queue.sqlite import SqliteQueue

    queue: QueueBackend
    if backend.nats_url:
        queue = NatsQueue(backend.nats_url, replicas=backend.replicas)
    else:
        queue = SqliteQueue(Path(backend.options[1]))
    await queue.open()
    try:
        return await fill(queue, calls, b"x" * DRAIN_BODY, f"{FUNCTION}.{NAMESPACE}")
    finally:
        await queue.close()
