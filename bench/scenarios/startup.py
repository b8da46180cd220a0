"""Scenario 6, start-up: from exec of a watchdog to its first ``/_/health`` 200 (median of
``startup_runs``, polled every millisecond), and its idle RSS 0.5 s after that.

Subjects, interleaved run by run so the machine's load moves them alike:

- fwatchdog in its default fork mode (``fprocess=cat``); its memory: the watchdog's RSS plus
  its fork server's USS (:func:`bench.procs.tree_rss_mb`), the watchdog's RSS alone in the
  JSON;
- fwatchdog in ``mode=http``, and the Go of-watchdog in ``mode=http`` (the anchor) when the
  anchors folder has it: both proxy to one bench upstream started before any run (its start
  is not counted), with ``fprocess`` a ``sleep`` that costs nothing to start;
- the self-contained fwatchdog (``--bundle OUT_DIR/fwatchdog``, built by
  ``packaging/build-standalone.sh``) in fork mode, when one is given.

The limit is the interpreter importing the watchdog's dependencies and exiting
(``python -c "import aiohttp, uvloop, psutil, prometheus_client, yaml"``): what a Python
watchdog that imports them pays before it can listen (a reference, not a bound).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .. import anchors
from ..procs import (
    MB,
    Children,
    Service,
    base_env,
    free_port,
    fwatchdog_command,
    tree_rss_mb,
    wait_http,
    wait_port,
)
from ..report import Measurement, Run
from .common import Settings, anchor

SCENARIO = "6 start-up"
IMPORTS = "import aiohttp, uvloop, psutil, prometheus_client, yaml"
REFERENCE = "python: the imports, then exit (a reference, not a bound): ms"
FORK = "fwatchdog, fork mode (cat): exec → /_/health 200 (p50 = median, p99 = worst)"
HTTP = "fwatchdog, mode=http (upstream already up): exec → /_/health 200"
OF_WATCHDOG = "of-watchdog (Go), mode=http (upstream already up): exec → /_/health 200"
BUNDLE = "self-contained fwatchdog (bundle), fork mode (cat): exec → /_/health 200"
IDLE_FPROCESS = "sleep 3600"  # http mode's process: the upstream itself is already running
IDLE = 0.5  # seconds after the first 200 at which the RSS is read

Starter = Callable[[Children, int], Service]


@dataclass
class Subject:
    path: str
    start: Starter
    anchor: bool = False
    ready_ms: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    alone_mb: list[float] = field(default_factory=list)  # the watchdog's RSS, helpers left out


def run(result: Run, settings: Settings, run_dir: Path) -> None:
    with Children(run_dir) as upstreams:
        port = free_port()
        upstream = upstreams.start(
            "startup-upstream", [sys.executable, "-m", "bench.upstream", str(port)],
            base_env(run_dir), port,
        )  # fmt: skip
        wait_port(upstream)
        subjects = _subjects(settings, run_dir, f"http://127.0.0.1:{port}")
        limit_ms: list[float] = []
        for _ in range(settings.startup_runs):
            limit_ms.append(_import_time())
            for subject in subjects:
                _time_one(subject, run_dir)
    result.add(
        Measurement(
            SCENARIO, REFERENCE, 0, rps=0,
            p50_ms=round(statistics.median(limit_ms), 1), p99_ms=round(max(limit_ms), 1),
            limit=True, extra={"runs_ms": [round(x, 1) for x in limit_ms]},
        )
    )  # fmt: skip
    for subject in subjects:
        result.add(
            Measurement(
                SCENARIO, subject.path, 0, rps=0,
                p50_ms=round(statistics.median(subject.ready_ms), 1),
                p99_ms=round(max(subject.ready_ms), 1),
                peak_rss_mb=round(statistics.median(subject.rss_mb), 1),
                anchor=subject.anchor,
                extra={
                    "runs_ms": [round(x, 1) for x in subject.ready_ms],
                    "idle_rss_mb": [round(x, 1) for x in subject.rss_mb],
                    "idle_rss_mb_without_helpers": [round(x, 1) for x in subject.alone_mb],
                },
            )
        )  # fmt: skip


def _subjects(settings: Settings, run_dir: Path, upstream_url: str) -> list[Subject]:
    http_env = {"mode": "http", "fprocess": IDLE_FPROCESS, "upstream_url": upstream_url}

    def fwatchdog(argv: list[str], env: dict[str, str]) -> Starter:
        def start(children: Children, port: int) -> Service:
            full_env = base_env(run_dir, port=str(port), metrics_port=str(free_port()), **env)
            return children.start("startup", argv, full_env, port)

        return start

    subjects = [
        Subject(FORK, fwatchdog(fwatchdog_command(), {"fprocess": "cat"})),
        Subject(HTTP, fwatchdog(fwatchdog_command(), http_env)),
    ]
    binary = anchor(settings, anchors.OF_WATCHDOG)
    if binary:

        def of_watchdog(children: Children, port: int) -> Service:
            anchors.wait_metrics_port_free()
            env = base_env(run_dir, port=str(port), **anchors.ENV, **http_env)
            return children.start("startup-of-watchdog", [str(binary)], env, port)

        subjects.append(Subject(OF_WATCHDOG, of_watchdog, anchor=True))
    bundle = Path(settings.bundle) if settings.bundle else None
    if bundle and bundle.is_file():
        subjects.append(Subject(BUNDLE, fwatchdog([str(bundle)], {"fprocess": "cat"})))
    else:
        given = f"{bundle} not found" if bundle else "no --bundle given"
        print(
            f"   {given} (packaging/build-standalone.sh OUT_DIR builds one; pass "
            "--bundle OUT_DIR/fwatchdog): bundle row skipped",
            file=sys.stderr,
            flush=True,
        )
    return subjects


def _time_one(subject: Subject, run_dir: Path) -> None:
    with Children(run_dir) as children:
        port = free_port()
        started = time.monotonic()
        service = subject.start(children, port)
        ready = wait_http(service, "/_/health", poll=0.001)
        subject.ready_ms.append((ready - started) * 1000)
        time.sleep(IDLE)
        subject.rss_mb.append(tree_rss_mb(service.pid))
        subject.alone_mb.append(psutil.Process(service.pid).memory_info().rss / MB)


def _import_time() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    return (time.monotonic() - started) * 1000
