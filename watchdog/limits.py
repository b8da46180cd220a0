"""Request limits: the in-flight cap (429) and the deadlines of read_timeout and write_timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

T = TypeVar("T")


class BodyTimeout(Exception):
    """The client did not deliver the request body within read_timeout."""


class ClientStalled(Exception):
    """The client did not accept response bytes within write_timeout."""


class InflightLimiter:
    """Counts requests being handled; refuses one beyond ``limit`` (0 means no limit)."""

    __slots__ = ("limit", "inflight", "idle")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def try_acquire(self) -> bool:
        if self.limit and self.inflight >= self.limit:
            return False
        self.inflight += 1
        self.idle.clear()
        return True

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()

    @property
    def saturated(self) -> bool:
        return bool(self.limit) and self.inflight >= self.limit

    def refusal_text(self) -> str:
        return f"Concurrent request limit exceeded. Max concurrent requests: {self.limit}\n"


async def read_body(request: web.BaseRequest, deadline: float | None) -> bytes:
    """Read the whole body before the loop-time ``deadline``.

    Raises:
        BodyTimeout: the deadline passed first.
    """
    try:
        async with asyncio.timeout_at(deadline):
            return await request.read()
    except TimeoutError:
        raise BodyTimeout from None


async def within_write_timeout(write: Awaitable[T], timeout: float | None) -> T:
    """Await one write to the client, raising :class:`ClientStalled` if it takes too long."""
    try:
        async with asyncio.timeout(timeout):
            return await write
    except TimeoutError:
        raise ClientStalled from None


async def send_whole(
    request: web.BaseRequest, response: web.StreamResponse, timeout: float | None
) -> None:
    """Write a response that is complete in memory (status, headers, body and end) within
    ``timeout`` in all: aiohttp would otherwise write it after the handler returned, with no
    deadline, while a client that never reads keeps the connection and the body alive.

    Raises:
        ClientStalled: the client did not take it all in time.
    """

    async def prepare_and_finish() -> None:
        await response.prepare(request)
        await response.write_eof()

    await within_write_timeout(prepare_and_finish(), timeout)


def seconds_or_none(value: float) -> float | None:
    """Configuration says 0 for "no limit"; asyncio says None."""
    return value if value > 0 else None
