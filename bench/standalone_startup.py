"""Start-up of the self-contained fwatchdog against the venv's ``fwatchdog``.

    python -m bench.standalone_startup [--artifact DIR/fwatchdog] [--runs 20]

Without ``--artifact`` it first builds one with packaging/build-standalone.sh (and reports the
build's time and size). For each executable: ``fwatchdog --version`` (interpreter and import
cost) and start-to-ready with ``fprocess=cat`` (exec until ``/_/health`` answers 200, polled
every millisecond), median and slowest of ``--runs``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/_/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def time_to_ready(executable: Path, directory: Path) -> float:
    port = _free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "TMPDIR": str(directory),
        "fprocess": "cat",
        "port": str(port),
        "metrics_port": str(_free_port()),
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
        return time.perf_counter() - started
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
    print(f"  {label:<16} median {statistics.median(ms):7.1f} ms   slowest {ms[-1]:7.1f} ms")


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
        for label, executable in (("standalone", artifact), ("venv", venv)):
            print(f"{label}: {executable}")
            _report("--version", [time_version(executable) for _ in range(args.runs)])
            runs = []
            for _ in range(args.runs):
                run_dir = Path(tempfile.mkdtemp(dir=scratch))
                runs.append(time_to_ready(executable, run_dir))
                shutil.rmtree(run_dir)
            _report("start to ready", runs)


if __name__ == "__main__":
    main()
