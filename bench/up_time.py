"""Time from ``fwatchdog up`` to the first successful invoke through the gateway, with the
venv cache cold (empty) and warm (the venv of the previous run reused).

    python -m bench.up_time --lang python3-http --runs 3 [--requirement six]

Each run starts ``fwatchdog up`` as a child process in a project made by ``fwatchdog new``,
POSTs to ``/function/NAME`` every 20 ms from the moment it was spawned until one answers 200,
then stops it with SIGINT. Cold runs get a fresh cache folder (and, with ``--requirement``,
pip's own download cache is off, so the package is fetched); warm runs share one.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .procs import free_port

NAME = "fn"


def fwatchdog(project: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "watchdog", *args], cwd=project, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def invoke_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", f"/function/{NAME}", body=b"bench")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def time_one_up(project: Path, cache: Path, pip_cache: bool) -> float:
    port = free_port()
    env = dict(os.environ, FWATCHDOG_CACHE_DIR=str(cache))
    if not pip_cache:
        env["PIP_NO_CACHE_DIR"] = "1"
    started = time.perf_counter()
    with open(project / "up.out", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "watchdog", "up", "--port", str(port)],
            cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        while not invoke_ok(port):
            if proc.poll() is not None:
                raise SystemExit(f"up exited with {proc.returncode}: see {project / 'up.out'}")
            if time.perf_counter() - started > 300:
                raise SystemExit("no successful invoke within 300 s")
            time.sleep(0.02)
        return time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lang", default="python3-http")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requirement", default="", help="add to the handler's requirements")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fwatchdog-up-bench-") as tmp:
        project = Path(tmp)
        fwatchdog(project, "new", NAME, "--lang", args.lang, "-q")
        if args.requirement:
            (project / NAME / "requirements.txt").write_text(args.requirement + "\n")
        cold = [
            time_one_up(project, project / f"cache-cold-{i}", pip_cache=not args.requirement)
            for i in range(args.runs)
        ]
        warm_cache = project / "cache-warm"
        time_one_up(project, warm_cache, pip_cache=True)  # fills the cache
        warm = [time_one_up(project, warm_cache, pip_cache=True) for _ in range(args.runs)]
    extra = f", handler requirement {args.requirement}" if args.requirement else ""
    print(f"fwatchdog up -> first successful invoke ({args.lang}{extra}), {args.runs} runs each")
    for label, times in (("cold venv cache", cold), ("warm venv cache", warm)):
        print(
            f"  {label}: median {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f})"
        )


if __name__ == "__main__":
    main()
