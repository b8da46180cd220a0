"""Completed asynchronous calls per second: enqueue N calls to a ``cat`` watchdog, then let
the queue worker run them through the gateway's sync invoke path until all succeeded.

    python -m bench.async_drain --calls 2000 --concurrency 32 [--backend nats]

Starts its own watchdog (``fprocess=cat``) on a free port; the queue is a fresh SQLite file,
or with ``--backend nats`` a ``nats-server -js`` the benchmark starts itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop

from watchdog.gateway.invoke import Invoker
from watchdog.gateway.metrics import GatewayMetrics
from watchdog.gateway.queue.base import CallRequest, QueueBackend
from watchdog.gateway.queue.nats import NatsQueue
from watchdog.gateway.queue.sqlite import SqliteQueue
from watchdog.gateway.registry import Function, InMemoryRegistry
from watchdog.gateway.retry import RetryPolicy
from watchdog.gateway.worker import AsyncWorker, GatewayInvoker, WorkerSettings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def drain(args: argparse.Namespace, queue: QueueBackend, url: str) -> None:
    await queue.open()
    for _ in range(args.calls):
        await queue.enqueue(CallRequest("cat", body=b"x" * args.body))
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        registry = InMemoryRegistry([Function("cat", url)])
        path = Invoker(
            registry, session, GatewayMetrics(), namespace="openfaas-fn", default_timeout=30
        )
        worker = AsyncWorker(
            queue,
            GatewayInvoker(path),
            policy_for=lambda name: RetryPolicy(initial_backoff=0.1, max_backoff=1),
            settings=WorkerSettings(concurrency=args.concurrency),
        )
        started = time.perf_counter()
        task = asyncio.create_task(worker.run(stop))
        while await queue.depth():
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
    await queue.close()
    print(
        f"{worker.completed} calls completed ({worker.failed} failed, {worker.retried} retried)"
        f" in {elapsed:.2f}s at worker concurrency {args.concurrency} ({args.backend}):"
        f" {worker.completed / elapsed:,.0f}/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--body", type=int, default=64)
    parser.add_argument("--backend", choices=("sqlite", "nats"), default="sqlite")
    args = parser.parse_args()
    port, metrics_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "fprocess": "cat",
        "port": str(port),
        "metrics_port": str(metrics_port),
        "healthcheck_interval": "0",
    }
    run_dir = tempfile.TemporaryDirectory()
    env["TMPDIR"] = run_dir.name  # the watchdog's lock file
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchdog"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        with tempfile.TemporaryDirectory() as directory:
            url = f"http://127.0.0.1:{port}"
            if args.backend == "sqlite":
                uvloop.run(drain(args, SqliteQueue(Path(directory) / "queue.db"), url))
            else:
                # Imported here: the launcher lives with the tests, and only NATS runs need it.
                from tests.nats_server import start_nats_server

                server = start_nats_server(Path(directory))
                try:
                    uvloop.run(drain(args, NatsQueue(server.url, prefix="bench"), url))
                finally:
                    server.stop()
    finally:
        proc.terminate()
        proc.wait(30)
        run_dir.cleanup()


if __name__ == "__main__":
    main()
