"""Scenario 5, gateway async, measured at the queue level (the gateway's HTTP route for
asynchronous calls is not on this branch yet):

- durable acceptances/s: 32 tasks enqueueing into the SQLite queue, each waiting for its
  commit (``bench.async_enqueue``); the limit is the same with ``synchronous=normal`` (no
  fsync per commit);
- completed calls/s end to end: a queue of N calls drained by the worker through the gateway's
  invoke path to a ``cat`` watchdog (``bench.async_drain``, in its own process so its RSS is
  the worker's). Its limit: the same ``cat`` watchdog loaded directly by wrk at concurrency 32.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .. import async_enqueue
from ..procs import Children
from ..report import Measurement, Run
from .common import Settings, measure, warm_up

SCENARIO = "5 async (queue level)"
DRAIN = "5 async drain (queue level)"
CONCURRENCY = 32
DRAIN_BODY = 64


def run(result: Run, settings: Settings, run_dir: Path) -> None:
    for synchronous, limit in (("normal", True), ("full", False)):
        got = async_enqueue.measure(CONCURRENCY, settings.async_seconds, 1024, synchronous)
        result.add(
            Measurement(
                SCENARIO,
                f"enqueue, synchronous={synchronous}"
                + (" (no fsync: the limit)" if limit else " (durable)"),
                CONCURRENCY,
                rps=round(got["rate"], 1),
                p50_ms=round(got["p50_ms"], 2),
                p99_ms=round(got["p99_ms"], 2),
                requests=int(got["enqueues"]),
                limit=limit,
                extra={"per_commit": round(got["per_commit"], 1)},
            )
        )
    with Children(run_dir) as children:
        watchdog = children.watchdog("drain-limit", fprocess="cat")
        url = watchdog.url + "/"
        warm_up(url, settings.warmup_seconds, CONCURRENCY, "POST", DRAIN_BODY)
        limit = measure(
            DRAIN, "cat watchdog directly (wrk)", watchdog.pid, url, CONCURRENCY,
            settings.seconds, method="POST", body_size=DRAIN_BODY, limit=True,
        )  # fmt: skip
        result.add(limit)
    drained = _drain(settings.drain_calls)
    result.add(
        Measurement(
            DRAIN,
            f"drain {settings.drain_calls:,} queued calls → cat watchdog",
            CONCURRENCY,
            rps=float(drained["rate"]),  # type: ignore[arg-type]
            peak_rss_mb=float(drained["rss_peak_mb"]),  # type: ignore[arg-type]
            requests=int(drained["completed"]),  # type: ignore[call-overload]
            errors=int(drained["failed"]),  # type: ignore[call-overload]
            extra=drained,
        )
    )
    result.steady.append(
        {
            "server": f"async worker, {settings.drain_calls:,} calls queued then drained",
            "requests": drained["completed"],
            "rss_before_mb": drained["rss_full_mb"],
            "rss_after_mb": drained["rss_end_mb"],
            "fds_before": "",
            "fds_after": "",
        }
    )


def _drain(calls: int) -> dict[str, object]:
    """Run bench.async_drain in its own process; on errors it gets SIGTERM, so it reaps its
    watchdog before exiting."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.async_drain", "--calls", str(calls)]
        + ["--concurrency", str(CONCURRENCY), "--body", str(DRAIN_BODY), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent.parent,
    )
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.async_drain failed:\n{err[-2000:]}")
    figures: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return figures
