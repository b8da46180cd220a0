"""Scenario 4, gateway sync: a ``cat`` watchdog (default mode) reached directly (the limit)
vs. through ``fwatchdog gateway`` at ``/function/echo``."""

from __future__ import annotations

from pathlib import Path

from ..procs import Children, base_env, free_port, fwatchdog_command, wait_http
from ..report import Run
from .common import Settings, Steady, measure, warm_up

BODY = 16
SCENARIO = "4 gateway sync (cat)"


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
        load = {"method": "POST", "body_size": BODY}
        via_gateway = gateway.url + "/function/echo"
        warm_up(via_gateway, settings.warmup_seconds, max(settings.concurrencies), **load)
        steady = Steady.of("gateway", gateway.pid)
        for concurrency in settings.concurrencies:
            result.add(
                measure(
                    SCENARIO, "watchdog directly", watchdog.pid, watchdog.url + "/",
                    concurrency, settings.seconds, limit=True, **load,
                )
            )  # fmt: skip
            row = measure(
                SCENARIO, "gateway → watchdog", gateway.pid, via_gateway,
                concurrency, settings.seconds, **load,
            )  # fmt: skip
            result.add(row)
            steady.requests += row.requests
        result.steady.append(steady.finish(gateway.pid))
