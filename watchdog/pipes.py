"""Non-blocking pipe I/O on the event loop, without a transport per pipe.

A handler's pipes live for one request; creating asyncio transports for each costs more than the
few system calls these helpers make, and they keep back-pressure explicit: a pipe is only watched
while somebody waits on it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

CHUNK = 65536


async def _until(loop: asyncio.AbstractEventLoop, fd: int, *, writable: bool) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    add, remove = (
        (loop.add_writer, loop.remove_writer)
        if writable
        else (
            loop.add_reader,
            loop.remove_reader,
        )
    )
    add(fd, _resolve, ready)
    try:
        await ready
    finally:
        remove(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def read_chunk(fd: int, size: int = CHUNK) -> bytes:
    """Read up to ``size`` bytes, waiting until some arrive; ``b""`` means end of file."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            await _until(loop, fd, writable=False)


async def write_all(fd: int, data: bytes | bytearray | memoryview) -> bool:
    """Write everything, waiting while the pipe is full. False if the reader has gone away."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _until(loop, fd, writable=True)
        except BrokenPipeError:
            return False
    return True


def write_now(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Write what fits without waiting; return the count (all of it when the reader is gone)."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except BrokenPipeError:
        return len(data)


class PipeDrain:
    """Reads a pipe to its end from loop callbacks, handing each chunk to ``sink``.

    Used for streams nobody awaits chunk by chunk (a handler's stderr, a buffered stdout): no
    task is created, and ``done`` resolves at end of file. ``pause()`` stops reading so the
    writer blocks (back-pressure); ``resume()`` starts again.
    """

    __slots__ = ("_fd", "_sink", "_loop", "done", "_watching")

    def __init__(self, fd: int, sink: Callable[[bytes], None]) -> None:
        self._fd = fd
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._watching = False
        self.resume()

    def resume(self) -> None:
        if not self._watching and not self.done.done():
            self._loop.add_reader(self._fd, self._on_readable)
            self._watching = True

    def pause(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._sink(data)
            return
        self.pause()
        if not self.done.done():
            self.done.set_result(None)

    def stop(self) -> None:
        """Stop watching for good (the fd is closed by its owner)."""
        self.pause()
        if not self.done.done():
            self.done.set_result(None)
