"""Scenario 6, start-up: from exec of ``fwatchdog`` (default mode, ``cat``) to ``/_/ready``
answering 200, and the idle RSS after that.

The limit is the interpreter importing the watchdog's dependencies and exiting
(``python -c "import aiohttp, uvloop, psutil, prometheus_client"``): what any Python
watchdog pays before it can listen.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from ..procs import MB, Children, base_env, free_port, fwatchdog_command, wait_http
from ..report import Measurement, Run
from .common import Settings

SCENARIO = "6 start-up"
IMPORTS = "import aiohttp, uvloop, psutil, prometheus_client, yaml"


def run(result: Run, settings: Settings, run_dir: Path) -> None:
    limit_ms: list[float] = []
    ready_ms: list[float] = []
    rss: list[float] = []
    helper_rss: list[float] = []
    for _ in range(settings.startup_runs):
        # Interleaved with the watchdog's runs: the machine's load moves both the same way.
        limit_ms.append(_import_time())
        with Children(run_dir) as children:
            port = free_port()
            env = base_env(run_dir, port=str(port), metrics_port=str(free_port()), fprocess="cat")
            started = time.monotonic()
            watchdog = children.start("startup", fwatchdog_command(), env, port)
            ready_ms.append((wait_http(watchdog, "/_/ready", poll=0.001) - started) * 1000)
            time.sleep(0.5)  # idle
            proc = psutil.Process(watchdog.pid)
            rss.append(proc.memory_info().rss / MB)
            helper_rss.extend(child.memory_info().rss / MB for child in proc.children())
    result.add(
        Measurement(
            SCENARIO,
            "python: the imports, then exit (a reference, not a bound): ms",
            0,
            rps=0,
            p50_ms=round(statistics.median(limit_ms), 1),
            p99_ms=round(max(limit_ms), 1),
            limit=True,
            extra={"runs_ms": [round(x, 1) for x in limit_ms]},
        )
    )
    result.add(
        Measurement(
            SCENARIO,
            "exec of fwatchdog → /_/ready 200 (p50 = median, p99 = worst)",
            0,
            rps=0,
            p50_ms=round(statistics.median(ready_ms), 1),
            p99_ms=round(max(ready_ms), 1),
            peak_rss_mb=round(statistics.median(rss), 1),
            extra={
                "runs_ms": [round(x, 1) for x in ready_ms],
                "idle_rss_mb": [round(x, 1) for x in rss],
                "fork_server_idle_rss_mb": [round(x, 1) for x in helper_rss],
            },
        )
    )


def _import_time() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    return (time.monotonic() - started) * 1000
