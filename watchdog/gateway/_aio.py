"""Small asyncio helpers shared by the queue worker and the callback dispatcher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .queue.base import QueueUnavailable

_RENEW_AGAIN = 1.0
"""Seconds before trying again to renew a lease after a failure (a NATS outage)."""
_PAUSES = (0.25, 0.5, 1.0)
"""Pauses between tries to record an outcome while the store is unavailable (the last one
repeats)."""


async def first_of(*aws: Awaitable[Any]) -> None:
    """Wait until the first of ``aws`` finishes, then cancel the others."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def record_outcome(
    report: Callable[[], Awaitable[bool]], log: logging.Logger, what: str
) -> bool:
    """Record the outcome of an attempt or a delivery (``report`` returns the store's
    answer), trying again while the store is unavailable (a NATS outage): the work was done,
    and dropping its outcome would do it again once the lease ran out. The lease's fence
    still decides whether the outcome counts."""
    tries = 0
    while True:
        try:
            return await report()
        except QueueUnavailable as exc:
            if tries == 0:
                log.warning("%s: cannot record the outcome yet, trying again: %s", what, exc)
            await asyncio.sleep(_PAUSES[min(tries, len(_PAUSES) - 1)])
            tries += 1


async def keep_renewing(
    renew: Callable[[], Awaitable[bool]], period: float, log: logging.Logger, what: str
) -> None:
    """Renew a lease every ``period`` seconds until cancelled, or until ``renew`` says it
    was lost; after a failure, again within _RENEW_AGAIN (the lease is running out).
    Started before the work and cancelled once its outcome is recorded, not when the work
    ends: saving it may wait out a NATS outage, and a lease that ran out meanwhile would
    have the work done again."""
    wait = period
    while True:
        await asyncio.sleep(wait)
        failing = wait < period
        wait = min(period, _RENEW_AGAIN)
        try:
            if not await renew():
                log.warning("%s: lease lost while running", what)
                return
            wait = period
        except QueueUnavailable as exc:  # keep trying; the lease has slack
            if not failing:  # once per outage, not once a second
                log.warning("extending the lease of %s failed: %s", what, exc)
        except Exception:  # noqa: BLE001 - keep trying; the lease has slack
            log.exception("extending the lease of %s failed", what)
