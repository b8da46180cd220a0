"""Durable enqueues per second into the SQLite queue at a given concurrency.

    python -m bench.async_enqueue --concurrency 32 --seconds 5 --body 1024 [--synchronous full]

Each enqueue returns only after its transaction committed (WAL, fsync per commit with
``synchronous=full``); concurrent enqueues share commits (group commit). Prints the rate,
latency percentiles and how many enqueues each commit carried.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import uvloop

from watchdog.gateway.queue.base import CallRequest
from watchdog.gateway.queue.sqlite import SqliteQueue


async def bench(args: argparse.Namespace, directory: Path) -> dict[str, float]:
    """Enqueue from ``args.concurrency`` tasks for ``args.seconds``; the rate and latencies."""
    queue = SqliteQueue(directory / "queue.db", synchronous=args.synchronous)
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
    await asyncio.gather(*(enqueuer() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    commits = queue.commits
    await queue.close()
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "enqueues": len(latencies),
        "seconds": elapsed,
        "rate": len(latencies) / elapsed,
        "p50_ms": quantiles[49] * 1000,
        "p99_ms": quantiles[98] * 1000,
        "per_commit": len(latencies) / max(commits, 1),
    }


def measure(
    concurrency: int = 32, seconds: float = 5.0, body: int = 1024, synchronous: str = "full"
) -> dict[str, float]:
    args = argparse.Namespace(
        concurrency=concurrency, seconds=seconds, body=body, synchronous=synchronous
    )
    with tempfile.TemporaryDirectory() as directory:
        return uvloop.run(bench(args, Path(directory)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    parser.add_argument("--dir", type=Path, default=None, help="where the database goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        got = uvloop.run(bench(args, Path(directory)))
    print(
        f"{got['enqueues']:.0f} durable enqueues in {got['seconds']:.2f}s at concurrency"
        f" {args.concurrency} (synchronous={args.synchronous}, body {args.body} B):"
        f" {got['rate']:,.0f}/s; latency p50 {got['p50_ms']:.2f} ms,"
        f" p99 {got['p99_ms']:.2f} ms; {got['per_commit']:.1f} per commit"
    )


if __name__ == "__main__":
    main()
