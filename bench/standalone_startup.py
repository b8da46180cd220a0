"""Start-up of the self-contained fwatchdog against the venv's ``fwatchdog``.

    python -m bench.standalone_startup [--artifact DIR/fwatchdog] [--runs 20]

Without ``--artifact`` it first builds one with packaging/build-standalone.sh (and reports the
build's time and size). For each executable: ``fwatchdog --version`` (interpreter and import
cost) and start-to-ready with ``fprocess=cat`` (exec until ``/_/health`` answers 200, polled
every millisecond; wall clock and CPU time), median and slowest of ``--runs``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .procs import free_port

ROOT = Path(__file__).parent.parent


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/_/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def time_to_ready(executable: Path, directory: Path) -> tuple[float, float]:
    """Wall-clock seconds from exec to the first 200 from /_/health, and the CPU seconds the
    watchdog (and its fork server) used by then: the figure that a loaded machine bends least."""
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "TMPDIR": str(directory),
        "fprocess": "cat",
        "port": str(port),
        "metrics_port": str(free_port()),
        "healthcheck_interval": "0",
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(executable)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while not _healthy(port):
            if proc.poll() is not None:
                raise RuntimeError(f"{executable} exited with {proc.returncode}")
            time.sleep(0.001)
        wall = time.perf_counter() - started
        cpu = psutil.Process(proc.pid).cpu_times()
        helpers = sum(sum(c.cpu_times()[:2]) for c in psutil.Process(proc.pid).children())
        return wall, cpu.user + cpu.system + helpers
    finally:
        proc.terminate()
        proc.wait(30)


def time_version(executable: Path) -> float:
    started = time.perf_counter()
    subprocess.run([str(executable), "--version"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def build(out: Path) -> tuple[float, int]:
    started = time.perf_counter()
    subprocess.run(
        [str(ROOT / "packaging" / "build-standalone.sh"), str(out)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        stdout=subprocess.DEVNULL,
    )
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and not p.is_symlink())
    return time.perf_counter() - started, size


def _report(label: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    print(f"  {label:<22} median {statistics.median(ms):7.1f} ms   slowest {ms[-1]:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="a built DIR/fwatchdog (default: build)")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        artifact = args.artifact
        if artifact is None:
            seconds, size = build(Path(scratch) / "fwatchdog")
            print(f"build: {seconds:.1f} s, {size / 2**20:.1f} MiB")
            artifact = Path(scratch) / "fwatchdog" / "fwatchdog"
        venv = Path(sys.executable).parent / "fwatchdog"
        candidates = {"standalone": artifact, "venv": venv}
        versions: dict[str, list[float]] = {label: [] for label in candidates}
        starts: dict[str, list[tuple[float, float]]] = {label: [] for label in candidates}
        # Interleaved, so that a change in the machine's load hits both alike.
        for _ in range(args.runs):
            for label, executable in candidates.items():
                versions[label].append(time_version(executable))
                run_dir = Path(tempfile.mkdtemp(dir=scratch))
                starts[label].append(time_to_ready(executable, run_dir))
                shutil.rmtree(run_dir)
        for label, executable in candidates.items():
            print(f"{label}: {executable}")
            _report("--version", versions[label])
            _report("start to ready (wall)", [wall for wall, _ in starts[label]])
            _report("start to ready (CPU)", [cpu for _, cpu in starts[label]])


if __name__ == "__main__":
    main()
