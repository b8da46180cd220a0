"""Small asyncio helpers shared by the queue worker and the callback dispatcher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .queue.base import QueueUnavailable

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
