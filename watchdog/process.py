"""Handler processes: spawning, exit notification, killing whole trees, reaping orphans.

This module knows nothing about HTTP. Spawning is the hot path of the fork modes, so it uses the
cheapest primitives Linux offers instead of ``asyncio.create_subprocess_exec`` (which is about six
times slower under uvloop): ``posix_spawn`` (vfork-style in glibc) with pipes from ``pipe2``, and a
``pidfd`` per child watched by the event loop, so exits cost one callback and no SIGCHLD handler
(uvloop reserves SIGCHLD for itself).
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # at run time psutil is imported where used: ~7 ms of start-up otherwise
    import psutil

from .forkserver import ExitCallback, ForkServer, ForkServerError, spawn_in_own_group
from .pipes import close as close_pipe

log = logging.getLogger("watchdog.process")

_PR_SET_CHILD_SUBREAPER = 36
HANDLER_VARIABLE = "FWATCHDOG_HANDLER"
"""Every child's environment carries this variable, unique per child: the mark by which its
descendants are found at kill time even after they left its process group and lost their
parent (as Jenkins' ProcessTreeKiller does)."""
_ORPHAN_SWEEP_SECONDS = 1.0
_EXIT_REPORT_SECONDS = 5.0  # after SIGKILL; only a lost fork server would take longer


class Spawner(Protocol):
    """Starts handlers off the event loop: the fork server, or prefork's zygote (with the fork
    server behind it)."""

    @property
    def alive(self) -> bool: ...

    @property
    def helper_pids(self) -> tuple[int, ...]: ...

    def spawn_nowait(
        self, extra_env: Mapping[str, str], fds: tuple[int, int, int], on_exit: ExitCallback
    ) -> asyncio.Future[int]:
        """Ask for a handler with ``extra_env`` and ``fds`` as its stdio without waiting for
        it: the future gets its pid (or ForkServerError); raises ForkServerError at once when
        the helper is gone."""

    def close(self) -> None: ...


class _ForkServerSpawner:
    """The fork server alone, as a :class:`Spawner`."""

    def __init__(self, server: ForkServer) -> None:
        self.server = server

    @property
    def alive(self) -> bool:
        return self.server.alive

    @property
    def helper_pids(self) -> tuple[int, ...]:
        return (self.server.pid,)

    def spawn_nowait(
        self, extra_env: Mapping[str, str], fds: tuple[int, int, int], on_exit: ExitCallback
    ) -> asyncio.Future[int]:
        return self.server.spawn_nowait(extra_env, fds, on_exit)

    def close(self) -> None:
        self.server.close()


class SpawnError(Exception):
    """The handler could not be started (not found, not executable, out of resources)."""


def resolve_program(argv: Sequence[str], path: str | None) -> str:
    """Return the absolute path of ``argv[0]`` looked up on ``path`` like a shell would.

    Raises:
        SpawnError: the program does not exist or is not executable.
    """
    found = _which(argv[0], path)
    if found is None:
        raise SpawnError(f"{argv[0]!r} was not found or is not executable (PATH={path!r})")
    return os.path.abspath(found)


def _which(name: str, path: str | None) -> str | None:
    """``shutil.which`` for an executable file, without importing shutil (which loads the
    bz2, lzma and zlib modules to see if they exist: 0.6 MB of every watchdog)."""
    if os.sep in name:
        candidates = [name]
    else:
        directories = (path if path is not None else os.defpath).split(os.pathsep)
        candidates = [os.path.join(directory or os.curdir, name) for directory in directories]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(slots=True, eq=False)
class Child:
    """A spawned process: our ends of its pipes and a future for its exit code."""

    pid: int
    stdin: int | None
    stdout: int | None
    stderr: int | None
    exited: asyncio.Future[int]
    """The exit code; SpawnError when it could not be started."""
    cpu_seconds: float = 0.0
    spawned: asyncio.Future[int] | None = None
    """The pid, when it is started by the fork server (and 0 in ``pid`` until then)."""
    mark: str = ""
    """The value of :data:`HANDLER_VARIABLE` in its environment."""
    _fds: list[int] = field(default_factory=list)

    @property
    def returncode(self) -> int | None:
        """Exit status as ``subprocess`` reports it: negative for a signal, None while running."""
        return self.exited.result() if self.exited.done() else None

    def close_fd(self, fd: int | None) -> None:
        if fd is not None and fd in self._fds:
            self._fds.remove(fd)
            close_pipe(fd)

    def close_pipes(self) -> None:
        for fd in self._fds:
            close_pipe(fd)
        self._fds.clear()


def describe_exit(returncode: int) -> str:
    """``exit status 3`` or ``killed by signal SIGKILL``."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    return f"killed by signal {name}"


class ProcessTable:
    """Starts children, tells when they exit, kills their trees and reaps what they orphan.

    One instance per watchdog. As PID 1 (or as a child subreaper, which it asks to become) the
    watchdog inherits every orphaned descendant; a periodic sweep reaps those that are not its
    own handlers so that zombies never accumulate.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._children: dict[int, Child] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._fork_server: Spawner | None = None
        self._mark_prefix = os.urandom(4).hex() + "-"
        self._marks = itertools.count(1)
        self.started_total = 0
        self.cpu_seconds_total = 0.0

    def start(self) -> None:
        """Become a subreaper (when not PID 1 already) and start the orphan sweep."""
        if os.getpid() != 1:
            _become_subreaper()
        self._sweeper = self._loop.call_later(_ORPHAN_SWEEP_SECONDS, self._sweep)

    def start_fork_server(
        self,
        program: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        wrap: Callable[[ForkServer], Spawner] = _ForkServerSpawner,
    ) -> None:
        """Fork the helper that :meth:`spawn_handler` uses (see :mod:`watchdog.forkserver`);
        ``wrap`` may put another spawner in front of it (prefork's zygote)."""
        self._fork_server = wrap(ForkServer.start(program, argv, env))

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def can_spawn_handlers(self) -> bool:
        """False once the fork server has died: the watchdog then reports itself unhealthy."""
        return self._fork_server is not None and self._fork_server.alive

    def close(self) -> None:
        """Kill every process left by any child (orphans included), stop the fork server."""
        leftovers = _marked_descendants(lambda mark: mark.startswith(self._mark_prefix))
        _wait_gone(_signal_all(leftovers, signal.SIGKILL))
        if self._fork_server is not None:
            self._fork_server.close()
            self._fork_server = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._sweep_once()

    @property
    def running(self) -> list[Child]:
        return list(self._children.values())

    def spawn(
        self,
        program: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        merge_stderr: bool = False,
    ) -> Child:
        """Start ``argv`` in its own process group with stdin, stdout and stderr on pipes.

        With ``merge_stderr`` the child's stderr shares the stdout pipe (and ``stderr`` is None).

        Raises:
            SpawnError: the program could not be executed.
        """
        pipes = _Pipes(merge_stderr)
        mark = self._next_mark()
        try:
            pid = spawn_in_own_group(
                program, argv, {**env, HANDLER_VARIABLE: mark}, pipes.child_fds
            )
        except OSError as exc:
            for fd in pipes.parent_fds:
                os.close(fd)
            raise SpawnError(f"cannot start {argv[0]!r}: {exc.strerror}") from exc
        finally:
            pipes.close_child_ends()
        child = Child(pid, pipes.stdin, pipes.stdout, pipes.stderr, self._loop.create_future())
        child._fds = pipes.parent_fds
        child.mark = mark
        self._watch_exit(child)
        self._children[pid] = child
        self.started_total += 1
        return child

    def spawn_handler(
        self,
        extra_env: Mapping[str, str],
        *,
        merge_stderr: bool,
        before_start: Callable[[Child], None] | None = None,
    ) -> Child:
        """Start one more copy of the fork server's program, with ``extra_env`` added.

        Like :meth:`spawn`, but the exec happens in the fork server, so the event loop is not
        suspended for it, and nothing waits for it either: the child's pipes are usable at
        once, ``child.spawned`` resolves with its pid, and ``child.exited`` fails with
        SpawnError if it could not be started. ``before_start(child)`` is called with its
        pipes before it starts: what it writes to stdin is waiting there when the handler
        first reads, which then never blocks and is never woken for it.

        Raises:
            SpawnError: the fork server is gone.
        """
        assert self._fork_server is not None, "start_fork_server() first"
        pipes = _Pipes(merge_stderr)
        child = Child(0, pipes.stdin, pipes.stdout, pipes.stderr, self._loop.create_future())
        child._fds = pipes.parent_fds
        child.mark = self._next_mark()
        if before_start is not None:
            before_start(child)
        try:
            child.spawned = self._fork_server.spawn_nowait(
                {**extra_env, HANDLER_VARIABLE: child.mark},
                pipes.child_fds,
                lambda status, cpu: self._exited(child, status, cpu),
            )
        except ForkServerError as exc:
            pipes.close_child_ends()
            child.close_pipes()
            raise SpawnError(str(exc)) from exc
        child.spawned.add_done_callback(lambda spawned: self._spawned(child, pipes, spawned))
        return child

    def _spawned(self, child: Child, pipes: _Pipes, spawned: asyncio.Future[int]) -> None:
        # The child ends are kept until now: prefork's zygote may refuse them to the fork server.
        pipes.close_child_ends()
        error = spawned.exception() if not spawned.cancelled() else SpawnError("cancelled")
        if error is not None:
            if not child.exited.done():
                child.exited.set_exception(SpawnError(str(error)))
            return
        child.pid = spawned.result()
        self.started_total += 1
        if not child.exited.done():  # its exit may have been read in the same batch
            self._children[child.pid] = child

    def _next_mark(self) -> str:
        return f"{self._mark_prefix}{next(self._marks)}"

    def _exited(self, child: Child, status: int, cpu_seconds: float) -> None:
        child.cpu_seconds = cpu_seconds
        self.cpu_seconds_total += cpu_seconds
        self._children.pop(child.pid, None)
        if not child.exited.done():
            child.exited.set_result(os.waitstatus_to_exitcode(status))

    def _watch_exit(self, child: Child) -> None:
        pidfd = os.pidfd_open(child.pid)
        self._loop.add_reader(pidfd, self._on_exit, child, pidfd)

    def _on_exit(self, child: Child, pidfd: int) -> None:
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status, usage = os.wait4(child.pid, 0)
        self._exited(child, status, usage.ru_utime + usage.ru_stime)

    async def kill_tree(self, child: Child, grace: float) -> None:
        """SIGTERM the child's process group and descendants that left it, SIGKILL after grace.

        Descendants are listed before any signal: once their parent dies they are re-parented
        and can no longer be found through it. Those already re-parented (a double fork whose
        middle process exited) are found by the child's mark in their environment, among all
        of the watchdog's descendants (the fork server's included): a /proc scan, paid only
        when a tree is killed.
        """
        if not await _started(child):
            return
        strays = _descendants_outside_group(child.pid) + _marked_descendants(child.mark.__eq__)
        _signal_tree(child.pid, strays, signal.SIGTERM)
        if not child.exited.done() and grace > 0:
            try:
                await asyncio.wait_for(asyncio.shield(child.exited), grace)
            except TimeoutError:
                pass
        # Always follow with SIGKILL: members of the group may ignore SIGTERM even when the
        # child itself obeyed it. Look again for marked ones: some may have forked meanwhile.
        _signal_tree(child.pid, strays + _marked_descendants(child.mark.__eq__), signal.SIGKILL)
        try:
            await asyncio.wait_for(asyncio.shield(child.exited), _EXIT_REPORT_SECONDS)
        except TimeoutError:
            log.error("no exit reported for pid %d after SIGKILL", child.pid)

    def kill_leftovers(self, child: Child) -> None:
        """SIGKILL what remains of an exited child's tree: its group and marked descendants."""
        if child.pid <= 0:
            return  # never started (a killpg of 0 would be our own group)
        _signal_tree(child.pid, _marked_descendants(child.mark.__eq__), signal.SIGKILL)

    async def kill_all(self, grace: float) -> None:
        await asyncio.gather(*(self.kill_tree(c, grace) for c in self.running))

    def _sweep(self) -> None:
        self._sweep_once()
        self._sweeper = self._loop.call_later(_ORPHAN_SWEEP_SECONDS, self._sweep)

    def _sweep_once(self) -> None:
        helpers = self._fork_server.helper_pids if self._fork_server else ()
        for pid in _child_pids():
            if pid in self._children or pid in helpers:
                continue
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


async def _started(child: Child) -> bool:
    """Wait for the pid of a child being spawned; False if it never started."""
    spawned = child.spawned
    if spawned is None:
        return child.pid > 0
    if not spawned.done():
        try:
            await asyncio.shield(spawned)
        except ForkServerError:
            pass
        except asyncio.CancelledError:
            if not spawned.cancelled():
                raise  # we are cancelled ourselves
    if spawned.cancelled() or spawned.exception() is not None:
        return False
    child.pid = spawned.result()  # its done-callback may not have run yet
    return True


class _Pipes:
    """The three pipes of a child: our non-blocking ends and the child's ends."""

    def __init__(self, merge_stderr: bool) -> None:
        in_r, self.stdin = os.pipe2(os.O_CLOEXEC)
        self.stdout, out_w = os.pipe2(os.O_CLOEXEC)
        self.stderr: int | None
        if merge_stderr:
            self.stderr, err_w = None, out_w
        else:
            self.stderr, err_w = os.pipe2(os.O_CLOEXEC)
        self.child_fds = (in_r, out_w, err_w)
        self.parent_fds = [self.stdin, self.stdout] + (
            [self.stderr] if self.stderr is not None else []
        )
        for fd in self.parent_fds:
            os.set_blocking(fd, False)

    def close_child_ends(self) -> None:
        for fd in set(self.child_fds):
            os.close(fd)


def _child_pids() -> list[int]:
    """This process's children, from each thread's ``/proc`` list: psutil would read every
    process on the machine, and loading it costs an idle watchdog a megabyte."""
    pids: list[int] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as children:
                pids.extend(int(pid) for pid in children.read().split())
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN
        import psutil

        return [proc.pid for proc in psutil.Process().children()]
    return pids


def _descendants_outside_group(pid: int) -> list[psutil.Process]:
    import psutil

    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    strays = []
    for proc in procs:
        try:
            if os.getpgid(proc.pid) != pid:
                strays.append(proc)
        except OSError:
            continue
    return strays


def _marked_descendants(wanted: Callable[[str], bool]) -> list[psutil.Process]:
    """The watchdog's descendants whose environment carries a ``wanted`` mark, with their
    whole subtrees (a subtree may have dropped the variable)."""
    import psutil

    try:
        everyone = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    found: dict[int, psutil.Process] = {}
    for proc in everyone:
        if proc.pid in found:
            continue
        try:
            mark = proc.environ().get(HANDLER_VARIABLE)
            if mark is None or not wanted(mark):
                continue
            found[proc.pid] = proc
            found.update((p.pid, p) for p in proc.children(recursive=True))
        except psutil.Error:  # gone, a zombie, or not ours to read
            continue
    return list(found.values())


def _signal_all(procs: list[psutil.Process], sig: signal.Signals) -> list[psutil.Process]:
    import psutil

    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass
    return procs


def _wait_gone(procs: list[psutil.Process], timeout: float = 1.0) -> None:
    """Give killed processes a moment to die, so their parent reaps them before exiting."""
    import psutil

    if procs:
        psutil.wait_procs(procs, timeout=timeout)


def _signal_tree(pgid: int, strays: list[psutil.Process], sig: signal.Signals) -> None:
    import psutil

    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in strays:
        try:
            proc.send_signal(sig)  # psutil refuses if the pid was reused meanwhile
        except psutil.Error:
            pass


def _become_subreaper() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.warning("could not become a child subreaper: errno %d", ctypes.get_errno())
    except (OSError, AttributeError):
        log.warning("could not become a child subreaper on this platform")
