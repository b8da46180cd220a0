"""One command for every benchmark:

    python -m bench all [--quick]          # every scenario; table into bench/README.md
    python -m bench http fork gateway      # some of them (JSON only, README untouched)
    python -m bench profile http|fork      # py-spy on a scenario's fwatchdog under load

The Go watchdogs (of-watchdog, classic-watchdog) run beside fwatchdog in scenarios 1, 2, 6 and
7 when ``--anchors DIR`` (default: shared/anchors/bin beside the repository) has them.

Scenarios: http (1), fork (2), python (3), gateway (4), async (5), startup (6), prefork (7),
queues (8: SQLite and NATS, one node and a 3-node cluster, one and two gateways).
Each load is wrk on loopback, bounded in time; every process started is reaped at the end, on
errors and Ctrl-C too. Results go to bench/results/<date>-<time>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import anchor_targets, anchors, profile, report, wrk
from .procs import terminated_on_sigterm
from .report import Run
from .scenarios import (
    async_calls,
    fork_modes,
    gateway_sync,
    http_mode,
    nats_queue,
    prefork,
    startup,
)
from .scenarios.common import ROUNDS, Settings

Scenario = Callable[[Run, Settings, Path], None]
SCENARIOS: dict[str, Scenario] = {
    "http": http_mode.run,
    "fork": fork_modes.run_cat,
    "python": fork_modes.run_python,
    "gateway": gateway_sync.run,
    "async": async_calls.run,
    "startup": startup.run,
    "prefork": prefork.run,
    "queues": nats_queue.run,
}

# Figures of the Go OpenFaaS watchdogs on this machine class (shared/reference/performance.md).
OF_WATCHDOG_HTTP_RPS = 14_100
OF_WATCHDOG_HTTP_P99_MS = 4.8
CLASSIC_FORK_RPS = 1_980
FLAT_RSS_MB = 5.0
# Issue 14's targets for prefork, as multiples of the classic watchdog in the same run.
PREFORK_TEMPLATE_RATIO = 10
PREFORK_HEAVY_RATIO = 50
PREFORK_CHILD_USS_MB = 4.0
FLAT_FDS = 2
# Issue 18's targets for the NATS queue (one gateway, one nats-server) and the cluster's share.
NATS_ACCEPT_RPS = 3_000
NATS_DRAIN_RPS = 700
NATS_CLUSTER_RATIO = 0.6


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["profile"]:
        return profile.main(argv[1:])
    args = parse_args(argv)
    names = list(SCENARIOS) if "all" in args.scenarios else args.scenarios
    settings = Settings.quick() if args.quick else Settings.full()
    settings = dataclasses.replace(
        settings, anchors_dir=str(args.anchors.resolve()), bundle=str(args.bundle or "")
    )
    wrk.ensure_wrk()
    command = "python -m bench " + " ".join(args.scenarios) + (" --quick" if args.quick else "")
    result = Run(command, report.now(), report.machine(), settings.__dict__)
    started = time.monotonic()
    try:
        with terminated_on_sigterm(), tempfile.TemporaryDirectory(prefix="bench-") as run_dir:
            for name in names:
                print(f"== {name}", file=sys.stderr, flush=True)
                begun = time.monotonic()
                SCENARIOS[name](result, settings, Path(run_dir))
                print(f"   {time.monotonic() - begun:.1f} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped; nothing written", file=sys.stderr)
        return 130
    result.seconds = time.monotonic() - started
    result.machine["load average at end"] = report.load_average()
    add_checks(result, settings)
    add_notes(result, settings)
    path = report.save(result)
    table = report.render(result, path.name)
    print(table)
    block = _readme_block(args.scenarios, args.quick)
    if block:
        report.update_readme(result, path, block)
        print(f"\nwritten: {path} and {report.README}", file=sys.stderr)
    else:
        print(f"\nwritten: {path}", file=sys.stderr)
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="+", choices=["all", *SCENARIOS])
    parser.add_argument("--quick", action="store_true", help="1 s loads, 2,000 queued calls")
    parser.add_argument(
        "--anchors",
        type=Path,
        default=anchors.DEFAULT_DIR,
        metavar="DIR",
        help="the Go watchdogs' folder (default: %(default)s); missing ones' rows are skipped",
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        metavar="FILE",
        help="a built self-contained fwatchdog (OUT_DIR/fwatchdog of "
        "packaging/build-standalone.sh) for the start-up scenario",
    )
    return parser.parse_args(argv)


def _readme_block(scenarios: list[str], quick: bool) -> str | None:
    """The README table a run replaces: ``all`` runs, and ``prefork`` alone (issue 14's)."""
    if "all" in scenarios:
        return "quick" if quick else "full"
    if scenarios == ["prefork"] and not quick:
        return "prefork"
    return None


def add_checks(run: Run, settings: Settings) -> None:
    http = run.find("1 http small GET", "watchdog → upstream", 16)
    if http:
        run.check(
            f"http mode, small GET, c16: ≥ {OF_WATCHDOG_HTTP_RPS:,} req/s (Go of-watchdog)",
            f"{http.rps:,.0f} req/s",
            http.rps >= OF_WATCHDOG_HTTP_RPS,
        )
        cpu = http.cpu_ms_per_req or 0
        run.check(
            "http mode: ≤ 70 µs watchdog CPU per request", f"{cpu * 1000:.0f} µs", cpu <= 0.07
        )
        p99 = http.p99_ms or 0
        run.check(
            f"http mode, c16: p99 ≤ {OF_WATCHDOG_HTTP_P99_MS} ms (of-watchdog's)",
            f"{p99:.2f} ms",
            p99 <= OF_WATCHDOG_HTTP_P99_MS,
        )
    fork = run.find("2 fork cat", "watchdog, default (auto)", 16)
    if fork:
        run.check(
            f"fork mode, cat, c16: ≥ {CLASSIC_FORK_RPS:,} req/s (Go classic watchdog)",
            f"{fork.rps:,.0f} req/s",
            fork.rps >= CLASSIC_FORK_RPS,
        )
        cpu = fork.cpu_ms_per_req or 0
        run.check("fork mode: ≤ 0.28 ms watchdog CPU per request", f"{cpu:.3f} ms", cpu <= 0.28)
    for concurrency in (1, 16):
        direct = run.find("4 gateway sync (cat)", "watchdog directly", concurrency)
        via = run.find("4 gateway sync (cat)", "gateway → watchdog", concurrency)
        if direct and via and direct.p50_ms and via.p50_ms:
            ratio = via.p50_ms / direct.p50_ms
            run.check(
                f"gateway sync, c{concurrency}: p50 latency ≤ 1.30 × the watchdog's",
                f"{via.p50_ms:.2f} / {direct.p50_ms:.2f} ms = {ratio:.2f}×",
                ratio <= 1.30,
            )
    durable = run.find(
        "5 async accept", "gateway: POST /async-function → 202 (durable)", async_calls.CONCURRENCY
    )
    if durable:
        run.check(
            "async: > 2,000 durable acceptances/s at c32 (HTTP, 202)",
            f"{durable.rps:,.0f}/s",
            durable.rps > 2000,
        )
    for row in run.measurements:
        if row.scenario == "5 async drain" and not row.limit:
            full, peak = float(row.extra["rss_full_mb"]), float(row.extra["rss_peak_mb"])  # type: ignore[arg-type]
            run.check(
                f"async: {settings.drain_calls:,} queued calls drain with flat RSS",
                f"gateway {full} MB at start → peak {peak} MB; drained in "
                f"{row.extra['drain_seconds']} s",
                peak - full <= FLAT_RSS_MB,
            )
    ready = run.find(startup.SCENARIO, startup.FORK, 0)
    if ready and ready.p50_ms is not None:
        run.check(
            "start-up to /_/health < 150 ms (median)", f"{ready.p50_ms:.0f} ms", ready.p50_ms < 150
        )
        rss = ready.peak_rss_mb or 0
        run.check("idle RSS ≤ 35 MB", f"{rss:.1f} MB", rss <= 35)
    add_prefork_checks(run)
    add_queue_checks(run)
    anchor_targets.add_checks(run)
    for steady in run.steady:
        if steady["fds_before"] == "":
            continue
        grown = float(steady["rss_after_mb"]) - float(steady["rss_before_mb"])  # type: ignore[arg-type]
        fds = int(steady["fds_after"]) - int(steady["fds_before"])  # type: ignore[call-overload]
        # A client pool (http mode's, the gateway's) may hold one idle keep-alive connection
        # per concurrent request and lets them expire: its size moves, a leak only grows.
        allowed = FLAT_FDS + int(steady.get("pool", 0))  # type: ignore[call-overload]
        run.check(
            f"{steady['server']}: RSS (+{FLAT_RSS_MB:.0f} MB) and open files (+{allowed}) flat"
            " (issue: after 100,000 requests; this run: as many as its time allowed)",
            f"{grown:+.1f} MB, {fds:+d} fds after {steady['requests']:,} requests",
            grown <= FLAT_RSS_MB and fds <= allowed,
        )


def add_prefork_checks(run: Run) -> None:
    targets = (
        (prefork.TEMPLATE, "template", PREFORK_TEMPLATE_RATIO),
        (prefork.HEAVY, "heavy imports", PREFORK_HEAVY_RATIO),
    )
    for scenario, what, ratio in targets:
        for concurrency in prefork.CONCURRENCIES:
            subject = run.find(scenario, "fwatchdog, prefork=true", concurrency)
            classic = run.limit_for(subject) if subject else None
            if subject and classic and classic.rps:
                measured = subject.rps / classic.rps
                run.check(
                    f"prefork, {what}, c{concurrency}: ≥ {ratio}× the classic watchdog (same run)",
                    f"{subject.rps:,.1f} / {classic.rps:,.1f} req/s = {measured:.1f}×",
                    measured >= ratio,
                )
    for row in run.measurements:
        if row.scenario == prefork.MEMORY and "USS of one running child" in row.path:
            uss = row.peak_rss_mb or 0
            what = row.path.split(":")[0]
            run.check(
                f"prefork, {what}: USS of one running child ≤ {PREFORK_CHILD_USS_MB:g} MB",
                f"{uss:.2f} MB",
                uss <= PREFORK_CHILD_USS_MB,
            )


def add_queue_checks(run: Run) -> None:
    single = nats_queue.Backend("NATS 1 node", [], [])
    cluster = nats_queue.Backend(f"NATS 3 nodes R{nats_queue.REPLICAS}", [], [])
    for scenario, what, target in (
        (nats_queue.ACCEPT, "durable acceptances", NATS_ACCEPT_RPS),
        (nats_queue.DRAIN, "completions (cat watchdog)", NATS_DRAIN_RPS),
    ):
        one = run.find(scenario, nats_queue.label(single, 1), nats_queue.CONCURRENCY)
        if one is None:
            continue
        run.check(
            f"NATS, one node, one gateway: ≥ {target:,} {what}/s at c32",
            f"{one.rps:,.0f}/s",
            one.rps >= target,
        )
        for gateways in (1, 2):
            row = run.find(scenario, nats_queue.label(cluster, gateways), nats_queue.CONCURRENCY)
            base = run.find(scenario, nats_queue.label(single, gateways), nats_queue.CONCURRENCY)
            if row and base and base.rps:
                ratio = row.rps / base.rps
                run.check(
                    f"NATS cluster R3, {gateways} gateway(s), {what}: ≥ {NATS_CLUSTER_RATIO}× "
                    "one node's",
                    f"{row.rps:,.0f} / {base.rps:,.0f} = {ratio:.2f}×",
                    ratio >= NATS_CLUSTER_RATIO,
                )
        for backend in (single, cluster):
            alone = run.find(scenario, nats_queue.label(backend, 1), nats_queue.CONCURRENCY)
            two = run.find(scenario, nats_queue.label(backend, 2), nats_queue.CONCURRENCY)
            if alone and two and alone.rps:
                run.check(
                    f"{backend.name}, {what}: a second gateway adds throughput "
                    "(2 cores shared by all)",
                    f"{two.rps:,.0f} / {alone.rps:,.0f} = {two.rps / alone.rps:.2f}×",
                    two.rps > alone.rps,
                )


def add_notes(run: Run, settings: Settings) -> None:
    if any(not row.scenario.startswith("7 prefork") for row in run.measurements):
        run.notes.append(
            f"Each load: wrk -t1, {settings.seconds:g} s, after a {settings.warmup_seconds:g} s "
            "warm-up; a limit and its subject are measured back to back at the same "
            "concurrency. wrk, the servers and other engineers' work share the cores, so "
            "absolute figures drift (±10% and more); the ratios and CPU per request hold better."
        )
    run.notes.append(
        "CPU ms/req = CPU seconds per 1,000 requests of the metered process: the watchdog (plus "
        "its fork server fw-spawner and prefork zygote, not the handlers), the gateway, or the "
        "upstream for 'directly' rows; for spawn loops, the spawning process."
    )
    if run.checks and any(not c.target.startswith("prefork") for c in run.checks):
        run.notes.append(
            "Targets quoting Go watchdogs with a figure compare with figures measured on this "
            "machine class on another day (shared/reference/performance.md), not in this run."
        )
    if any(row.anchor for row in run.measurements):
        run.notes.append(
            "'vs Go' is the row's req/s over the Go watchdog's (of-watchdog 0.11.6 in http mode, "
            "classic-watchdog 0.3.9 in fork mode; shared/anchors) at the same concurrency in "
            f"this run (start-up: its time over theirs). Servers compared side by side take "
            f"{ROUNDS} interleaved rounds per concurrency, the round of median req/s shown "
            "(gateway sync: median p50); issue 13's targets compare with these rows."
        )
    floor = gateway_sync.floor_note(run)
    if floor is not None:
        run.notes.append(floor)
    if any(row.scenario.startswith("8 queue") for row in run.measurements):
        run.notes.append(
            f"8 queue backends: {ROUNDS} interleaved rounds (each runs every backend in turn), "
            "per row the round of median calls/s; every round's figures are in the JSON."
        )
    if any(row.scenario.startswith("7 prefork") for row in run.measurements):
        run.notes.append(prefork_note(settings))
    if settings.drain_calls < 100_000 and any(
        row.scenario == "5 async drain" for row in run.measurements
    ):
        run.notes.append(
            f"--quick drains {settings.drain_calls:,} queued calls; the full run drains 100,000."
        )


def prefork_note(settings: Settings) -> str:
    full = settings.seconds >= prefork.TEMPLATE_SECONDS
    divisor = 1 if full else 2  # --quick: loads half as long (whole seconds, as wrk takes)
    rounds = f"{prefork.TEMPLATE_ROUNDS} interleaved rounds" if full else "one round"
    return (
        f"7 prefork: wrk -t1 POSTs of {prefork.BODY} bytes to three servers running side by "
        f"side; the template: {prefork.TEMPLATE_SECONDS // divisor:g} s loads in {rounds}, the "
        f"round of median req/s shown; the heavy handler (a spawned one costs about 0.3 s of "
        f"CPU): one round of {prefork.HEAVY_SECONDS // divisor:g} s loads, requests unanswered "
        f"after {prefork.HEAVY_TIMEOUT:g} s counted as errors. 'vs limit' is vs the Go classic "
        "watchdog 0.3.9 (shared/anchors) in this run, same fprocess (the interpreter itself, "
        "not a shim); fwatchdog in serializing mode, as the project's python3 template. wrk, "
        "the servers and other engineers' work share the 2 cores: absolute figures drift with "
        "the load average (in the header), the ratios less."
    )


if __name__ == "__main__":
    sys.exit(main())
