"""``prefork``: Python handlers forked from a warm zygote instead of spawned per request.

The zygote (watchdog/zygote_main.py) runs under the handler's own interpreter and speaks the
fork server's protocol, so the watchdog talks to it through a :class:`ForkServer`. Until it is
warm, after a failed warm-up and while it is being restarted, requests go to the ordinary fork
server: a request is never refused or held because of the zygote.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .forkserver import RESET_SIGNALS, ExitCallback, ForkServer, ForkServerError
from .pycommand import parse_python_command

log = logging.getLogger("watchdog.prefork")

ZYGOTE_SCRIPT = Path(__file__).with_name("zygote_main.py")
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 30.0
_WARM_FOR = 10.0
"""A zygote that served this long before dying restarts without backoff."""
_REAP_RETRY = 0.01
_REAP_TRIES = 500
_KILLED_STATUS = 9  # a wait status: killed by SIGKILL

EventCounter = Callable[[str], None]


class PreforkSpawner:
    """A spawner (see watchdog/process.py): the zygote when warm, else the fork server."""

    def __init__(
        self,
        fallback: ForkServer,
        program: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        preload: Sequence[str],
        count: EventCounter,
    ) -> None:
        self._fallback = fallback
        self._program = program
        self._env = dict(env)
        self._zygote_argv = _zygote_argv(argv, preload)
        self._count = count
        self._loop = asyncio.get_running_loop()
        self._zygote: ForkServer | None = None
        self._zygote_pid = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._backoff = _BACKOFF_FIRST

    def start(self) -> None:
        self._task = self._loop.create_task(self._run_zygote())

    @property
    def alive(self) -> bool:
        return self._fallback.alive

    @property
    def helper_pids(self) -> tuple[int, ...]:
        return (self._fallback.pid, self._zygote_pid)

    async def _spawn(
        self, extra_env: Mapping[str, str], fds: tuple[int, int, int], on_exit: ExitCallback
    ) -> int:
        zygote = self._zygote
        if zygote is not None and zygote.alive:
            try:
                return await zygote.spawn(extra_env, fds, on_exit)
            except ForkServerError as exc:
                # Dying, or unable to fork: this request is spawned instead.
                log.warning("prefork: %s; spawning this request", exc)
        return await self._fallback.spawn(extra_env, fds, on_exit)

    def spawn_nowait(
        self, extra_env: Mapping[str, str], fds: tuple[int, int, int], on_exit: ExitCallback
    ) -> asyncio.Future[int]:
        """A task, since the zygote's refusal falls back to the fork server."""
        return self._loop.create_task(self._spawn(extra_env, fds, on_exit))

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        if self._zygote is not None:
            self._zygote.close()
        self._fallback.close()

    # -- the zygote's life --------------------------------------------------------------------

    async def _run_zygote(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        theirs.set_inheritable(True)  # the zygote's only descriptor beyond 0, 1 and 2
        try:
            pid = os.posix_spawn(
                self._program,
                self._with_fd(theirs),
                self._env,
                setpgroup=0,
                setsigdef=RESET_SIGNALS,
                setsigmask=(),
            )
        except OSError as exc:
            ours.close()
            log.error("prefork: cannot start the zygote: %s; spawning per request", exc.strerror)
            self._count("start_failed")
            return
        finally:
            theirs.close()
        self._zygote_pid = pid
        started = self._loop.time()
        ready = await self._loop.sock_recv(ours, 16)
        if ready != b"R":
            ours.close()
            self._reap_later(pid)
            log.error(
                "prefork: the handler failed to warm up (traceback above); "
                "spawning fprocess per request"
            )
            self._count("warmup_failed")
            return
        log.info("prefork: zygote %d warm in %.3f s", pid, self._loop.time() - started)
        self._count("warm")
        self._backoff = _BACKOFF_FIRST
        self._zygote = ForkServer(ours, pid, on_gone=self._on_zygote_gone)

    def _with_fd(self, sock: socket.socket) -> list[str]:
        return [str(sock.fileno()) if a == "{fd}" else a for a in self._zygote_argv]

    def _on_zygote_gone(self, orphans: dict[int, ExitCallback]) -> None:
        zygote = self._zygote
        self._zygote = None
        if self._closed or zygote is None:
            return
        self._count("died")
        for pid, on_exit in orphans.items():
            _watch_orphan(self._loop, pid, on_exit)
        delay = self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
        log.error(
            "prefork: zygote %d died; restarting in %.1f s, spawning meanwhile", zygote.pid, delay
        )
        self._loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        if not self._closed:
            self._count("restarted")
            self._task = self._loop.create_task(self._run_zygote())

    def _reap_later(self, pid: int) -> None:
        _watch_orphan(self._loop, pid, lambda status, cpu: None)


def _zygote_argv(argv: Sequence[str], preload: Sequence[str]) -> list[str]:
    command = parse_python_command(argv)
    target = ["-m", command.target] if command.module else [command.target]
    return [
        command.interpreter,
        *command.options,
        str(ZYGOTE_SCRIPT),
        "{fd}",
        ",".join(preload),
        *target,
        *command.args,
    ]


def _watch_orphan(loop: asyncio.AbstractEventLoop, pid: int, on_exit: ExitCallback) -> None:
    """Report the exit of a child whose zygote died: it is re-parented to the watchdog (a
    subreaper), which then reaps it itself."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop.add_reader(pidfd, _reap_orphan, loop, pid, pidfd, on_exit, _REAP_TRIES)


def _reap_orphan(
    loop: asyncio.AbstractEventLoop, pid: int, pidfd: int, on_exit: ExitCallback, tries: int
) -> None:
    loop.remove_reader(pidfd)
    try:
        found, status, usage = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        found = 0  # not re-parented to us yet
    if found == 0 and tries > 0:
        retry = (pidfd, _reap_orphan, loop, pid, pidfd, on_exit, tries - 1)
        loop.call_later(_REAP_RETRY, loop.add_reader, *retry)
        return
    os.close(pidfd)
    if found == 0:
        log.error("prefork: exit of pid %d could not be collected", pid)
        on_exit(_KILLED_STATUS, 0.0)
        return
    on_exit(status, usage.ru_utime + usage.ru_stime)
