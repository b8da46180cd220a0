"""Fixtures that run the real ``fwatchdog`` as a child process on free loopback ports."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from nats_server import NatsServer, start_nats_server
from ports import free_port

from watchdog.forkserver import NAME as FORK_SERVER_NAME
from watchdog.prefork import ZYGOTE_SCRIPT

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent
PYTHON = sys.executable


Call = tuple[str, str, "bytes | list[bytes] | None", dict[str, str]]
"""Method, target, body (a list of chunks goes chunked) and headers of one request."""


def on_one_connection(port: int, calls: list[Call]) -> list[http.client.HTTPResponse]:
    """Each call in turn on one keep-alive connection; the answers, each read whole into its
    ``body`` attribute."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    answers = []
    try:
        for method, target, body, headers in calls:
            sent = iter(body) if isinstance(body, list) else body
            connection.request(method, target, body=sent, headers=headers)
            answer = connection.getresponse()
            answer.body = answer.read()  # type: ignore[attr-defined]
            answers.append(answer)
    finally:
        connection.close()
    return answers


def recv_until(sock: socket.socket, marker: bytes, received: bytes = b"") -> bytes:
    """``received`` and what ``sock`` sends after it, until ``marker`` is among it (the peer
    closing first fails the test)."""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return received


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class RunningWatchdog:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path
    tmpdir: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30,
        port: int | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def metrics(self) -> str:
        return self.request("GET", "/metrics", port=self.metrics_port).text

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.logs()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in logs:\n{self.logs()}")

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def leftovers(watchdog_pid: int) -> list[psutil.Process]:
    """Descendants of the watchdog other than its fork server and prefork zygote: orphans,
    zombies, stray work."""
    found = []
    for proc in psutil.Process(watchdog_pid).children(recursive=True):
        try:
            if proc.name() != FORK_SERVER_NAME and not _is_zygote(proc):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def _is_zygote(proc: psutil.Process) -> bool:
    return any(arg.endswith(ZYGOTE_SCRIPT.name) for arg in proc.cmdline())


def watchdog_env(tmpdir: Path, **env: str) -> dict[str, str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TMPDIR": str(tmpdir),
        "port": str(free_port()),
        "metrics_port": str(free_port()),
        "healthcheck_interval": "0",
        # The checkout under test, whatever is installed in the environment.
        "PYTHONPATH": str(ROOT),
    }
    base.update(env)
    return base


def wait_until_serving(wd: RunningWatchdog, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wd.proc.poll() is not None:
            raise AssertionError(f"watchdog exited with {wd.proc.returncode}:\n{wd.logs()}")
        try:
            if wd.request("GET", "/_/health", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"watchdog did not become healthy:\n{wd.logs()}")


@pytest.fixture
def start_watchdog(tmp_path: Path) -> Iterator[object]:
    """``start_watchdog(fprocess=..., mode=...)`` runs a real watchdog; all are reaped after."""
    started: list[RunningWatchdog] = []

    def start(wait: bool = True, **env: str) -> RunningWatchdog:
        run_dir = tmp_path / f"wd{len(started)}"
        run_dir.mkdir()
        full_env = watchdog_env(run_dir, **env)
        log_path = run_dir / "watchdog.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [PYTHON, "-m", "watchdog"],
                env=full_env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wd = RunningWatchdog(
            proc, int(full_env["port"]), int(full_env["metrics_port"]), log_path, run_dir
        )
        started.append(wd)
        if wait:
            wait_until_serving(wd)
        return wd

    yield start
    for wd in started:
        stop_process(wd.proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (so the watchdog stops its own children), SIGKILL if that takes too long."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(10)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real ``nats-server -js`` for the session; tests keep apart by name prefix."""
    server = start_nats_server(tmp_path_factory.mktemp("nats"))
    try:
        yield server
    finally:
        server.stop()
