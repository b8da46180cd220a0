"""Liveness and readiness, kept in memory; the lock file is only a signal for Docker HEALTHCHECK."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("watchdog.health")


class LockFileError(Exception):
    """The lock file could not be written."""


class Health:
    """Serving state of the watchdog. ``suppress_lock`` only skips the file, never the state."""

    def __init__(self, lock_path: Path | None) -> None:
        self._lock_path = lock_path
        self.serving = False
        self.draining = False

    @property
    def live(self) -> bool:
        return self.serving and not self.draining

    def mark_serving(self) -> None:
        """Called once the listener is up and the run mode is ready.

        Raises:
            LockFileError: the lock file could not be written (the anchors fail silently here).
        """
        if self._lock_path is not None:
            try:
                self._lock_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
                os.close(fd)
            except OSError as exc:
                raise LockFileError(
                    f"cannot write the lock file {self._lock_path}: {exc.strerror} "
                    "(set TMPDIR to a writable directory or suppress_lock=true)"
                ) from exc
            log.info("Writing lock-file to: %s", self._lock_path)
        self.serving = True

    def start_draining(self) -> None:
        self.draining = True
        self.remove_lock()

    def remove_lock(self) -> None:
        if self._lock_path is None:
            return
        try:
            self._lock_path.unlink()
            log.info("Removed lock-file: %s", self._lock_path)
        except FileNotFoundError:
            pass
