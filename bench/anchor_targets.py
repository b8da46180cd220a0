"""Issue 13's targets, checked against the Go watchdogs measured in the same run.

Each check is added only when its rows were measured (an anchor missing from the anchors
folder, or a scenario not run, leaves its checks out; the run said so when it skipped them).
"""

from __future__ import annotations

from .report import Measurement, Run
from .scenarios import fork_modes, gateway_sync, http_mode, startup

HTTP_RPS_RATIO = 1.5  # × of-watchdog's requests/s
HTTP_CPU_RATIO = 0.5  # × of-watchdog's CPU per request
FORK_RPS_RATIO = 1.2  # × the classic watchdog's requests/s
STARTUP_MS = 120
IDLE_RSS_MB = 26
GATEWAY_P50_RATIO = 1.15  # × the watchdog reached directly
GATEWAY_RPS_RATIO = 0.9
CONCURRENCY = 16
PREFIX = "issue 13: "


def add_checks(run: Run) -> None:
    for label, _, _ in http_mode.REQUESTS:
        _http_checks(run, f"1 http {label}", label)
    _fork_checks(run)
    _startup_checks(run)
    _gateway_checks(run)


def _check(run: Run, target: str, measured: str, passed: bool) -> None:
    run.check(PREFIX + target, measured, passed)


def _http_checks(run: Run, scenario: str, label: str) -> None:
    ours = run.find(scenario, http_mode.WATCHDOG, CONCURRENCY)
    go = run.find(scenario, http_mode.OF_WATCHDOG, CONCURRENCY)
    if ours and go and go.rps:
        _ratio_check(run, f"http {label}, c16: req/s", ours, go, HTTP_RPS_RATIO)
        ours_cpu, go_cpu = ours.cpu_ms_per_req or 0, go.cpu_ms_per_req or 0
        _check(
            run,
            f"http {label}, c16: watchdog CPU/req ≤ {HTTP_CPU_RATIO}× of-watchdog's",
            f"{ours_cpu * 1000:.0f} / {go_cpu * 1000:.0f} µs = {_over(ours_cpu, go_cpu)}",
            go_cpu > 0 and ours_cpu <= HTTP_CPU_RATIO * go_cpu,
        )
        ours_p99, go_p99 = ours.p99_ms or 0, go.p99_ms or 0
        _check(
            run,
            f"http {label}, c16: p99 ≤ of-watchdog's",
            f"{ours_p99:.2f} / {go_p99:.2f} ms",
            ours_p99 <= go_p99,
        )
    ours, go = (
        run.find(scenario, http_mode.WATCHDOG, 1),
        run.find(scenario, http_mode.OF_WATCHDOG, 1),
    )
    direct = run.find(scenario, http_mode.DIRECT, 1)
    if ours and go and direct and ours.p50_ms and go.p50_ms and direct.p50_ms:
        ours_added, go_added = ours.p50_ms - direct.p50_ms, go.p50_ms - direct.p50_ms
        _check(
            run,
            f"http {label}, c1: added latency (p50 − direct p50) ≤ of-watchdog's",
            f"{ours_added * 1000:.0f} / {go_added * 1000:.0f} µs",
            ours_added <= go_added,
        )


def _fork_checks(run: Run) -> None:
    scenario = "2 fork cat"
    ours = run.find(scenario, "watchdog, default (auto)", CONCURRENCY)
    go = run.find(scenario, fork_modes.CLASSIC, CONCURRENCY)
    if not (ours and go and go.rps):
        return
    _ratio_check(run, "fork cat, c16: req/s", ours, go, FORK_RPS_RATIO, "the classic watchdog")
    ours_cpu, go_cpu = ours.cpu_ms_per_req or 0, go.cpu_ms_per_req or 0
    _check(
        run,
        "fork cat, c16: CPU/req (watchdog + fork server) ≤ the classic watchdog's",
        f"{ours_cpu:.3f} / {go_cpu:.3f} ms = {_over(ours_cpu, go_cpu)}",
        ours_cpu <= go_cpu,
    )


def _startup_checks(run: Run) -> None:
    go = run.find(startup.SCENARIO, startup.OF_WATCHDOG, 0)
    beside = f" (of-watchdog {go.p50_ms:.1f} ms)" if go and go.p50_ms else ""
    go_rss = f" (of-watchdog {go.peak_rss_mb:.1f} MB)" if go and go.peak_rss_mb else ""
    for path, what in (
        (startup.FORK, "fork mode"),
        (startup.HTTP, "mode=http"),
        (startup.BUNDLE, "bundle, fork mode"),
    ):
        row = run.find(startup.SCENARIO, path, 0)
        if row is None or row.p50_ms is None:
            continue
        _check(
            run,
            f"start-up, {what}: exec → /_/health 200 ≤ {STARTUP_MS} ms (median)",
            f"{row.p50_ms:.0f} ms{beside}",
            row.p50_ms <= STARTUP_MS,
        )
        rss = row.peak_rss_mb or 0
        _check(
            run,
            f"idle RSS, {what} (watchdog + fork server) ≤ {IDLE_RSS_MB} MB",
            f"{rss:.1f} MB{go_rss}",
            rss <= IDLE_RSS_MB,
        )


def _gateway_checks(run: Run) -> None:
    for concurrency in (1, CONCURRENCY):
        direct = run.find(gateway_sync.SCENARIO, gateway_sync.DIRECT, concurrency)
        via = run.find(gateway_sync.SCENARIO, gateway_sync.VIA, concurrency)
        if not (direct and via and direct.p50_ms and via.p50_ms and direct.rps):
            continue
        p50 = via.p50_ms / direct.p50_ms
        _check(
            run,
            f"gateway sync, c{concurrency}: p50 ≤ {GATEWAY_P50_RATIO}× the watchdog directly",
            f"{via.p50_ms:.2f} / {direct.p50_ms:.2f} ms = {p50:.2f}×",
            p50 <= GATEWAY_P50_RATIO,
        )
        rps = via.rps / direct.rps
        _check(
            run,
            f"gateway sync, c{concurrency}: req/s ≥ {GATEWAY_RPS_RATIO}× the watchdog directly",
            f"{via.rps:,.0f} / {direct.rps:,.0f} req/s = {rps:.2f}×",
            rps >= GATEWAY_RPS_RATIO,
        )


def _ratio_check(
    run: Run, what: str, ours: Measurement, go: Measurement, target: float, name: str = ""
) -> None:
    ratio = ours.rps / go.rps
    anchor = name or "of-watchdog"
    _check(
        run,
        f"{what} ≥ {target}× {anchor}'s (same run)",
        f"{ours.rps:,.0f} / {go.rps:,.0f} req/s = {ratio:.2f}×",
        ratio >= target,
    )


def _over(ours: float, go: float) -> str:
    return f"{ours / go:.2f}×" if go else "n/a"
