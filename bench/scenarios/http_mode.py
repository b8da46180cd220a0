"""Scenario 1, mode=http: the fast upstream reached directly (the limit) vs. through the
watchdog, and through the Go of-watchdog (``mode=http``, the anchor) when the anchors folder
has it, for a small GET and a 64 KiB POST, at every concurrency.

The limit is the very upstream process fwatchdog supervises, reached on its own port; the
of-watchdog supervises its own instance of the same upstream (``bench/upstream.py``). The
three run side by side and each concurrency takes interleaved rounds (fwatchdog, of-watchdog,
direct), keeping each one's round of median requests/s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psutil

from .. import anchors
from ..procs import Children, Service, free_port, wait_http
from ..report import Run
from .common import (
    Settings,
    Steady,
    Subject,
    anchor,
    interleaved,
    requests_in_rounds,
    warm_up,
)

POST_SIZE = 64 * 1024
REQUESTS = (("small GET", "GET", 0), ("64 KiB POST", "POST", POST_SIZE))
ROOT = Path(__file__).parent.parent.parent
WATCHDOG = "watchdog → upstream"
OF_WATCHDOG = "of-watchdog (Go) → upstream"
DIRECT = "upstream directly"


def upstream_command(port: int) -> str:
    return f"{sys.executable} -m bench.upstream {port}"


def run(result: Run, settings: Settings, run_dir: Path) -> None:
    with Children(run_dir) as children:
        port = free_port()
        watchdog = children.watchdog(
            "http-watchdog",
            mode="http",
            fprocess=upstream_command(port),
            upstream_url=f"http://127.0.0.1:{port}",
            PYTHONPATH=str(ROOT),
        )
        upstream = next(
            child.pid
            for child in psutil.Process(watchdog.pid).children()
            if "bench.upstream" in " ".join(child.cmdline())
        )
        subjects = [Subject(WATCHDOG, watchdog.pid, watchdog.url + "/")]
        binary = anchor(settings, anchors.OF_WATCHDOG)
        if binary:
            go = start_of_watchdog(children, run_dir, binary)
            subjects.append(Subject(OF_WATCHDOG, go.pid, go.url + "/", anchor=True))
        subjects.append(Subject(DIRECT, upstream, f"http://127.0.0.1:{port}/", limit=True))
        top = max(settings.concurrencies)
        for _, method, body in REQUESTS:
            for subject in subjects:
                if not subject.limit:
                    warm_up(subject.url, settings.warmup_seconds, top, method, body)
        steady = Steady.of("mode=http watchdog", watchdog.pid, pool=top)
        for label, method, body in REQUESTS:
            for concurrency in settings.concurrencies:
                rows = interleaved(
                    f"1 http {label}", subjects, concurrency, settings.seconds,
                    method=method, body_size=body,
                )  # fmt: skip
                for row in rows:
                    result.add(row)
                    if row.path == WATCHDOG:
                        steady.requests += requests_in_rounds(row)
        result.steady.append(steady.finish(watchdog.pid))


def start_of_watchdog(children: Children, run_dir: Path, binary: Path) -> Service:
    """The Go of-watchdog in http mode, supervising its own bench upstream; returned once a
    request gets through (its /_/health answers before the upstream listens)."""
    port = free_port()
    env = {
        "mode": "http",
        "fprocess": upstream_command(port),
        "upstream_url": f"http://127.0.0.1:{port}",
        "PYTHONPATH": str(ROOT),
    }
    service = anchors.start(children, run_dir, binary, env)
    wait_http(service, "/")
    return service
