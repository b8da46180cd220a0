"""Scenario 4, gateway sync: a ``cat`` watchdog (default mode) reached directly (the limit)
vs. through ``fwatchdog gateway`` at ``/function/echo``.

The target is a ratio of latencies, and a single pair of runs on a shared machine swings
(1.2× to 1.9× seen back to back), so each concurrency takes ``ROUNDS`` interleaved pairs and
keeps, per path, the run with the median p50.
"""

from __future__ import annotations

from pathlib import Path

from ..procs import Children, base_env, free_port, fwatchdog_command, wait_http
from ..report import Measurement, Run
from .common import Settings, Steady, measure, warm_up

BODY = 16
ROUNDS = 3
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
        steady = Steady.of("gateway", gateway.pid, pool=max(settings.concurrencies))
        for concurrency in settings.concurrencies:
            direct: list[Measurement] = []
            via: list[Measurement] = []
            for _ in range(ROUNDS):
                direct.append(
                    measure(
                        SCENARIO, "watchdog directly", watchdog.pid, watchdog.url + "/",
                        concurrency, settings.seconds, limit=True, **load,
                    )
                )  # fmt: skip
                via.append(
                    measure(
                        SCENARIO, "gateway → watchdog", gateway.pid, via_gateway,
                        concurrency, settings.seconds, **load,
                    )
                )  # fmt: skip
            result.add(_median(direct))
            result.add(_median(via))
            steady.requests += sum(row.requests for row in via)
        result.steady.append(steady.finish(gateway.pid))


def _median(rows: list[Measurement]) -> Measurement:
    ranked = sorted(rows, key=lambda row: row.p50_ms or 0)
    chosen = ranked[len(ranked) // 2]
    chosen.extra["rounds_p50_ms"] = [row.p50_ms for row in rows]
    chosen.extra["rounds_rps"] = [row.rps for row in rows]
    return chosen
