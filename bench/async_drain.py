"""Completed asynchronous calls per second: enqueue N calls to a ``cat`` watchdog, then let
the queue worker run them through the gateway's sync invoke path until all succeeded.

    python -m bench.async_drain --calls 2000 --concurrency 32 [--backend nats] [--json]

Starts its own watchdog (``fprocess=cat``) on a free port; the queue is a fresh SQLite file.
The queue is filled first (32 concurrent durable enqueues), then drained; this process's RSS
is sampled throughout, so a queue that holds memory per call shows as growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil
import uvloop

from watchdog.gateway.config import default_retry_policy
from watchdog.gateway.invoke import Invoker
from watchdog.gateway.metrics import GatewayMetrics
from watchdog.gateway.proxy import FunctionUpstreams
from watchdog.gateway.queue.base import CallRequest, QueueBackend
from watchdog.gateway.queue.nats import NatsQueue
from watchdog.gateway.queue.sqlite import SqliteQueue
from watchdog.gateway.registry import Function, InMemoryRegistry
from watchdog.gateway.worker import AsyncWorker, InvokePathRunner, WorkerSettings

from .procs import MB, Children, terminated_on_sigterm, tests_on_path

FILLERS = 32


def _rss() -> float:
    return round(psutil.Process().memory_info().rss / MB, 1)


async def fill(queue: QueueBackend, calls: int, body: bytes, function: str = "cat") -> float:
    """Enqueue ``calls`` calls from 32 tasks (durable group commits); the seconds it took."""
    started = time.perf_counter()
    left = iter(range(calls))

    async def filler() -> None:
        for _ in left:
            await queue.enqueue(CallRequest(function, body=body))

    await asyncio.gather(*(filler() for _ in range(FILLERS)))
    return time.perf_counter() - started


async def drain(args: argparse.Namespace, queue: QueueBackend, url: str) -> dict[str, object]:
    figures: dict[str, object] = {"calls": args.calls, "rss_empty_mb": _rss()}
    await queue.open()
    figures["fill_seconds"] = round(await fill(queue, args.calls, b"x" * args.body), 2)
    figures["rss_full_mb"] = _rss()
    samples: list[float] = []
    stop = asyncio.Event()
    with FunctionUpstreams() as upstreams:
        registry = InMemoryRegistry([Function("cat", url)])
        path = Invoker(
            registry, upstreams, GatewayMetrics(), namespace="openfaas-fn", default_timeout=30
        )
        policy = replace(default_retry_policy(), initial_backoff=0.1, max_backoff=1)
        worker = AsyncWorker(
            queue,
            InvokePathRunner(path),
            policy_for=lambda name: policy,
            settings=WorkerSettings(concurrency=args.concurrency, lease_for=30.0),
        )
        started = time.perf_counter()
        task = asyncio.create_task(worker.run(stop))
        while await queue.depth():
            samples.append(_rss())
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
    await queue.close()
    figures.update(
        completed=worker.completed,
        failed=worker.failed,
        retried=worker.retried,
        drain_seconds=round(elapsed, 2),
        rate=round(worker.completed / elapsed, 1),
        rss_peak_mb=max(samples, default=_rss()),
        rss_end_mb=_rss(),
        concurrency=args.concurrency,
    )
    return figures


def measure(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as run_dir, Children(Path(run_dir)) as children:
        watchdog = children.watchdog("drain-watchdog", fprocess="cat")
        if getattr(args, "backend", "sqlite") == "nats":
            # Imported here: the launcher lives with the tests, and only NATS runs need it.
            tests_on_path()
            from nats_server import start_nats_server

            server = start_nats_server(Path(run_dir) / "nats")
            try:
                queue = NatsQueue(server.url, prefix="bench")
                figures = uvloop.run(drain(args, queue, watchdog.url))
            finally:
                server.stop()
        else:
            queue_file = SqliteQueue(Path(run_dir) / "queue.db")
            figures = uvloop.run(drain(args, queue_file, watchdog.url))
        figures["watchdog_rss_mb"] = round(psutil.Process(watchdog.pid).memory_info().rss / MB, 1)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--body", type=int, default=64)
    parser.add_argument("--backend", choices=("sqlite", "nats"), default="sqlite")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with terminated_on_sigterm():
        figures = measure(args)
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"{figures['completed']} calls completed ({figures['failed']} failed,"
        f" {figures['retried']} retried) in {figures['drain_seconds']}s at worker concurrency"
        f" {args.concurrency}: {figures['rate']:,}/s; queue filled in {figures['fill_seconds']}s;"
        f" RSS empty {figures['rss_empty_mb']} MB, full {figures['rss_full_mb']} MB,"
        f" peak while draining {figures['rss_peak_mb']} MB, end {figures['rss_end_mb']} MB"
    )


if __name__ == "__main__":
    main()
