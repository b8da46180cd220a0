"""The Go OpenFaaS watchdogs (``of-watchdog``, ``classic-watchdog``) run beside fwatchdog.

They are found in ``--anchors DIR`` (default: ``shared/anchors/bin`` beside this repository,
i.e. the repository's parent's, so every worktree finds the same ones). A missing binary is
not an error: its rows are skipped, with one line saying so per binary and run.

Both Go watchdogs configure themselves from the same environment variables as fwatchdog and
bind their metrics server to the fixed port 8081: start one at a time (:func:`start` waits
until the port is free before starting the next).
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from .procs import Children, Service, base_env, free_port, wait_http

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO.parent / "shared" / "anchors" / "bin"
OF_WATCHDOG = "of-watchdog"
CLASSIC = "classic-watchdog"
METRICS_PORT = 8081  # fixed in both Go watchdogs
# Without a health check interval the classic watchdog never drains on SIGTERM (see
# shared/reference/watchdog.md); 30 s timeouts, so that no load hits theirs.
ENV = {"healthcheck_interval": "1", "read_timeout": "30s", "write_timeout": "30s"}
LABELS = {OF_WATCHDOG: "of-watchdog (Go)", CLASSIC: "classic watchdog (Go)"}

_skipped: set[Path] = set()


def find(directory: Path, name: str) -> Path | None:
    """The anchor's binary, or None after printing (once per binary) that its rows are skipped."""
    path = directory / name
    if path.is_file():
        return path
    if path not in _skipped:
        _skipped.add(path)
        print(f"   {path} not found: {name} rows skipped", file=sys.stderr, flush=True)
    return None


def start(
    children: Children,
    run_dir: Path,
    binary: Path,
    env: Mapping[str, str],
    name: str | None = None,
) -> Service:
    """A Go watchdog serving ``/_/health`` when returned, configured like fwatchdog by ``env``
    (``fprocess``, ``mode``, ``upstream_url``...) on a free port of its own."""
    wait_metrics_port_free()
    port = free_port()
    settings = {**ENV, **env}
    service = children.start(
        name or binary.name, [str(binary)], base_env(run_dir, port=str(port), **settings), port
    )
    wait_http(service, "/_/health")
    return service


def wait_metrics_port_free(timeout: float = 15) -> None:
    """Until nothing listens on 8081: the previous Go watchdog may still be exiting."""
    deadline = time.monotonic() + timeout
    while _listening(METRICS_PORT):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"port {METRICS_PORT} is taken (a Go watchdog's metrics): one at a time only"
            )
        time.sleep(0.05)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False
