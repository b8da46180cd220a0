"""Scenario 4, gateway sync: a ``cat`` watchdog (default mode) reached directly (the limit)
vs. through ``fwatchdog gateway`` at ``/function/echo``.

The target is a ratio of latencies, and a single pair of runs on a shared machine swings
(1.2× to 1.9× seen back to back), so each concurrency takes ``ROUNDS`` interleaved pairs and
keeps, per path, the run with the median p50.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..procs import Children, base_env, free_port, fwatchdog_command, wait_http
from ..report import Run
from .common import Settings, Steady, Subject, interleaved, requests_in_rounds, warm_up

BODY = 16
SCENARIO = "4 gateway sync (cat)"
DIRECT = "watchdog directly"
VIA = "gateway → watchdog"


def run(result: Run, settings: Settings, run_dir: Path) -> None:
    with Children(run_dir) as children:
        watchdog = children.watchdog("gw-watchdog", fprocess="cat")
        port = free_port()
        gateway = children.start(
            "gateway",
            fwatchdog_command()
            + ["gateway", "--port", str(port), "--function", f"echo={watchdog.url}"],
            base_env(run_dir, port=str(port)),
            port,
        )
        wait_http(gateway, "/healthz")
        load: dict[str, Any] = {"method": "POST", "body_size": BODY}
        via_gateway = gateway.url + "/function/echo"
        warm_up(via_gateway, settings.warmup_seconds, max(settings.concurrencies), **load)
        steady = Steady.of("gateway", gateway.pid, pool=max(settings.concurrencies))
        subjects = [
            Subject(DIRECT, watchdog.pid, watchdog.url + "/", limit=True),
            Subject(VIA, gateway.pid, via_gateway),
        ]
        for concurrency in settings.concurrencies:
            direct, via = interleaved(
                SCENARIO, subjects, concurrency, settings.seconds, key="p50_ms", **load
            )
            result.add(direct)
            result.add(via)
            steady.requests += requests_in_rounds(via)
        result.steady.append(steady.finish(gateway.pid))
