"""Keeping one long-lived child running: start, relay its output, restart it with backoff.

Knows nothing about HTTP: the http mode decides when the upstream is usable and asks for a
restart when it is hung. Unlike the of-watchdog, which dies with its upstream (or ignores an
exit 0 and serves errors), a supervised upstream is restarted: 0.5 s after a crash, doubling
up to 30 s while it keeps crashing, back to 0.5 s once it has stayed up for a while.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .logs import FunctionLog
from .pipes import PipeDrain
from .process import Child, ProcessTable, describe_exit

log = logging.getLogger("watchdog.supervisor")


@dataclass(frozen=True, slots=True)
class Backoff:
    first: float = 0.5
    limit: float = 30.0
    stable_after: float = 10.0
    """An upstream that stayed up this long starts again from ``first`` after its next exit."""


class Supervisor:
    """Runs ``argv`` until stopped, restarting it when it exits (unless ``restart`` is off)."""

    def __init__(
        self,
        processes: ProcessTable,
        program: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        function_log: FunctionLog,
        *,
        restart: bool,
        grace: float,
        backoff: Backoff = Backoff(),
    ) -> None:
        self._processes = processes
        self._program = program
        self._argv = argv
        self._env = env
        self._log = function_log
        self._restart = restart
        self._grace = grace
        self._backoff = backoff
        self.child: Child | None = None
        self.started = asyncio.Event()
        """Set while a child is running; cleared when it exits."""
        self.final_status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        """Resolved with the exit status when the child exits for good (``restart`` off)."""
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """SIGTERM the child's process group, SIGKILL after the grace period; no restart."""
        self._stopping = True
        if self.child is not None:
            await self._processes.kill_tree(self.child, self._grace)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def restart(self, reason: str) -> None:
        """Kill the running child (e.g. hung); the supervision loop starts a new one."""
        if self.child is not None and not self.child.exited.done():
            log.warning("Restarting the upstream: %s", reason)
            await self._processes.kill_tree(self.child, self._grace)

    async def _run(self) -> None:
        delay = self._backoff.first
        loop = asyncio.get_running_loop()
        while not self._stopping:
            began = loop.time()
            status = await self._run_once()
            if self._stopping:
                return
            if not self._restart:
                self.final_status.set_result(status)
                return
            if loop.time() - began >= self._backoff.stable_after:
                delay = self._backoff.first
            log.error("Upstream %s; restarting in %gs", describe_exit(status), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff.limit)

    async def _run_once(self) -> int:
        child = self._processes.spawn(self._program, self._argv, self._env)
        child.close_fd(child.stdin)  # an upstream reads requests from its socket, not stdin
        drains = [self._relay(child.stdout, "stdout"), self._relay(child.stderr, "stderr")]
        self.child = child
        self.started.set()
        log.info("Started upstream %s (pid %d)", " ".join(self._argv), child.pid)
        try:
            status = await asyncio.shield(child.exited)
        finally:
            self.started.clear()
        # Its last lines come before the news of its exit (bounded: orphans may hold the pipes).
        await asyncio.wait([asyncio.ensure_future(d.done) for d in drains], timeout=self._grace)
        for drain in drains:
            drain.stop()
        child.close_pipes()
        return status

    def _relay(self, fd: int | None, stream: str) -> PipeDrain:
        assert fd is not None
        splitter = self._log.splitter()

        def sink(data: bytes) -> None:
            self._log.write(stream, splitter.feed(data))

        drain = PipeDrain(fd, sink)
        drain.done.add_done_callback(lambda _: self._log.write(stream, splitter.flush()))
        return drain
