"""SIGTERM and SIGINT as a stop event, shared by the watchdog and the gateway."""

from __future__ import annotations

import asyncio
import logging
import signal

log = logging.getLogger("watchdog.signals")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class stop_on_signals:
    """Map SIGTERM and SIGINT to ``stop.set()`` while serving; restore the defaults after."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._loop = asyncio.get_running_loop()

    def __enter__(self) -> None:
        for sig in HANDLED_SIGNALS:
            self._loop.add_signal_handler(sig, self._handle, sig)

    def __exit__(self, *_: object) -> None:
        for sig in HANDLED_SIGNALS:
            self._loop.remove_signal_handler(sig)

    def _handle(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            log.info("%s: already shutting down", sig.name)
            return
        log.info("%s received: shutting down", sig.name)
        self._stop.set()
