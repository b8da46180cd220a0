"""Scenario 5, gateway async, through the gateway's HTTP routes and its own worker.

Acceptances (concurrency 32): wrk POSTs 1 KiB calls to ``/async-function/echo`` with
``X-Async-Delay: 3600``, so the worker does not run them while acceptances are measured; each
202 comes after a durable commit. The limit: the queue alone, 32 tasks enqueueing into the
SQLite queue in process (``bench.async_enqueue``), each waiting for its commit; shown also
with ``synchronous=normal`` (no fsync per commit).

Drain: a queue file holding N calls (filled through the queue API, as the gateway's route
stores them) is opened by a real ``fwatchdog gateway`` whose worker (32 at once) runs them
through the gateway's invoke path to a ``cat`` watchdog; completions are counted on the
watchdog's ``http_requests_total``. The gateway's RSS is sampled throughout (flat = the queue
costs no memory per call). The limit: the same ``cat`` watchdog loaded by wrk at 32.
"""

from __future__ import annotations

import time
from pathlib import Path

import uvloop
from prometheus_client.parser import text_string_to_metric_families

from .. import async_enqueue
from ..async_drain import fill
from ..procs import (
    Children,
    Meter,
    Service,
    base_env,
    free_port,
    fwatchdog_command,
    get_text,
    wait_http,
)
from ..report import Measurement, Run
from .common import Settings, measure, warm_up

ACCEPT = "5 async accept"
DRAIN = "5 async drain"
CONCURRENCY = 32
ACCEPT_BODY = 1024
DRAIN_BODY = 64
FUNCTION = "echo"
NAMESPACE = "openfaas-fn"


def run(result: Run, settings: Settings, run_dir: Path) -> None:
    accept(result, settings, run_dir)
    drain(result, settings, run_dir)


def accept(result: Run, settings: Settings, run_dir: Path) -> None:
    for synchronous, limit in (("full", True), ("normal", False)):
        got = async_enqueue.measure(CONCURRENCY, settings.async_seconds, ACCEPT_BODY, synchronous)
        label = "durable: the limit" if limit else "no fsync per commit"
        result.add(
            Measurement(
                ACCEPT,
                f"queue alone, in process, synchronous={synchronous} ({label})",
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
        watchdog = children.watchdog("accept-watchdog", fprocess="cat")
        gateway = start_gateway(children, run_dir, watchdog.url, run_dir / "accept-queue.db")
        url = f"{gateway.url}/async-function/{FUNCTION}"
        delayed = {"X-Async-Delay": "3600"}
        result.add(
            measure(
                ACCEPT, "gateway: POST /async-function → 202 (durable)", gateway.pid, url,
                CONCURRENCY, settings.async_seconds, method="POST", body_size=ACCEPT_BODY,
                headers=delayed,
            )
        )  # fmt: skip


def drain(result: Run, settings: Settings, run_dir: Path) -> None:
    calls = settings.drain_calls
    queue_path = run_dir / "drain-queue.db"
    fill_seconds = uvloop.run(_fill(queue_path, calls))
    with Children(run_dir) as children:
        watchdog = children.watchdog("drain-watchdog", fprocess="cat")
        url = watchdog.url + "/"
        warm_up(url, settings.warmup_seconds, CONCURRENCY, "POST", DRAIN_BODY)
        result.add(
            measure(
                DRAIN, "cat watchdog directly (wrk)", watchdog.pid, url, CONCURRENCY,
                settings.seconds, method="POST", body_size=DRAIN_BODY, limit=True,
            )
        )  # fmt: skip
        served_before = served(watchdog)
        gateway = start_gateway(children, run_dir, watchdog.url, queue_path)
        with Meter(gateway.pid) as meter:
            rss_start = meter.rss()
            started = time.monotonic()
            deadline = started + max(60, calls / 50)
            while (done := served(watchdog) - served_before) < calls:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway ran {done} of {calls} calls in time")
                time.sleep(0.1)
            elapsed = time.monotonic() - started
        usage = meter.usage
        assert usage is not None
        rss_end = usage.rss_mb
        result.add(
            Measurement(
                DRAIN,
                f"gateway worker: {calls:,} queued calls → cat watchdog",
                CONCURRENCY,
                rps=round(calls / elapsed, 1),
                cpu_ms_per_req=round(usage.cpu_seconds * 1000 / calls, 4),
                peak_rss_mb=usage.peak_rss_mb,
                requests=calls,
                extra={
                    "drain_seconds": round(elapsed, 2),
                    "fill_seconds": round(fill_seconds, 2),
                    "rss_full_mb": round(rss_start / 2**20, 1),
                    "rss_peak_mb": usage.peak_rss_mb,
                    "rss_end_mb": rss_end,
                },
            )
        )
        result.steady.append(
            {
                "server": f"gateway draining {calls:,} queued calls",
                "requests": calls,
                "rss_before_mb": round(rss_start / 2**20, 1),
                "rss_after_mb": rss_end,
                "fds_before": "",
                "fds_after": "",
            }
        )


def start_gateway(children: Children, run_dir: Path, function_url: str, queue: Path) -> Service:
    port = free_port()
    argv = fwatchdog_command() + [
        "gateway",
        "--port", str(port),
        "--function", f"{FUNCTION}={function_url}",
        "--queue-path", str(queue),
        "--async-concurrency", str(CONCURRENCY),
    ]  # fmt: skip
    gateway = children.start("gateway", argv, base_env(run_dir, port=str(port)), port)
    wait_http(gateway, "/healthz")
    return gateway


async def _fill(path: Path, calls: int) -> float:
    from watchdog.gateway.queue.sqlite import SqliteQueue

    queue = SqliteQueue(path)
    await queue.open()
    try:
        return await fill(queue, calls, b"x" * DRAIN_BODY, f"{FUNCTION}.{NAMESPACE}")
    finally:
        await queue.close()


def served(watchdog: Service) -> int:
    """Requests the watchdog answered 200, from its /metrics."""
    text = get_text(watchdog.extra_ports["metrics"], "/metrics")
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "http_requests":
            for sample in family.samples:
                if sample.name == "http_requests_total" and sample.labels.get("code") == "200":
                    total += sample.value
    return int(total)
