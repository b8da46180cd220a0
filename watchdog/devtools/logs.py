"""``fwatchdog logs NAME``: print a function's log file written by ``up``, then follow it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import IO

POLL_SECONDS = 0.2


def follow(path: Path, out: IO[bytes], stop: threading.Event, keep_following: bool = True) -> None:
    """Copy ``path`` to ``out``; with ``keep_following``, keep copying what is appended (and
    start over when ``up`` recreates the file) until ``stop`` is set."""
    position = 0
    while True:
        try:
            size = path.stat().st_size
            if size < position:
                position = 0
            with path.open("rb") as source:
                source.seek(position)
                chunk = source.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            out.write(chunk)
            out.flush()
            position += len(chunk)
        if not keep_following or stop.wait(POLL_SECONDS):
            return
