"""Where a scenario's fwatchdog spends its CPU: py-spy samples it under wrk's load.

    python -m bench profile http|fork [--seconds N] [--rate HZ] [--native]

``http``: fwatchdog in ``mode=http`` in front of ``bench/upstream.py`` (scenario 1's), small
GETs; ``fork``: fwatchdog's default mode with ``fprocess=cat`` (scenario 2's), 16-byte POSTs.
wrk loads it at concurrency 16 for the whole recording while ``py-spy record --subprocesses``
samples the watchdog and its fork server (not the upstream nor the handlers: py-spy follows
Python children only, and the upstream is left out below). Only samples of threads that were
running count (py-spy's default), so a function's own share is its share of the CPU seen.

Prints the functions with the most own time (and their inclusive share), and writes py-spy's
speedscope file (open it at speedscope.app or with ``speedscope FILE``) and that summary into
``bench/results/<date>-<time>-profile-<scenario>/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from . import wrk
from .procs import Children, Service, free_port, terminated_on_sigterm
from .report import RESULTS_DIR
from .scenarios.common import warm_up
from .scenarios.fork_modes import BODY as FORK_BODY
from .scenarios.http_mode import ROOT, upstream_command

CONCURRENCY = 16
TOP = 25


@dataclass(frozen=True)
class Target:
    """What a profile loads: the request and the watchdog's settings."""

    method: str
    body_size: int


TARGETS = {"http": Target("GET", 0), "fork": Target("POST", FORK_BODY)}


@dataclass(frozen=True)
class FunctionTime:
    name: str  # function (file)
    own: float  # seconds sampled with this function on top of the stack
    total: float  # seconds sampled with it anywhere on the stack


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench profile", description=__doc__)
    parser.add_argument("scenario", choices=sorted(TARGETS))
    parser.add_argument("--seconds", type=float, default=10, help="recording length (10)")
    parser.add_argument("--rate", type=int, default=200, help="samples per second (200)")
    parser.add_argument("--native", action="store_true", help="C frames too (uvloop, parser)")
    args = parser.parse_args(argv)
    py_spy = find_py_spy()
    wrk.ensure_wrk()
    out = RESULTS_DIR / f"{datetime.now(UTC):%Y-%m-%d-%H%M%S}-profile-{args.scenario}"
    out.mkdir(parents=True)
    speedscope = out / "py-spy.speedscope.json"
    target = TARGETS[args.scenario]
    try:
        with terminated_on_sigterm(), tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            with Children(Path(tmp)) as children:
                watchdog = start_watchdog(children, args.scenario)
                warm_up(watchdog.url + "/", 1, CONCURRENCY, target.method, target.body_size)
                record(py_spy, watchdog, target, speedscope, args.seconds, args.rate, args.native)
                names = {watchdog.pid: "watchdog", **child_names(watchdog.pid)}
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130
    document = json.loads(speedscope.read_text())
    summary = render(
        own_times(document),
        f"python -m bench profile {' '.join(argv)}",
        process_seconds(document, names),
    )
    (out / "top.txt").write_text(summary + "\n")
    print(summary)
    print(f"\nwritten: {speedscope} and {out / 'top.txt'}", file=sys.stderr)
    return 0


def find_py_spy() -> str:
    """py-spy of this interpreter's environment (the test extra installs it), else PATH's."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy not found: pip install -e '.[test]' (or pip install py-spy)")
    return found


def start_watchdog(children: Children, scenario: str) -> Service:
    if scenario == "http":
        port = free_port()
        return children.watchdog(
            "profile-http",
            mode="http",
            fprocess=upstream_command(port),
            upstream_url=f"http://127.0.0.1:{port}",
            PYTHONPATH=str(ROOT),
        )
    return children.watchdog("profile-fork", fprocess="cat", max_inflight="0")


def record(
    py_spy: str,
    watchdog: Service,
    target: Target,
    output: Path,
    seconds: float,
    rate: int,
    native: bool,
) -> None:
    """py-spy records for ``seconds`` while wrk loads a little longer, so every sample is
    taken under load."""
    argv = [py_spy, "record", "--pid", str(watchdog.pid), "--subprocesses", "--format"]
    argv += ["speedscope", "--output", str(output), "--rate", str(rate)]
    argv += ["--duration", str(max(1, round(seconds)))] + (["--native"] if native else [])
    spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.2)  # attaching takes a moment; wrk runs longer than the recording
        wrk.run(
            watchdog.url + "/",
            connections=CONCURRENCY,
            seconds=seconds + 2,
            method=target.method,
            body_size=target.body_size,
        )
        spy_out, _ = spy.communicate(timeout=seconds + 60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not output.is_file():
        raise RuntimeError(f"py-spy exited {spy.returncode}: {spy_out.decode(errors='replace')}")


def own_times(speedscope: dict[str, Any]) -> list[FunctionTime]:
    """Own and inclusive seconds per function over every sampled thread of a speedscope file
    (py-spy's: stacks root first), the upstream's threads left out; most own time first."""
    frames = speedscope["shared"]["frames"]
    names = [_function(frame) for frame in frames]
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for profile in speedscope["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack or _is_upstream(frames, stack):
                continue
            own[names[stack[-1]]] += weight
            for name in {names[index] for index in stack}:
                total[name] += weight
    functions = [FunctionTime(name, own[name], seconds) for name, seconds in total.items()]
    return sorted(functions, key=lambda function: (-function.own, -function.total))


def child_names(pid: int) -> dict[int, str]:
    return {child.pid: child.name() for child in psutil.Process(pid).children()}


def process_seconds(speedscope: dict[str, Any], names: dict[int, str]) -> dict[str, float]:
    """Seconds sampled per process (py-spy names each profile "Process PID Thread ..."; the
    watchdog's alone, without --subprocesses, just "Thread ..."), named from ``names``; the
    upstream's left out as above."""
    frames = speedscope["shared"]["frames"]
    seconds: Counter[str] = Counter()
    for profile in speedscope["profiles"]:
        words = str(profile.get("name", "")).split()
        pid = int(words[1]) if words[:1] == ["Process"] and len(words) > 1 else 0
        label = names.get(pid, f"process {pid}" if pid else "watchdog")
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if stack and not _is_upstream(frames, stack):
                seconds[label] += weight
    return dict(seconds.most_common())


def _function(frame: dict[str, Any]) -> str:
    file = str(frame.get("file") or "")
    return f"{frame['name']} ({_short(file)})" if file else str(frame["name"])


def _short(file: str) -> str:
    """A path from its package on: site-packages/aiohttp/web.py -> aiohttp/web.py."""
    for marker in ("site-packages/", "/lib/python3"):
        if marker in file:
            tail = file.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker.startswith("/lib") else tail
    return file.removeprefix(str(ROOT) + "/")


def _is_upstream(frames: list[dict[str, Any]], stack: list[int]) -> bool:
    return any("bench/upstream.py" in str(frames[index].get("file")) for index in stack)


def render(
    functions: list[FunctionTime],
    command: str,
    processes: dict[str, float] | None = None,
    top: int = TOP,
) -> str:
    seconds = sum(function.own for function in functions)
    lines = [
        f"`{command}`: {seconds:.2f} s of samples (running threads, watchdog and fork server)",
        "",
    ]
    if processes and seconds:
        shares = ", ".join(f"{name} {100 * s / seconds:.0f}%" for name, s in processes.items())
        lines += [f"By process: {shares}.", ""]
    lines += [
        "| own % | total % | function |",
        "|---:|---:|---|",
    ]
    for function in functions[:top]:
        own, total = (100 * x / seconds if seconds else 0 for x in (function.own, function.total))
        lines.append(f"| {own:.1f} | {total:.1f} | {function.name} |")
    return "\n".join(lines)
