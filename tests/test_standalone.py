"""The self-contained fwatchdog that Dockerfile.template's builder stage produces.

Docker cannot run here, so the test does what the image would: it builds the artifact with the
recipe's own script (packaging/build-standalone.sh), then runs it as a container would run it in
an image without Python: ``env -i`` (nothing inherited), a PATH holding only the handler's
command, a working directory outside the project.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, RunningWatchdog, free_port, leftovers, wait_until_serving

from watchdog.forkserver import NAME as FORK_SERVER_NAME

BUILD_SCRIPT = ROOT / "packaging" / "build-standalone.sh"
# What the artifact may load from outside itself: glibc, as every Debian-based image has it.
GLIBC_LIBRARIES = ("ld-linux", "libc.so", "libdl.so", "libm.so", "libpthread.so", "librt.so")

# The build (a virtual environment, the dependencies, PyInstaller) runs once per session in the
# first test's setup: about 30 s on 2 cores.
pytestmark = pytest.mark.timeout(600)

Start = Callable[..., RunningWatchdog]


@pytest.fixture(scope="session")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the artifact as the recipe does; yield its executable; delete it after."""
    base = tmp_path_factory.mktemp("standalone")
    out = base / "fwatchdog"
    result = subprocess.run(
        [str(BUILD_SCRIPT), str(out)],
        env={**os.environ, "PYTHON": sys.executable, "TMPDIR": str(base)},
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, f"build failed:\n{result.stdout}\n{result.stderr}"
    assert [p.name for p in base.iterdir()] == ["fwatchdog"], "the build left files behind"
    yield out / "fwatchdog"
    shutil.rmtree(base)


@pytest.fixture
def run_minimal(standalone: Path, tmp_path: Path) -> Iterator[Start]:
    """``run_minimal(fprocess=..., **env)`` starts the artifact under ``env -i`` with a PATH that
    holds only ``cat`` and ``env``, in a directory outside the project; all are reaped after."""
    started: list[RunningWatchdog] = []
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in ("cat", "env"):
        (bin_dir / command).symlink_to(shutil.which(command) or f"/usr/bin/{command}")
    assert shutil.which("python3", path=str(bin_dir)) is None
    assert not tmp_path.resolve().is_relative_to(ROOT.resolve())

    def start(**env: str) -> RunningWatchdog:
        run_dir = tmp_path / f"run{len(started)}"
        run_dir.mkdir()
        full_env = {
            "PATH": str(bin_dir),
            "TMPDIR": str(run_dir),
            "port": str(free_port()),
            "metrics_port": str(free_port()),
            "healthcheck_interval": "0",
            **env,
        }
        log_path = run_dir / "watchdog.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in full_env.items()), standalone],
                cwd=run_dir,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wd = RunningWatchdog(
            proc, int(full_env["port"]), int(full_env["metrics_port"]), log_path, run_dir
        )
        started.append(wd)
        wait_until_serving(wd)
        return wd

    yield start
    for wd in started:
        if wd.proc.poll() is None:
            wd.proc.kill()
        wd.proc.wait(10)


def mapped_files(pid: int) -> set[Path]:
    """Every file mapped into the process: its executable and each shared library loaded."""
    with open(f"/proc/{pid}/maps") as maps:
        fields = (line.split(maxsplit=5) for line in maps)
        return {Path(f[5].strip()) for f in fields if len(f) == 6 and f[5].startswith("/")}


def healthcheck(standalone: Path, tmpdir: Path) -> int:
    return subprocess.run(
        ["/usr/bin/env", "-i", f"TMPDIR={tmpdir}", standalone, "-run-healthcheck"],
        capture_output=True,
        timeout=30,
    ).returncode


def test_serves_a_cat_function_without_python(standalone: Path, run_minimal: Start) -> None:
    wd = run_minimal(fprocess="cat")

    reply = wd.request("POST", "/", body=b"hello from nowhere")
    assert (reply.status, reply.body) == (200, b"hello from nowhere")
    big = os.urandom(1 << 20)  # past the 256 KiB hold: the streamed path
    reply = wd.request("POST", "/", body=big)
    assert (reply.status, reply.body) == (200, big)

    bundle = standalone.parent
    loaded = mapped_files(wd.proc.pid)
    outside = {p for p in loaded if not p.is_relative_to(bundle)}
    assert all(p.name.startswith(GLIBC_LIBRARIES) for p in outside), outside
    assert any(p.parts[-2:-1] == ("uvloop",) for p in loaded), "uvloop is not in use"
    children = psutil.Process(wd.proc.pid).children()
    assert [c.name() for c in children] == [FORK_SERVER_NAME]
    assert leftovers(wd.proc.pid) == []
    assert healthcheck(standalone, wd.tmpdir) == 0

    wd.proc.send_signal(signal.SIGTERM)
    assert wd.proc.wait(30) == 0
    assert not (wd.tmpdir / ".lock").exists()
    assert healthcheck(standalone, wd.tmpdir) == 1
    assert not psutil.pid_exists(children[0].pid)


def test_handlers_get_the_container_environment_not_the_bundles(run_minimal: Start) -> None:
    wd = run_minimal(fprocess="env", MARKER="kept")

    reply = wd.request("GET", "/path?q=1")

    assert reply.status == 200
    handler_env = dict(line.split("=", 1) for line in reply.text.splitlines())
    assert handler_env["MARKER"] == "kept"
    assert handler_env["PATH"] == str(wd.tmpdir.parent / "bin")
    assert handler_env["Http_Path"] == "/path"
    assert not [name for name in handler_env if name.startswith(("LD_", "_PYI", "_MEI"))]
    wd.proc.send_signal(signal.SIGTERM)
    assert wd.proc.wait(30) == 0
