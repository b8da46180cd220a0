"""Scenario 4, gateway sync: a ``cat`` watchdog (default mode) reached directly (the limit)
vs. through ``fwatchdog gateway`` at ``/function/echo``, and vs. through the fastest hop this
project has: an http-mode watchdog (its express path, :mod:`watchdog.modes.http_express`)
proxying to the same ``cat`` watchdog. That row is the floor of any Python hop here: what a
gateway could reach if its routing, call ids and metrics cost nothing.

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
HOP = "http-mode watchdog → watchdog (a hop's floor)"


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
        # The upstream is the cat watchdog: the supervised process only has to stay up.
        hop = children.watchdog(
            "gw-hop", mode="http", upstream_url=watchdog.url, fprocess="sleep infinity"
        )
        load: dict[str, Any] = {"method": "POST", "body_size": BODY}
        via_gateway = gateway.url + "/function/echo"
        for url in (via_gateway, hop.url + "/"):
            warm_up(url, settings.warmup_seconds, max(settings.concurrencies), **load)
        steady = Steady.of("gateway", gateway.pid, pool=max(settings.concurrencies))
        subjects = [
            Subject(DIRECT, watchdog.pid, watchdog.url + "/", limit=True),
            Subject(VIA, gateway.pid, via_gateway),
            Subject(HOP, hop.pid, hop.url + "/"),
        ]
        for concurrency in settings.concurrencies:
            direct, via, floor = interleaved(
                SCENARIO, subjects, concurrency, settings.seconds, key="p50_ms", **load
            )
            result.add(direct)
            result.add(via)
            result.add(floor)
            steady.requests += requests_in_rounds(via)
        result.steady.append(steady.finish(gateway.pid))


def floor_note(result: Run) -> str | None:
    """What the floor row says of the gateway's targets: the ratios any Python hop reaches."""
    parts = []
    for concurrency in sorted({row.concurrency for row in result.measurements}):
        direct = result.find(SCENARIO, DIRECT, concurrency)
        floor = result.find(SCENARIO, HOP, concurrency)
        via = result.find(SCENARIO, VIA, concurrency)
        if not (direct and floor and via and direct.p50_ms and direct.rps):
            continue
        parts.append(
            f"c{concurrency}: p50 {(floor.p50_ms or 0) / direct.p50_ms:.2f}× and req/s "
            f"{floor.rps / direct.rps:.2f}× the watchdog directly (the gateway: "
            f"{(via.p50_ms or 0) / direct.p50_ms:.2f}× and {via.rps / direct.rps:.2f}×)"
        )
    if not parts:
        return None
    return (
        f"4 gateway sync: the row '{HOP}' is a hop with none of the gateway's work (an "
        "http-mode watchdog's express path proxying to the same cat watchdog), the floor of "
        "any Python hop on this machine: " + "; ".join(parts) + "."
    )
