"""Scenario 7, ``prefork``: Python handlers forked from a warm zygote, against the Go classic
watchdog (``../shared/anchors/bin/classic-watchdog``) in the same run.

a. the official classic ``python3`` template's ``index.py`` and ``function/handler.py``,
   unchanged (the copy in tests/fixtures/prefork);
b. a handler whose imports take at least 200 ms of CPU: a package generated into the run's
   temporary folder, its bytecode compiled beforehand as an installed library's is;

each under the classic watchdog (the row the others are compared with), fwatchdog without
``prefork`` and fwatchdog with ``prefork=true``, at concurrency 1 and 16; then

c. memory: the USS of one running prefork child (a variant of each handler that sleeps 0.5 s,
   sampled while it runs) and the zygote's RSS.
"""

from __future__ import annotations

import http.client
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from .. import anchors
from ..procs import MB, Children, Service, get_text, is_zygote
from ..report import Measurement, Run
from .common import Settings, anchor, measure

TEMPLATE = "7 prefork python3 template"
HEAVY = "7 prefork heavy imports"
MEMORY = "7 prefork memory"
CONCURRENCIES = (1, 16)
TEMPLATE_SECONDS = 5
TEMPLATE_ROUNDS = 3
# A spawned heavy handler costs about 0.3 s of CPU: at concurrency 16 on 2 busy cores a round
# of 16 requests takes several seconds (8 s seen at a load average of 9), and wrk counts only
# the requests answered in its run. Its ratios are large enough for one round.
HEAVY_SECONDS = 20
HEAVY_TIMEOUT = 30
BODY = 16
REPO = Path(__file__).resolve().parents[2]
TEMPLATE_FILES = REPO / "tests" / "fixtures" / "prefork"
HEAVY_CPU_TARGET = 0.2  # seconds of CPU the handler's imports must take
HEAVY_MODULES = 200  # first guess: 200 modules of 1,000 functions, about 0.22 s here
HEAVY_FUNCTIONS = 1000
MEMORY_SAMPLES = 5
SLEEPING_HANDLER = "import time\n\n\ndef handle(req):\n    time.sleep(0.5)\n    return req\n"


@dataclass(frozen=True)
class Handler:
    scenario: str
    fprocess: str
    sleeping_fprocess: str
    seconds: float
    rounds: int
    timeout: float  # seconds before wrk counts a request as an error
    note: str = ""


def run(result: Run, settings: Settings, run_dir: Path) -> None:
    python = os.path.realpath(sys.executable)  # not a shim: the interpreter itself
    template = _template_handler(run_dir, python)
    heavy, import_cpu = _heavy_handler(run_dir, python)
    full = settings.seconds >= TEMPLATE_SECONDS  # --quick: one round of loads half as long
    classic = anchor(settings, anchors.CLASSIC)
    for handler in (template, heavy):
        seconds = handler.seconds if full else handler.seconds // 2
        _load_rows(result, run_dir, handler, seconds, handler.rounds if full else 1, classic)
    for row in result.measurements:
        if row.scenario == HEAVY:
            row.extra["handler_import_cpu_ms"] = round(import_cpu * 1000, 1)
    for handler in (template, heavy):
        _memory_rows(result, run_dir, handler)


# -- the handlers ---------------------------------------------------------------------------


def _template_handler(run_dir: Path, python: str) -> Handler:
    folder = _copy_template(run_dir / "template")
    sleeping = _copy_template(run_dir / "template-sleeping")
    (sleeping / "function" / "handler.py").write_text(SLEEPING_HANDLER)
    fprocess = f"{python} {folder / 'index.py'}"
    sleeping_fprocess = f"{python} {sleeping / 'index.py'}"
    return Handler(TEMPLATE, fprocess, sleeping_fprocess, TEMPLATE_SECONDS, TEMPLATE_ROUNDS, 10)


def _copy_template(folder: Path) -> Path:
    (folder / "function").mkdir(parents=True)
    shutil.copy(TEMPLATE_FILES / "index.py", folder)
    for name in ("__init__.py", "handler.py"):
        shutil.copy(TEMPLATE_FILES / "function" / name, folder / "function")
    return folder


def _heavy_handler(run_dir: Path, python: str) -> tuple[Handler, float]:
    """A package of ``modules`` × 1,000 functions whose import (bytecode cached) takes at least
    ``HEAVY_CPU_TARGET`` of CPU on this machine: measured, and grown until it does."""
    folder = run_dir / "heavy"
    folder.mkdir()
    modules = HEAVY_MODULES
    for _ in range(4):
        _write_heavy_package(folder / "heavypkg", modules)
        cpu = _import_cpu(python, folder)
        if cpu >= HEAVY_CPU_TARGET:
            break
        modules = int(modules * HEAVY_CPU_TARGET / cpu * 1.15) + 1
    main = 'if __name__ == "__main__":\n'
    echo = "    sys.stdout.write(sys.stdin.read())\n"
    script = "import sys\nimport time\n\nimport heavypkg  # noqa: F401\n\n" + main
    (folder / "heavy.py").write_text(script + echo)
    (folder / "heavy_sleeping.py").write_text(script + "    time.sleep(0.5)\n" + echo)
    functions = modules * HEAVY_FUNCTIONS
    handler = Handler(
        HEAVY,
        f"{python} {folder / 'heavy.py'}",
        f"{python} {folder / 'heavy_sleeping.py'}",
        HEAVY_SECONDS,
        1,
        HEAVY_TIMEOUT,
        f"{functions:,} functions in {modules} modules, import {cpu * 1000:.0f} ms CPU",
    )
    return handler, cpu


def _write_heavy_package(package: Path, modules: int) -> None:
    shutil.rmtree(package, ignore_errors=True)
    package.mkdir()
    (package / "__init__.py").write_text("".join(f"from . import m{j}\n" for j in range(modules)))
    body = "".join(f"def f_{i}(x):\n    return x + {i}\n\n\n" for i in range(HEAVY_FUNCTIONS))
    for j in range(modules):
        (package / f"m{j}.py").write_text(body)
    # Compiled now, as pip compiles an installed library: the load pays no compilation.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)


def _import_cpu(python: str, folder: Path) -> float:
    """Median CPU seconds of ``import heavypkg`` in a fresh interpreter (three runs)."""
    code = "import time; t = time.process_time(); import heavypkg; print(time.process_time() - t)"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    runs = [
        float(subprocess.run(
            [python, "-c", code], cwd=folder, env=env, capture_output=True, text=True, check=True
        ).stdout)
        for _ in range(3)
    ]  # fmt: skip
    return statistics.median(runs)


# -- the loads ------------------------------------------------------------------------------


SUBJECTS = (
    ("classic watchdog (Go)", None),
    ("fwatchdog, no prefork", "false"),
    ("fwatchdog, prefork=true", "true"),
)


def _load_rows(
    result: Run,
    run_dir: Path,
    handler: Handler,
    seconds: float,
    rounds: int,
    classic: Path | None,
) -> None:
    """The three servers run side by side (idle but for the one loaded); rounds interleave
    them, so a change in the shared machine's load moves all three: each row is the round of
    median requests/s, the others' in ``rounds_rps``."""
    with Children(run_dir) as children:
        servers = _servers(children, run_dir, handler, classic)
        by_row: dict[tuple[str, int], list[Measurement]] = {}
        for _ in range(rounds):
            for concurrency in CONCURRENCIES:
                for label, server in servers:
                    row = measure(
                        handler.scenario, label, server.pid, server.url + "/", concurrency,
                        seconds, method="POST", body_size=BODY, limit=label == SUBJECTS[0][0],
                        timeout=handler.timeout,
                    )  # fmt: skip
                    by_row.setdefault((label, concurrency), []).append(row)
    for (label, _), rows in by_row.items():
        row = sorted(rows, key=lambda r: r.rps)[len(rows) // 2]
        row.extra["rounds_rps"] = [r.rps for r in rows]
        if handler.note and row.limit:
            row.path = f"{label}; {handler.note}"
        result.add(row)


def _servers(
    children: Children, run_dir: Path, handler: Handler, classic: Path | None
) -> list[tuple[str, Service]]:
    servers = []
    for label, prefork in SUBJECTS:
        if prefork is not None:
            servers.append((label, _fwatchdog(children, handler.fprocess, prefork)))
        elif classic:  # missing: anchor() said so, its rows are skipped
            env = {"fprocess": handler.fprocess}
            servers.append((label, anchors.start(children, run_dir, classic, env, "classic")))
    return servers


def _fwatchdog(children: Children, fprocess: str, prefork: str) -> Service:
    # The project's python3 template: serializing, and prefork unless turned off.
    service = children.watchdog(
        f"prefork-{prefork}", fprocess=fprocess, mode="serializing", prefork=prefork
    )
    if prefork == "true":
        _wait_warm(service)
    return service


def _wait_warm(service: Service, timeout: float = 60) -> None:
    """Until the zygote has warmed up: before that, requests are spawned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = get_text(service.extra_ports["metrics"], "/metrics")
        if 'fwatchdog_prefork_events_total{event="warm"} 1.0' in metrics:
            return
        if 'event="warmup_failed"} 1.0' in metrics:
            break
        time.sleep(0.05)
    raise RuntimeError(f"the zygote did not warm up:\n{service.logs()}")


# -- memory ---------------------------------------------------------------------------------


def _memory_rows(result: Run, run_dir: Path, handler: Handler) -> None:
    with Children(run_dir) as children:
        service = _fwatchdog(children, handler.sleeping_fprocess, "true")
        zygote = _zygote(service.pid)
        uss = [_running_child_uss(service, zygote) for _ in range(MEMORY_SAMPLES)]
        zygote_rss = zygote.memory_info().rss / MB
        zygote_uss = zygote.memory_full_info().uss / MB
    what = handler.scenario.removeprefix("7 prefork ")
    result.add(
        Measurement(
            MEMORY,
            f"{what}: USS of one running child (MB, in the RSS column; median of "
            f"{MEMORY_SAMPLES}, each the peak while it ran)",
            0,
            rps=0,
            peak_rss_mb=round(statistics.median(uss), 2),
            extra={"child_uss_mb": [round(x, 2) for x in uss]},
        )
    )
    result.add(
        Measurement(
            MEMORY,
            f"{what}: the zygote's RSS (MB; its USS {zygote_uss:.1f} MB)",
            0,
            rps=0,
            peak_rss_mb=round(zygote_rss, 1),
            extra={"zygote_uss_mb": round(zygote_uss, 1)},
        )
    )


def _zygote(watchdog_pid: int) -> psutil.Process:
    for child in psutil.Process(watchdog_pid).children():
        if is_zygote(child):
            return child
    raise RuntimeError("no zygote running")


def _running_child_uss(service: Service, zygote: psutil.Process) -> float:
    """The peak USS of the zygote's child while it serves one request (it sleeps 0.5 s)."""
    peak = 0
    deadline = time.monotonic() + 10
    with _request_in_background(service.port):
        while (not peak or zygote.children()) and time.monotonic() < deadline:
            for child in zygote.children():
                try:
                    peak = max(peak, child.memory_full_info().uss)
                except psutil.Error:
                    continue
            time.sleep(0.02)
    return peak / MB


@contextmanager
def _request_in_background(port: int) -> Iterator[None]:
    def post() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/", body=b"x" * BODY)
            conn.getresponse().read()
        finally:
            conn.close()

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(30)
