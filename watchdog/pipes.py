"""Non-blocking pipe I/O on the event loop, without a transport or a loop reader per pipe.

A handler's pipes live for one request. Watching one with the loop's ``add_reader`` cost uvloop
about six system calls (a poll handle created, checked, registered and torn down) and its
objects, each time. Here every pipe shares one epoll set of our own, which the loop watches as a
single reader: a pipe is registered once, edge-triggered, with one ``epoll_ctl``, and closing it
removes it. Back-pressure stays explicit: nothing is read unless somebody asked for it.

Edge-triggered means an event is only a hint that something changed: whoever waits must have
found the pipe empty (or full) first, and tries again after the wake-up. Every helper here does.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable

CHUNK = 65536
_EVENTS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET  # ERR and HUP are always reported
_BATCH = 64


class _Readiness:
    """One epoll set for the pipes of one loop, and who waits on which pipe."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        self._registered: set[int] = set()
        self._waiters: dict[int, Callable[[], None]] = {}
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def wait(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, at the pipe's next event (at once if it is ready when first
        registered)."""
        if fd not in self._registered:
            try:
                self._epoll.register(fd, _EVENTS)
            except FileExistsError:  # pragma: no cover - only if a close went untold
                self._epoll.modify(fd, _EVENTS)
            self._registered.add(fd)
        self._waiters[fd] = callback

    def watched(self, fd: int) -> bool:
        return fd in self._registered

    def cancel(self, fd: int) -> None:
        self._waiters.pop(fd, None)

    def forget(self, fd: int) -> None:
        """``fd`` is being closed (which takes it out of the epoll set)."""
        self._waiters.pop(fd, None)
        self._registered.discard(fd)

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()

    def _dispatch(self) -> None:
        for fd, _ in self._epoll.poll(0, _BATCH):
            callback = self._waiters.pop(fd, None)
            if callback is None:
                continue  # nobody waits: whoever reads next tries first anyway
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - the other events must still be told
                self.loop.call_exception_handler({"message": "pipe callback", "exception": exc})


_readiness: _Readiness | None = None


def _current() -> _Readiness:
    """The running loop's (get_running_loop() costs a getpid system call: asked only when
    the loop seen last is not running, as in a process that runs one loop after another)."""
    global _readiness
    if _readiness is not None and _readiness.loop.is_running():
        return _readiness
    if _readiness is not None:
        _readiness.close()
    _readiness = _Readiness(asyncio.get_running_loop())
    return _readiness


def close(fd: int) -> None:
    """Close a pipe end that these helpers may have watched."""
    if _readiness is not None:
        _readiness.forget(fd)
    os.close(fd)


async def _until_ready(fd: int) -> None:
    readiness = _current()
    loop = readiness.loop
    ready: asyncio.Future[None] = loop.create_future()
    readiness.wait(fd, lambda: _resolve(ready))
    try:
        await ready
    finally:
        if not ready.done():
            readiness.cancel(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def read_chunk(fd: int, size: int = CHUNK) -> bytes:
    """Read up to ``size`` bytes, waiting until some arrive; ``b""`` means end of file."""
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            await _until_ready(fd)


async def write_all(fd: int, data: bytes | bytearray | memoryview) -> bool:
    """Write everything, waiting while the pipe is full. False if the reader has gone away."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _until_ready(fd)
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


class PipeCollector:
    """Reads a pipe from loop callbacks into one buffer until its end or past ``limit`` bytes
    (None: no limit), telling whoever waits once rather than once per chunk.

    At the end of file ``on_eof()`` is called, and the news waits for ``after`` too (a
    handler's exit, reported just after its stdout's end).
    """

    __slots__ = ("_fd", "_readiness", "output", "limit", "_on_eof", "_after", "_done")

    def __init__(
        self,
        fd: int,
        limit: int | None,
        on_eof: Callable[[], None],
        after: asyncio.Future[int] | None = None,
    ) -> None:
        self._fd = fd
        self._readiness = _current()
        self.output = bytearray()
        self.limit = limit
        self._on_eof: Callable[[], None] | None = on_eof
        self._after = after
        self._done: Callable[[bool | OSError], None] | None = None

    async def fill(self) -> bool:
        """Read until the end of file (True) or past the limit (False: the rest is left in
        the pipe, for :func:`read_chunk` or another ``fill`` with a higher limit)."""
        ready: asyncio.Future[bool] = self._readiness.loop.create_future()
        self.collect(lambda outcome: _settle(ready, outcome))
        try:
            return await ready
        finally:
            if not ready.done():
                self.stop()

    def collect(self, done: Callable[[bool | OSError], None]) -> None:
        """:meth:`fill` from callbacks: ``done`` is called once, with what ``fill`` returns
        or the error it raises."""
        self._done = done
        if self._readiness.watched(self._fd):
            self._on_ready()  # an edge may have passed unwatched: look first
        else:
            self._readiness.wait(self._fd, self._on_ready)  # registering reports what is there

    def stop(self) -> None:
        """Nobody waits any more."""
        self._done = None
        if self._on_eof is not None:
            self._readiness.cancel(self._fd)  # (after its end, the number may be reused)

    def _on_ready(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, CHUNK)
            except BlockingIOError:
                self._readiness.wait(self._fd, self._on_ready)
                return
            except OSError as exc:
                self._tell(exc)
                return
            if not chunk:
                on_eof, self._on_eof = self._on_eof, None
                if on_eof is not None:
                    on_eof()
                after = self._after
                if after is None or after.done():
                    self._tell(True)
                else:
                    after.add_done_callback(lambda _: self._tell(True))
                return
            self.output += chunk
            if self.limit is not None and len(self.output) > self.limit:
                self._tell(False)
                return

    def _tell(self, outcome: bool | OSError) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(outcome)


def _settle(future: asyncio.Future[bool], outcome: bool | OSError) -> None:
    if future.done():
        return
    if isinstance(outcome, OSError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class PipeDrain:
    """Reads a pipe to its end from loop callbacks, handing each chunk to ``sink``.

    Used for streams nobody awaits chunk by chunk (a handler's stderr): no task is created,
    and ``done`` resolves at end of file. ``pause()`` stops reading so the writer blocks
    (back-pressure); ``resume()`` starts again.
    """

    __slots__ = ("_fd", "_sink", "_readiness", "done", "_watching")

    def __init__(self, fd: int, sink: Callable[[bytes], None]) -> None:
        self._fd = fd
        self._sink = sink
        self._readiness = _current()
        self.done: asyncio.Future[None] = self._readiness.loop.create_future()
        self._watching = False
        self._readiness.wait(fd, self._on_ready)  # an empty pipe: no read tried before
        self._watching = True

    def resume(self) -> None:
        if not self._watching and not self.done.done():
            self._watching = True
            self._on_ready()  # events while paused were dropped: look first

    def read_now(self) -> None:
        """Read what is there without waiting for its event (which may be pending)."""
        if self._watching:
            self._on_ready()

    def pause(self) -> None:
        if self._watching:
            self._readiness.cancel(self._fd)
            self._watching = False

    def _on_ready(self) -> None:
        while self._watching:
            try:
                data = os.read(self._fd, CHUNK)
            except BlockingIOError:
                self._readiness.wait(self._fd, self._on_ready)
                return
            except OSError:
                data = b""
            if not data:
                self._finish()
                return
            self._sink(data)

    def _finish(self) -> None:
        self.pause()
        if not self.done.done():
            self.done.set_result(None)

    def stop(self) -> None:
        """Stop watching for good (the fd is closed by its owner, with :func:`close`)."""
        self._finish()
