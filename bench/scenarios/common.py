"""What every scenario shares: the run settings, one metered wrk load, and interleaved rounds
of loads on servers running side by side."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .. import anchors, wrk
from ..procs import Meter, wait_idle
from ..report import Measurement

SETTLE = 0.5  # seconds for closed connections to be gone before counting open files


@dataclass(frozen=True)
class Settings:
    seconds: float  # per wrk run
    concurrencies: tuple[int, ...]
    warmup_seconds: float
    spawn_seconds: float
    startup_runs: int
    async_seconds: float
    drain_calls: int
    # Where the Go watchdogs are (str: the settings go into the run's JSON as they are).
    anchors_dir: str = str(anchors.DEFAULT_DIR)
    bundle: str = ""  # a built self-contained fwatchdog (OUT_DIR/fwatchdog), if any

    @classmethod
    def quick(cls) -> Settings:
        return cls(1, (1, 16, 64), 1, 1, 7, 1, 2_000)

    @classmethod
    def full(cls) -> Settings:
        return cls(5, (1, 16, 64), 2, 3, 7, 5, 100_000)


def measure(
    scenario: str,
    path: str,
    pid: int,
    url: str,
    concurrency: int,
    seconds: float,
    *,
    method: str = "GET",
    body_size: int = 0,
    headers: dict[str, str] | None = None,
    limit: bool = False,
    anchor: bool = False,
    timeout: float = 10,
) -> Measurement:
    """One bounded wrk run against ``url`` while metering process ``pid``'s CPU and RSS."""
    wait_idle(pid)
    with Meter(pid) as meter:
        result = wrk.run(
            url,
            connections=concurrency,
            seconds=seconds,
            method=method,
            body_size=body_size,
            headers=headers,
            timeout=timeout,
        )
    usage = meter.usage
    assert usage is not None
    requests = max(result.requests, 1)
    return Measurement(
        scenario=scenario,
        path=path,
        concurrency=concurrency,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_ms_per_req=round(usage.cpu_seconds * 1000 / requests, 4),
        peak_rss_mb=usage.peak_rss_mb,
        requests=result.requests,
        errors=result.errors,
        limit=limit,
        anchor=anchor,
        extra={
            "cpu_cores": round(usage.cpu_seconds / result.seconds, 2) if result.seconds else 0,
            "handler_cpu_ms_per_req": round(usage.handler_cpu_seconds * 1000 / requests, 4),
            "open_fds": usage.open_fds,
            "p90_ms": result.p90_ms,
            "max_ms": result.max_ms,
        },
    )


ROUNDS = 3  # interleaved rounds where servers are compared side by side


@dataclass(frozen=True)
class Subject:
    """A server a scenario loads: its row's path, the process metered, the URL loaded."""

    path: str
    pid: int
    url: str
    limit: bool = False  # the physical limit of the scenario (e.g. the upstream directly)
    anchor: bool = False  # the Go watchdog the others are compared with


def interleaved(
    scenario: str,
    subjects: list[Subject],
    concurrency: int,
    seconds: float,
    *,
    rounds: int = ROUNDS,
    key: str = "rps",
    method: str = "GET",
    body_size: int = 0,
    timeout: float = 10,
) -> list[Measurement]:
    """``rounds`` rounds, each loading every subject in turn, so a change in the shared
    machine's load moves them all; per subject, the round of median ``key`` (``rps`` or
    ``p50_ms``), with every round's figures in its ``extra``."""
    by_subject: list[list[Measurement]] = [[] for _ in subjects]
    for _ in range(rounds):
        for subject, rows in zip(subjects, by_subject, strict=True):
            rows.append(
                measure(
                    scenario, subject.path, subject.pid, subject.url, concurrency, seconds,
                    method=method, body_size=body_size, limit=subject.limit,
                    anchor=subject.anchor, timeout=timeout,
                )
            )  # fmt: skip
    return [median_round(rows, key) for rows in by_subject]


def median_round(rows: list[Measurement], key: str = "rps") -> Measurement:
    """The row of the median ``key`` (a real round, not figures mixed from several)."""
    ranked = sorted(rows, key=lambda row: getattr(row, key) or 0)
    chosen = ranked[len(ranked) // 2]
    if len(rows) > 1:
        chosen.extra["rounds_rps"] = [row.rps for row in rows]
        chosen.extra["rounds_p50_ms"] = [row.p50_ms for row in rows]
        chosen.extra["rounds_p99_ms"] = [row.p99_ms for row in rows]
        chosen.extra["rounds_cpu_ms_per_req"] = [row.cpu_ms_per_req for row in rows]
        chosen.extra["rounds_requests"] = [row.requests for row in rows]
    return chosen


def requests_in_rounds(row: Measurement) -> int:
    """Every request a row's rounds served (a leak check counts them all)."""
    rounds = row.extra.get("rounds_requests")
    return sum(rounds) if isinstance(rounds, list) else row.requests


def warm_up(
    url: str, seconds: float, concurrency: int, method: str = "GET", body_size: int = 0
) -> None:
    """Load at the scenario's highest concurrency, so pools and buffers have grown before the
    leak check's first snapshot; then let closed connections settle."""
    wrk.run(url, connections=concurrency, seconds=seconds, method=method, body_size=body_size)
    time.sleep(SETTLE)


@dataclass
class Steady:
    """RSS and open files of a server after warm-up and after all of a scenario's load."""

    name: str
    rss_before_mb: float
    fds_before: int
    requests: int = 0
    pool: int = 0  # keep-alive connections a client pool may hold: not a leak

    @classmethod
    def of(cls, name: str, pid: int, pool: int = 0) -> Steady:
        wait_idle(pid)
        time.sleep(SETTLE)
        meter = Meter(pid)
        return cls(name, round(meter.rss() / 2**20, 1), meter.proc.num_fds(), pool=pool)

    def finish(self, pid: int) -> dict[str, object]:
        wait_idle(pid)
        time.sleep(SETTLE)
        meter = Meter(pid)
        return {
            "server": self.name,
            "requests": self.requests,
            "rss_before_mb": self.rss_before_mb,
            "rss_after_mb": round(meter.rss() / 2**20, 1),
            "fds_before": self.fds_before,
            "fds_after": meter.proc.num_fds(),
            "pool": self.pool,
        }


def anchor(settings: Settings, name: str) -> Path | None:
    """The Go watchdog ``name`` of this run's anchors folder (None, said once, if missing)."""
    return anchors.find(Path(settings.anchors_dir), name)
