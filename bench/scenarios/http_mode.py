"""Scenario 1, mode=http: the fast upstream reached directly (the limit) vs. through the
watchdog, for a small GET and a 64 KiB POST, at every concurrency.

The limit is the very upstream process the watchdog supervises, reached on its own port.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psutil

from ..procs import Children, free_port
from ..report import Run
from .common import Settings, Steady, measure, warm_up

POST_SIZE = 64 * 1024
REQUESTS = (("small GET", "GET", 0), ("64 KiB POST", "POST", POST_SIZE))
ROOT = Path(__file__).parent.parent.parent


def run(result: Run, settings: Settings, run_dir: Path) -> None:
    with Children(run_dir) as children:
        port = free_port()
        watchdog = children.watchdog(
            "http-watchdog",
            mode="http",
            fprocess=f"{sys.executable} -m bench.upstream {port}",
            upstream_url=f"http://127.0.0.1:{port}",
            PYTHONPATH=str(ROOT),
        )
        upstream = next(
            child.pid
            for child in psutil.Process(watchdog.pid).children()
            if "bench.upstream" in " ".join(child.cmdline())
        )
        upstream_url = f"http://127.0.0.1:{port}/"
        top = max(settings.concurrencies)
        for _, method, body in REQUESTS:
            warm_up(watchdog.url + "/", settings.warmup_seconds, top, method, body)
        steady = Steady.of("mode=http watchdog", watchdog.pid, pool=max(settings.concurrencies))
        for label, method, body in REQUESTS:
            scenario = f"1 http {label}"
            for concurrency in settings.concurrencies:
                load = {"method": method, "body_size": body}
                result.add(
                    measure(
                        scenario, "upstream directly", upstream, upstream_url, concurrency,
                        settings.seconds, limit=True, **load,
                    )
                )  # fmt: skip
                proxied = measure(
                    scenario, "watchdog → upstream", watchdog.pid, watchdog.url + "/",
                    concurrency, settings.seconds, **load,
                )  # fmt: skip
                result.add(proxied)
                steady.requests += proxied.requests
        result.steady.append(steady.finish(watchdog.pid))
