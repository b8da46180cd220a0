"""One forked handler process, whichever path serves its request (the express of
:mod:`.fork_express` or the ordinary path of :mod:`.fork`): its stdin's first fill, its stderr
logged, its exit counted, and nothing of it left behind."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..config import WatchdogConfig
from ..logs import FunctionLog, LineSplitter
from ..metrics import WatchdogMetrics
from ..pipes import PipeCollector, PipeDrain, write_now
from ..process import Child, ProcessTable

_STDERR_TAIL = 4096


@dataclass(frozen=True, slots=True)
class ForkPolicy:
    buffer_request: bool
    """Read the whole request body before starting the handler."""
    response_buffer: int | None
    """Bytes of stdout held before streaming begins; None holds all of it."""


@dataclass(frozen=True, slots=True)
class Forking:
    """What every handler of one watchdog shares."""

    config: WatchdogConfig
    policy: ForkPolicy
    processes: ProcessTable
    metrics: WatchdogMetrics
    function_log: FunctionLog


class StdinStart:
    """What of the body goes into the handler's stdin before it starts: as much as the pipe
    takes; stdin is closed there when that is the whole body."""

    __slots__ = ("data", "whole", "written")

    def __init__(self, data: bytes | bytearray, whole: bool) -> None:
        self.data = data
        self.whole = whole
        self.written = 0

    def fill(self, child: Child) -> None:
        fd = child.stdin
        assert fd is not None
        if self.data:
            self.written = write_now(fd, self.data)
        if self.whole and self.written == len(self.data):
            child.close_fd(fd)

    @property
    def rest(self) -> memoryview:
        """The part not written yet: a view, not a copy of a body up to max_body_size long."""
        return memoryview(self.data)[self.written :]


class ForkedHandler:
    """A running handler: its stderr goes to the function log as it comes, and whatever it
    leaves behind (processes holding its pipes after its exit) is stopped after kill_grace."""

    __slots__ = (
        "forking",
        "child",
        "stderr_tail",
        "_stderr",
        "_splitter",
        "_exit_timer",
        "_stdout_open",
    )

    def __init__(self, forking: Forking, child: Child) -> None:
        self.forking = forking
        self.child = child
        self.stderr_tail = bytearray()
        """The last of its stderr, kept with write_debug (for the 500 of a failed handler)."""
        self._stderr: PipeDrain | None = None
        self._splitter: LineSplitter | None = None
        self._exit_timer: asyncio.TimerHandle | None = None
        self._stdout_open = True
        child.exited.add_done_callback(self._on_exit)
        if child.stderr is not None:
            self._stderr = PipeDrain(child.stderr, self._on_stderr)

    def collector(self, limit: int | None) -> PipeCollector:
        """A reader of its stdout, up to ``limit`` bytes or to its end (and its exit)."""
        stdout = self.child.stdout
        assert stdout is not None
        return PipeCollector(stdout, limit, self.close_stdout, after=self.child.exited)

    def close_stdout(self) -> None:
        self._stdout_open = False
        self.child.close_fd(self.child.stdout)

    def count_exit(self, returncode: int) -> None:
        outcome = "success" if returncode == 0 else ("signal" if returncode < 0 else "error")
        self.forking.metrics.exits.labels(outcome=outcome).inc()

    # -- stderr ---------------------------------------------------------------------------

    def _on_stderr(self, data: bytes) -> None:
        function_log = self.forking.function_log
        if self._splitter is None:  # most handlers write nothing there
            self._splitter = function_log.splitter()
        function_log.write("stderr", self._splitter.feed(data))
        if self.forking.config.write_debug:
            self.stderr_tail += data
            del self.stderr_tail[:-_STDERR_TAIL]

    def _flush_stderr(self) -> None:
        if self._splitter is not None:
            self.forking.function_log.write("stderr", self._splitter.flush())
            self._splitter = None

    def stderr_closed_now(self) -> bool:
        """Its stderr has ended (its last lines logged), as it usually has once its stdout
        ended and it exited; False if something still holds it open."""
        if self._stderr is not None:
            self._stderr.read_now()  # its end of file is usually there, its event not yet seen
            if not self._stderr.done.done():
                return False
        self._flush_stderr()
        return True

    async def stderr_closed(self) -> None:
        """Wait for its last stderr lines (bounded: an orphan may hold the pipe)."""
        if self.stderr_closed_now():
            return
        assert self._stderr is not None
        grace = self.forking.config.kill_grace
        try:
            await asyncio.wait_for(asyncio.shield(self._stderr.done), grace)
        except TimeoutError:
            pass
        self._flush_stderr()

    # -- the end --------------------------------------------------------------------------

    async def kill(self) -> None:
        await self.forking.processes.kill_tree(self.child, self.forking.config.kill_grace)

    def end(self) -> None:
        """It has exited: let go of its pipes and of the timer for its leftovers."""
        if self._exit_timer is not None:
            self._exit_timer.cancel()
        if self._stderr is not None:
            self._stderr.stop()
            self._flush_stderr()
        self.child.close_pipes()

    async def finish(self) -> None:
        """Whatever happened: no process of the tree and no pipe survives the request."""
        if not self.child.exited.done():
            # Cancelled (client gone, shutdown) or a failure path that did not kill yet.
            self.forking.metrics.killed.labels(reason="request_ended").inc()
            await self.kill()
        self.end()

    def _on_exit(self, exited: asyncio.Future[int]) -> None:
        # Processes the handler left behind may still hold its stdout or stderr open; give them
        # kill_grace to let go, then stop them, so the response never waits on an orphan.
        if not exited.cancelled() and exited.exception() is not None:
            return  # never started: nothing left behind
        if self._stdout_open or (self._stderr is not None and not self._stderr.done.done()):
            loop = self.forking.processes.loop
            self._exit_timer = loop.call_later(self.forking.config.kill_grace, self._leftovers)

    def _leftovers(self) -> None:
        self.forking.processes.kill_leftovers(self.child)
