"""What every scenario shares: the run settings and one metered wrk load."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .. import wrk
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

    @classmethod
    def quick(cls) -> Settings:
        return cls(1, (1, 16, 64), 1, 1, 3, 1, 2_000)

    @classmethod
    def full(cls) -> Settings:
        return cls(5, (1, 16, 64), 2, 3, 10, 5, 100_000)


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
        extra={
            "cpu_cores": round(usage.cpu_seconds / result.seconds, 2) if result.seconds else 0,
            "handler_cpu_ms_per_req": round(usage.handler_cpu_seconds * 1000 / requests, 4),
            "open_fds": usage.open_fds,
            "p90_ms": result.p90_ms,
            "max_ms": result.max_ms,
        },
    )


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
