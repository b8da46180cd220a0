"""Where the queue reads the time: a :class:`Clock` the backends take, so tests can move it.

Times are wall-clock seconds since the epoch, because they are stored and outlive the process
(a lease's expiry, a retry's due time). Only deciding *what* is due reads the clock; the
timers that decide *when* to look again (a NATS job's redelivery, a worker's sleep) run in
real time and simply look again if the clock says it is not time yet.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    """The clock of production: ``time.time()``."""

    def now(self) -> float:
        return time.time()


SYSTEM_CLOCK: Clock = SystemClock()
