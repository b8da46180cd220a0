"""Child processes of a benchmark (watchdogs, upstreams, gateways) and what they cost.

Every child is started in its own session through :class:`Children`, which reaps them all on
exit, errors and Ctrl-C included: SIGTERM to the child, SIGKILL to its process group after a
grace period. :class:`Meter` reads a process's CPU seconds (its own plus its fork server's,
not the handlers'; and its prefork zygote's) and samples its peak RSS while a load runs.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from watchdog.forkserver import NAME as FORK_SERVER_NAME
from watchdog.prefork import ZYGOTE_SCRIPT

MB = 1024 * 1024
CHECKOUT = Path(__file__).resolve().parent.parent


def tests_on_path() -> None:
    """Put ``tests/`` on ``sys.path``: the nats-server launchers live with the tests, which
    import each other by name (``from nats_server import start_nats_server``)."""
    tests = str(CHECKOUT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


def free_port() -> int:
    """The tests' own (``tests/ports.py``): a free loopback port never handed out before in
    this run, as two picks in a row (a port and its metrics port) may get the same one."""
    tests_on_path()
    from ports import free_port as pick

    return pick()


def fwatchdog_command() -> list[str]:
    """``python -m watchdog`` of this checkout (``base_env`` puts it on PYTHONPATH): what
    ``fwatchdog`` runs. Not the installed script: an editable install maps the package to
    whichever worktree installed it, and another worktree's code would be measured."""
    return [sys.executable, "-m", "watchdog"]


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra_ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


class Children:
    """Starts services and guarantees they are all gone when the ``with`` block ends."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.started: list[Service] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        for service in reversed(self.started):
            stop(service.proc)
        self.started.clear()

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str], port: int, cwd: Path | None = None
    ) -> Service:
        log_path = self.run_dir / f"{name}-{len(self.started)}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                argv,
                env=dict(env),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=cwd,
            )
        service = Service(name, proc, port, log_path)
        self.started.append(service)
        return service

    def stop(self, service: Service) -> None:
        stop(service.proc)
        if service in self.started:
            self.started.remove(service)

    def watchdog(self, name: str = "watchdog", **settings: str) -> Service:
        """A real ``fwatchdog`` configured by environment variables, serving when returned."""
        port, metrics_port = free_port(), free_port()
        env = base_env(self.run_dir, port=str(port), metrics_port=str(metrics_port), **settings)
        service = self.start(name, fwatchdog_command(), env, port)
        service.extra_ports["metrics"] = metrics_port
        wait_http(service, "/_/ready")
        return service


def base_env(run_dir: Path, **settings: str) -> dict[str, str]:
    tmp = run_dir / f"tmp-{settings.get('port', 'x')}"
    tmp.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        # The checkout this bench belongs to, whatever is installed (an editable install of
        # another worktree would otherwise be what is measured), as the tests do.
        "PYTHONPATH": str(CHECKOUT),
        "TMPDIR": str(tmp),
        "healthcheck_interval": "0",
        **settings,
    }


def stop(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM (a watchdog then stops its own children); SIGKILL the whole group if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(10)


def get_text(port: int, path: str, timeout: float = 5) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def get_status(port: int, path: str, timeout: float = 1) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_http(service: Service, path: str, timeout: float = 20, poll: float = 0.002) -> float:
    """Wait until ``path`` answers 200; returns when it did (monotonic). Fails on early exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(
                f"{service.name} exited {service.proc.returncode}:\n{service.logs()}"
            )
        try:
            if get_status(service.port, path) == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(poll)
    raise RuntimeError(f"{service.name} did not answer 200 on {path} in {timeout}s")


def wait_port(service: Service, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited early:\n{service.logs()}")
        try:
            socket.create_connection(("127.0.0.1", service.port), 0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"{service.name} did not listen on {service.port} in {timeout}s")


def _helpers(proc: psutil.Process) -> list[psutil.Process]:
    """The watchdog's fork server and prefork zygote: they do its forking, so their CPU is its
    cost per request as the Go watchdogs' forks are theirs."""
    found = []
    for child in proc.children():
        try:
            if child.name() == FORK_SERVER_NAME or is_zygote(child):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def tree_rss_mb(pid: int) -> float:
    """The resident memory of a watchdog with its fork server and zygote (not its handlers):
    the watchdog's RSS plus the helpers' USS. They are forked from it and share most of their
    pages with it: a sum of RSS would count those twice (72 MB for a 42 MB watchdog and its
    31 MB fork server, of which 5 MB its own)."""
    proc = psutil.Process(pid)
    helpers = sum(helper.memory_full_info().uss for helper in _helpers(proc))
    return float(proc.memory_info().rss + helpers) / MB


def is_zygote(proc: psutil.Process) -> bool:
    return any(arg.endswith(ZYGOTE_SCRIPT.name) for arg in proc.cmdline())


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float  # the process and its fork server, own time only
    system_cpu_seconds: float  # the part of cpu_seconds spent in the kernel
    handler_cpu_seconds: float  # reaped children (the handlers), for reference
    rss_mb: float
    peak_rss_mb: float
    open_fds: int


class Meter:
    """CPU seconds and peak RSS of one server process (plus its fork server) during a load.

    ``with Meter(pid) as meter: ...`` then ``meter.usage``.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self._stop = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None
        self._start: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.usage: Usage | None = None

    def _cpu(self) -> tuple[float, float, float]:
        """Own CPU seconds, the kernel's part of them, and the reaped children's."""
        own = system = children = 0.0
        for proc in [self.proc, *_helpers(self.proc)]:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            own += times.user + times.system
            system += times.system
            children += times.children_user + times.children_system
        return own, system, children

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._peak = max(self._peak, self.rss())
            except psutil.NoSuchProcess:
                return

    def __enter__(self) -> Meter:
        self._start = self._cpu()
        self._peak = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        own, system, children = self._cpu()
        rss = self.rss()
        self.usage = Usage(
            cpu_seconds=own - self._start[0],
            system_cpu_seconds=system - self._start[1],
            handler_cpu_seconds=children - self._start[2],
            rss_mb=round(rss / MB, 1),
            peak_rss_mb=round(max(self._peak, rss) / MB, 1),
            open_fds=self.proc.num_fds(),
        )


def wait_idle(pid: int, timeout: float = 10, window: float = 0.1, busy: float = 0.05) -> None:
    """Wait until a server and its descendants use less than ``busy`` of a core and no
    handler is left (no grandchild: handlers are children of the fork server), so the tail of
    one load (handlers of requests the client gave up, being killed) does not run into the
    next measurement or a leak check."""
    root = psutil.Process(pid)
    deadline = time.monotonic() + timeout

    def handlers_left() -> bool:
        children = root.children()
        return len(root.children(recursive=True)) > len(children)

    def tree_cpu() -> float:
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total

    while time.monotonic() < deadline:
        before = tree_cpu()
        time.sleep(window)
        if tree_cpu() - before < busy * window and not handlers_left():
            return


@contextmanager
def terminated_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so ``with Children`` blocks still reap."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
