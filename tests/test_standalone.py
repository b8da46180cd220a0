"""The self-contained fwatchdog that Dockerfile.template's builder stage produces.

Docker cannot run here, so the test does what the image would: it builds the artifact with the
recipe's own script (packaging/build-standalone.sh), then runs it as a container would run it in
an image without Python: ``env -i`` (nothing inherited), a PATH holding only the handler's
command, a working directory outside the project.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dockerfile
import psutil
import pytest
from conftest import ROOT, RunningWatchdog, free_port, leftovers, stop_process

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
    # Dockerfile.template runs it as nobody.
    unreadable = [p for p in out.rglob("*") if not p.stat().st_mode & stat.S_IROTH]
    assert unreadable == []
    yield out / "fwatchdog"
    shutil.rmtree(base)


@pytest.fixture
def run_minimal(standalone: Path, tmp_path: Path) -> Iterator[Start]:
    """``run_minimal(*args, fprocess=..., **env)`` starts the artifact under ``env -i`` with a
    PATH that holds only ``cat`` and ``env``, in a directory outside the project, and waits until
    it answers ``health`` (a path); all are stopped and reaped after."""
    started: list[RunningWatchdog] = []
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in ("cat", "env"):
        (bin_dir / command).symlink_to(shutil.which(command) or f"/usr/bin/{command}")
    assert shutil.which("python3", path=str(bin_dir)) is None
    assert not tmp_path.resolve().is_relative_to(ROOT.resolve())

    def start(*args: str, health: str = "/_/health", **env: str) -> RunningWatchdog:
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
            variables = [f"{k}={v}" for k, v in full_env.items()]
            proc = subprocess.Popen(
                ["/usr/bin/env", "-i", *variables, standalone, *args],
                cwd=run_dir,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wd = RunningWatchdog(
            proc, int(full_env["port"]), int(full_env["metrics_port"]), log_path, run_dir
        )
        started.append(wd)
        wait_until_answering(wd, health)
        return wd

    yield start
    for wd in started:
        stop_process(wd.proc)


def wait_until_answering(wd: RunningWatchdog, path: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wd.proc.poll() is not None:
            raise AssertionError(f"exited with {wd.proc.returncode}:\n{wd.logs()}")
        try:
            if wd.request("GET", path, timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{path} never answered 200:\n{wd.logs()}")


def test_the_recipe_builds_with_this_script_and_copies_its_output() -> None:
    # What this module tests is what Dockerfile.template ships, as long as this holds.
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile.template"))
    runs = [c.value[0] for c in commands if c.cmd == "RUN"]
    assert "packaging/build-standalone.sh /opt/fwatchdog" in runs
    copies = [(c.flags, c.value) for c in commands if c.cmd == "COPY"]
    assert (("--from=fwatchdog-builder",), ("/opt/fwatchdog", "/opt/fwatchdog")) in copies


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
    deadline = time.monotonic() + 10  # the handlers are reaped just after they answered
    while leftovers(wd.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
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


def test_http_mode_proxies_to_an_upstream(standalone: Path, run_minimal: Start) -> None:
    # The upstream is the artifact itself serving `cat` in fork mode: no other server exists
    # in an image without Python. `env` gives it its own port and mode, without a shell.
    inner = free_port()
    wd = run_minimal(
        mode="http",
        fprocess=f"env mode=auto port={inner} metrics_port={free_port()} fprocess=cat "
        f"suppress_lock=true {standalone}",
        upstream_url=f"http://127.0.0.1:{inner}",
    )

    reply = wd.request("POST", "/echo?x=1", body=b"through two watchdogs")

    assert (reply.status, reply.body) == (200, b"through two watchdogs")
    upstream = [c for c in psutil.Process(wd.proc.pid).children() if c.name() != FORK_SERVER_NAME]
    assert len(upstream) == 1
    wd.proc.send_signal(signal.SIGTERM)
    assert wd.proc.wait(30) == 0
    assert [p for p in upstream if p.is_running() and p.status() != "zombie"] == []


def test_the_gateway_routes_to_a_function(standalone: Path, run_minimal: Start) -> None:
    function = run_minimal(fprocess="cat")
    gateway = run_minimal("gateway", f"--function=echo={function.url}", health="/healthz")

    reply = gateway.request("POST", "/function/echo", body=b"via the gateway")

    assert (reply.status, reply.body) == (200, b"via the gateway")
    listed = json.loads(gateway.request("GET", "/system/functions").body)
    assert [f["name"] for f in listed] == ["echo"]
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(30) == 0


# What every Debian-based image (debian:bookworm-slim, node:20) has: glibc, and zlib, which
# PyInstaller's bootloader links before it can load the bundle's own libraries.
BASE_IMAGE_LIBRARIES = ("libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1")
BASE_IMAGE_LIBRARIES += ("libz.so.1",)


def bare_root_filesystem(root: Path, bundle: Path) -> None:
    """A root filesystem with the bundle in /opt/fwatchdog, /bin/cat, glibc and zlib: nothing
    else, no Python anywhere."""
    cat = Path(shutil.which("cat") or "/bin/cat")
    linked = {}
    ldd = subprocess.run(["ldd", str(cat)], capture_output=True, text=True, check=True)
    for words in (line.split() for line in ldd.stdout.splitlines()):
        if "=>" in words:
            linked[words[0]] = Path(words[2])
        elif words and words[0].startswith("/"):
            linked["interpreter"] = Path(words[0])
    libdir = linked["libc.so.6"].parent
    for path in [linked["interpreter"], *(libdir / name for name in BASE_IMAGE_LIBRARIES)]:
        _install(path, root / path.relative_to("/"))
    _install(cat, root / "bin" / "cat")
    (root / "tmp").mkdir()
    (root / "proc").mkdir()
    shutil.copytree(bundle, root / "opt" / "fwatchdog", symlinks=True, copy_function=_link)


def _install(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source.resolve(), target)


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="a new root and PID namespace need unshare(1) and root",
)
def test_runs_as_pid_1_in_a_root_filesystem_without_python(
    standalone: Path, tmp_path: Path
) -> None:
    # The nearest thing to `docker run debian:bookworm-slim` with the recipe's COPY: a PID
    # namespace with /proc, a root directory holding only the bundle, glibc, zlib and cat.
    root = tmp_path / "rootfs"
    bare_root_filesystem(root, standalone.parent)
    assert not [p for p in root.rglob("*python*") if not p.is_relative_to(root / "opt")]
    port = free_port()
    env = {"PATH": "/bin", "TMPDIR": "/tmp", "fprocess": "cat", "port": str(port)}
    env |= {"metrics_port": str(free_port()), "healthcheck_interval": "0"}
    log_path = tmp_path / "watchdog.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--kill-child"]
            + [f"--root={root}", "/opt/fwatchdog/fwatchdog"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    wd = RunningWatchdog(proc, port, int(env["metrics_port"]), log_path, root / "tmp")
    try:
        wait_until_answering(wd, "/_/health")
        reply = wd.request("POST", "/", body=b"from a bare root")
        assert (reply.status, reply.body) == (200, b"from a bare root")
        assert (root / "tmp" / ".lock").exists()
        pid1 = psutil.Process(proc.pid).children()[0]  # the watchdog, PID 1 inside
        assert [c.name() for c in pid1.children()] == [FORK_SERVER_NAME]
        pid1.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not (root / "tmp" / ".lock").exists()
    finally:
        stop_process(proc)


def test_runs_a_prefork_handler_under_the_handlers_own_interpreter(run_minimal: Start) -> None:
    index = Path(__file__).parent / "fixtures" / "prefork" / "index.py"
    wd = run_minimal(fprocess=f"{sys.executable} {index}", prefork="true")
    wd.wait_for_log("prefork: zygote")
    reply = wd.request("POST", "/", body=b"from the bundle")
    assert (reply.status, reply.body) == (200, b"from the bundle\n")
    assert 'fwatchdog_prefork_events_total{event="warm"} 1.0' in wd.metrics()
    wd.proc.send_signal(signal.SIGTERM)
    assert wd.proc.wait(30) == 0
