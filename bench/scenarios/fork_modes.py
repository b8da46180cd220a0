"""Scenarios 2 and 3: handlers forked per request, against the spawn limit.

2. ``cat`` through ``serializing``, ``streaming`` and the default mode (``auto``);
3. a Python handler (``python3 -c`` echoing stdin), where the interpreter's start-up is the
   limit.

The limit of each concurrency is :func:`bench.spawn_limit.spawn_loop` with as many loops as
there can be useful parallel spawns: ``min(concurrency, cores)``. With ``cat``, the Go classic
watchdog (the anchor, same ``fprocess``) runs beside the default mode when the anchors folder
has it: the two take interleaved rounds at each concurrency, each keeping its round of median
requests/s. Its CPU is its own process's (it forks ``cat`` itself); fwatchdog's is the
watchdog's plus its fork server's.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from .. import anchors
from ..procs import Children
from ..report import Measurement, Run
from ..spawn_limit import SpawnResult, spawn_loop
from .common import (
    ROUNDS,
    Settings,
    Steady,
    Subject,
    anchor,
    interleaved,
    requests_in_rounds,
    warm_up,
)

BODY = 16
PYTHON_ECHO = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"
PYTHON_MIN_SECONDS = 2
MODES = (("default (auto)", None), ("serializing", "serializing"), ("streaming", "streaming"))
CLASSIC = "classic watchdog (Go)"


def run_cat(result: Run, settings: Settings, run_dir: Path) -> None:
    classic = anchor(settings, anchors.CLASSIC)
    _run_family(result, settings, run_dir, "2 fork cat", ["cat"], MODES, settings.seconds, classic)


def run_python(result: Run, settings: Settings, run_dir: Path) -> None:
    # The interpreter itself: ``python3`` on PATH may be a wrapper (pyenv's shim is a shell
    # script that costs more than the interpreter's start-up).
    argv = [os.path.realpath(sys.executable), "-c", PYTHON_ECHO]
    # Tens of ms per request: a 1 s load at concurrency 64 would not complete a round.
    seconds = max(2 * settings.seconds, PYTHON_MIN_SECONDS)
    _run_family(result, settings, run_dir, "3 fork python3", argv, MODES[:1], seconds)


def _run_family(
    result: Run,
    settings: Settings,
    run_dir: Path,
    scenario: str,
    argv: list[str],
    modes: tuple[tuple[str, str | None], ...],
    seconds: float,
    classic: Path | None = None,
) -> None:
    """The spawn limit, then each mode's watchdog on its own; the first (default) mode with
    the classic watchdog beside it, in interleaved rounds, when ``classic`` is given."""
    spawn_seconds = min(seconds, settings.spawn_seconds * seconds / settings.seconds)
    by_workers: dict[int, SpawnResult] = {}  # 16 and 64 both spawn from `cores` threads
    for concurrency in settings.concurrencies:
        workers = min(concurrency, os.cpu_count() or 1)
        if workers not in by_workers:
            by_workers[workers] = spawn_loop(argv, b"x" * BODY, spawn_seconds, workers)
        result.add(_spawn_limit_row(scenario, concurrency, by_workers[workers]))
    top = max(settings.concurrencies)
    for index, (label, mode) in enumerate(modes):
        with Children(run_dir) as children:
            env = {"fprocess": shlex.join(argv), "max_inflight": "0"}
            if mode:
                env["mode"] = mode
            watchdog = children.watchdog(f"fork-{label.split()[0]}", **env)
            subjects = [Subject(f"watchdog, {label}", watchdog.pid, watchdog.url + "/")]
            if classic and index == 0:
                go = anchors.start(children, run_dir, classic, {"fprocess": shlex.join(argv)})
                subjects.append(Subject(CLASSIC, go.pid, go.url + "/", anchor=True))
            for subject in subjects:
                warm_up(subject.url, settings.warmup_seconds, top, "POST", BODY)
            steady = Steady.of(f"{scenario}, {label}", watchdog.pid)
            rounds = ROUNDS if len(subjects) > 1 else 1
            for concurrency in settings.concurrencies:
                rows = interleaved(
                    scenario, subjects, concurrency, seconds, rounds=rounds,
                    method="POST", body_size=BODY,
                )  # fmt: skip
                for row in rows:
                    result.add(row)
                steady.requests += requests_in_rounds(rows[0])
            result.steady.append(steady.finish(watchdog.pid))


def _spawn_limit_row(scenario: str, concurrency: int, spawned: SpawnResult) -> Measurement:
    workers = spawned.workers
    return Measurement(
        scenario=scenario,
        path=f"spawn loop, no HTTP ({workers} thread{'s' if workers > 1 else ''}; "
        f"handler CPU {spawned.handler_cpu_ms_per_spawn:.2f} ms each)",
        concurrency=concurrency,
        rps=round(spawned.rate, 1),
        cpu_ms_per_req=round(spawned.cpu_ms_per_spawn, 4),
        requests=spawned.spawns,
        limit=True,
        extra={"handler_cpu_ms_per_req": round(spawned.handler_cpu_ms_per_spawn, 4)},
    )
