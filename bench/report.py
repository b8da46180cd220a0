"""What a run measured, its JSON file, and the table rendered into ``bench/README.md``.

A :class:`Measurement` is one load on one path. Rows of a scenario that share a concurrency
are compared with that scenario's ``limit`` row; :class:`Check` rows compare a figure with a
target from the issue.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).parent
RESULTS_DIR = BENCH_DIR / "results"
README = BENCH_DIR / "README.md"


def markers(mode: str) -> tuple[str, str]:
    """The README block of a mode (``quick`` or ``full``): each ``all`` run replaces its own."""
    return f"<!-- results:{mode}:begin -->", f"<!-- results:{mode}:end -->"


@dataclass
class Measurement:
    scenario: str
    path: str
    concurrency: int
    rps: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_ms_per_req: float | None = None  # = CPU seconds per 1,000 requests
    peak_rss_mb: float | None = None
    requests: int = 0
    errors: int = 0
    limit: bool = False  # the row the others of this scenario and concurrency compare with
    anchor: bool = False  # a Go watchdog run beside fwatchdog: the "vs Go" column's base
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class Check:
    target: str
    measured: str
    passed: bool


@dataclass
class Run:
    command: str
    started: str
    machine: dict[str, str]
    settings: dict[str, object]
    measurements: list[Measurement] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    steady: list[dict[str, object]] = field(default_factory=list)  # leak checks per server
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, measurement: Measurement) -> Measurement:
        self.measurements.append(measurement)
        return measurement

    def check(self, target: str, measured: str, passed: bool) -> None:
        self.checks.append(Check(target, measured, passed))

    def find(self, scenario: str, path: str, concurrency: int) -> Measurement | None:
        for row in self.measurements:
            if (row.scenario, row.path, row.concurrency) == (scenario, path, concurrency):
                return row
        return None

    def limit_for(self, row: Measurement) -> Measurement | None:
        for other in self.measurements:
            if (
                other.limit
                and other.scenario == row.scenario
                and other.concurrency in (row.concurrency, 0)
            ):
                return other
        return None

    def anchor_for(self, row: Measurement) -> Measurement | None:
        """The Go watchdog's row of the same scenario and concurrency, if it ran."""
        for other in self.measurements:
            if (
                other.anchor
                and other.scenario == row.scenario
                and other.concurrency == row.concurrency
            ):
                return other
        return None


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": str(os.cpu_count()),
        "memory": f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB" if mem else "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": (wrk.stdout or wrk.stderr).split("\n")[0].split(" Copyright")[0].strip(),
        "load average at start": load_average(),
    }


def load_average() -> str:
    """1-minute load average: how busy the shared machine was (other work included)."""
    return f"{os.getloadavg()[0]:.1f}"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def save(run: Run) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H%M%S")
    path = RESULTS_DIR / f"{stamp}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(run), indent=1) + "\n")
    tmp.rename(path)
    return path


def load(path: Path) -> Run:
    raw = json.loads(path.read_text())
    raw["measurements"] = [Measurement(**row) for row in raw["measurements"]]
    raw["checks"] = [Check(**row) for row in raw["checks"]]
    return Run(**raw)


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def render(run: Run, json_name: str) -> str:
    m = run.machine
    lines = [
        f"Run of {run.started}, `{run.command}`, {run.seconds:.0f} s in all; "
        f"raw figures in `results/{json_name}`.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['wrk']}. Load average (1 min) at start "
        f"{m.get('load average at start', '?')}, at end {m.get('load average at end', '?')}.",
        "",
        "| scenario | path | conc. | req/s | p50 ms | p99 ms | CPU ms/req | peak RSS MB "
        "| vs limit | vs Go |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in run.measurements:
        limit = "limit" if row.limit else ratio(row, run.limit_for(row))
        # A limit (the upstream directly, a spawn loop) is no watchdog: no ratio to the Go one.
        anchor = "Go" if row.anchor else "" if row.limit else ratio(row, run.anchor_for(row))
        errors = f" ({row.errors} errors)" if row.errors else ""
        lines.append(
            f"| {row.scenario} | {row.path}{errors} | {row.concurrency or ''} "
            f"| {_num(row.rps, 1) if row.rps else ''} "
            f"| {_num(row.p50_ms)} | {_num(row.p99_ms)} | {_num(row.cpu_ms_per_req, 3)} "
            f"| {_num(row.peak_rss_mb, 1)} | {limit} | {anchor} |"
        )
    lines += ["", "| target | measured | |", "|---|---|---|"]
    for check in run.checks:
        lines.append(
            f"| {check.target} | {check.measured} | {'met' if check.passed else 'MISSED'} |"
        )
    if run.steady:
        lines += [
            "",
            "RSS and open files of each server after warm-up and after all of its scenario's load:",
            "",
            "| server | requests | RSS before → after MB | open fds before → after |",
            "|---|---:|---:|---:|",
        ]
        for s in run.steady:
            fds = f"{s['fds_before']} → {s['fds_after']}" if s["fds_before"] != "" else ""
            lines.append(
                f"| {s['server']} | {s['requests']:,} | {s['rss_before_mb']} → {s['rss_after_mb']} "
                f"| {fds} |"
            )
    if run.notes:
        lines += [""] + [f"- {note}" for note in run.notes]
    return "\n".join(lines)


def ratio(row: Measurement, base: Measurement | None) -> str:
    """A row's requests/s over its base's; for times (start-up rows), its p50 over the base's."""
    if base is None or base is row:
        return ""
    if base.rps and row.rps:
        return f"{row.rps / base.rps:.2f}×"
    if base.p50_ms and row.p50_ms:  # slower is more
        return f"{row.p50_ms / base.p50_ms:.2f}× the time"
    return ""


def update_readme(run: Run, json_path: Path, mode: str) -> None:
    """Replace the block between the mode's markers in bench/README.md with this run's table."""
    begin, end = markers(mode)
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{begin}\n{render(run, json_path.name)}\n{end}{tail}")
