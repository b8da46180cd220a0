"""A fork server: a helper process that spawns the per-request handlers.

``posix_spawn`` uses vfork: the calling thread is suspended until the child has exec'd, and
CPython holds the GIL throughout, so spawning from the event loop stalls every other request
for the whole exec (about half a millisecond for ``cat``, of which only a fifth is the caller's
own CPU). The watchdog therefore forks this helper once, before it serves, and sends it one
message per request over a SEQPACKET socket pair: the request's extra environment variables,
with the child's three pipe ends attached as file descriptors. The helper spawns, answers with
the pid, and later reports the exit status and CPU time, so the event loop never blocks.

The helper is also a child subreaper: orphans of handlers are re-parented to it and reaped at
once. It dies with the watchdog (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger("watchdog.forkserver")

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
NAME = "fw-spawner"

_SPAWNED = b"P"
_FAILED = b"E"
_EXITED = b"X"
_PID = struct.Struct("=i")
_EXIT = struct.Struct("=iidd")  # pid, wait status, user and system CPU seconds
_EXITS_PER_MESSAGE = 64  # an exit report carries one or more of these records
_REPLY_SIZE = 1 + _EXITS_PER_MESSAGE * _EXIT.size  # the largest reply
_SOCKET_BUFFER = 4 * 1024 * 1024
_MAX_MESSAGE = 1 << 20  # a request's extra environment; its headers are at most 1 MiB
_STANDARD_FDS = [0, 1, 2]
_FDS_SPACE = socket.CMSG_SPACE(3 * array.array("i").itemsize)
# Signals the watchdog (or this helper) handles or ignores; children start with defaults.
# (Python ignores SIGPIPE and SIGXFSZ, and exec keeps ignored signals ignored: without this a
# handler such as `cat` would not die when its reader goes away.)
RESET_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGCHLD,
    signal.SIGHUP,
)


def spawn_in_own_group(
    program: str,
    argv: Sequence[str],
    env: Mapping[str, str] | Mapping[bytes, bytes],
    fds: Sequence[int],
) -> int:
    """``posix_spawn`` with ``fds`` as stdin, stdout and stderr, in a new process group, with
    default signal dispositions and an empty signal mask. Raises OSError.

    ``fds`` that are 0, 1 and 2 already (the fork server receives them there) are inherited
    as they are: a dup2 file action costs glibc two getrlimit calls here and a dup2 in the
    child."""
    in_place = list(fds) == _STANDARD_FDS
    return os.posix_spawn(
        program,
        list(argv),
        env,
        file_actions=()
        if in_place
        else [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
        setpgroup=0,
        setsigdef=RESET_SIGNALS,
        setsigmask=(),
    )


class ForkServerError(Exception):
    """The fork server refused a spawn (its reason is the message) or is gone."""


ExitCallback = Callable[[int, float], None]


class ForkServer:
    """The watchdog's side of the fork server; one per watchdog, used from the event loop."""

    def __init__(
        self,
        sock: socket.socket,
        pid: int,
        on_gone: Callable[[dict[int, ExitCallback]], None] | None = None,
        *,
        replies_carry_fds: bool = True,
    ) -> None:
        self.pid = pid
        # A zygote's replies carry a go pipe; the fork server's never do (a plain recv then).
        self._receive = _receive_with_fds if replies_carry_fds else _receive_plain
        # Called once the helper has gone, with the exit callbacks of children it left running.
        self._on_gone = on_gone
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        # Replies come in request order; each spawn's exit callback is registered as soon as its
        # pid is read, because its exit report may follow in the same read.
        self._pending: deque[tuple[asyncio.Future[int], ExitCallback]] = deque()
        self._on_exit: dict[int, ExitCallback] = {}
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    def start(cls, program: str, argv: Sequence[str], base_env: Mapping[str, str]) -> ForkServer:
        """Fork the helper. Call from the event loop before serving (no threads yet)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the helper, which never returns
            ours.close()
            _run_helper(theirs, program, list(argv), dict(base_env))
        theirs.close()
        return cls(ours, pid, replies_carry_fds=False)

    async def spawn(
        self, extra_env: Mapping[str, str], fds: tuple[int, int, int], on_exit: ExitCallback
    ) -> int:
        """Spawn the handler with ``extra_env`` and ``fds`` as its stdin, stdout and stderr.

        ``on_exit(wait_status, cpu_seconds)`` is called from the loop when it exits.

        Raises:
            ForkServerError: the program could not be started, or the helper is gone.
        """
        return await self.spawn_nowait(extra_env, fds, on_exit)

    def spawn_nowait(
        self, extra_env: Mapping[str, str], fds: tuple[int, int, int], on_exit: ExitCallback
    ) -> asyncio.Future[int]:
        """:meth:`spawn` without waiting: the request is sent now, and the future resolves
        with the pid (or ForkServerError). Cancelling it kills the child once spawned.

        Raises:
            ForkServerError: the helper is gone.
        """
        payload = "\0".join([f"{k}={v}" for k, v in extra_env.items()]).encode(
            "utf-8", "surrogateescape"
        )
        waiter: asyncio.Future[int] = self._loop.create_future()
        try:
            socket.send_fds(self._sock, [payload], list(fds))
        except OSError as exc:
            raise ForkServerError(f"fork server unavailable: {exc}") from exc
        self._pending.append((waiter, on_exit))
        return waiter

    @property
    def alive(self) -> bool:
        return self._sock.fileno() >= 0

    def close(self) -> None:
        """Stop the helper (it exits when its socket closes), reap it, fail pending spawns."""
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        _reap(self.pid)
        while self._pending:
            waiter, _ = self._pending.popleft()
            if not waiter.done():
                waiter.set_exception(ForkServerError("fork server closed"))

    def _on_readable(self) -> None:
        while True:
            try:
                message, fds = self._receive(self._sock)
            except BlockingIOError:
                return
            except ConnectionResetError:
                # The helper died with our requests unread. Linux reports that before the
                # replies still queued here: read those first (their children may be running).
                continue
            except OSError:
                message, fds = b"", []
            if not message:
                if self._on_gone is None:
                    log.error(
                        "the fork server (pid %d) has gone: no handler can be started", self.pid
                    )
                self.close()
                if self._on_gone is not None:
                    orphans, self._on_exit = self._on_exit, {}
                    self._on_gone(orphans)
                return
            self._dispatch(message, fds)

    def _dispatch(self, message: bytes, fds: list[int]) -> None:
        """One reply. A zygote's spawn reply carries its child's go pipe (see
        zygote_main.py): the child runs the handler only once we have its pid, so a zygote that
        dies before we do leaves no running child behind a request we spawn again."""
        go = fds[0] if fds else None
        try:
            self._handle_reply(message, go)
        finally:
            for fd in fds:
                os.close(fd)

    def _handle_reply(self, message: bytes, go: int | None) -> None:
        kind, body = message[:1], message[1:]
        if kind == _EXITED:
            for pid, status, user, system in _EXIT.iter_unpack(body):
                callback = self._on_exit.pop(pid, None)
                if callback is not None:
                    callback(status, user + system)
            return
        waiter, on_exit = self._pending.popleft()
        if kind != _SPAWNED:
            if not waiter.done():
                waiter.set_exception(ForkServerError(body.decode("utf-8", "replace")))
            return
        pid = _PID.unpack(body)[0]
        if waiter.done():  # the request was cancelled while its handler was being spawned
            _kill_group(pid)  # a zygote's child gets no go byte: it exits without running
            return
        self._on_exit[pid] = on_exit
        if go is not None:
            os.write(go, b"g")
        waiter.set_result(pid)


_NO_FDS: list[int] = []


def _receive_with_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    message, fds, _, _ = socket.recv_fds(sock, _REPLY_SIZE, 1, socket.MSG_DONTWAIT)
    return message, fds


def _receive_plain(sock: socket.socket) -> tuple[bytes, list[int]]:
    return sock.recv(_REPLY_SIZE, socket.MSG_DONTWAIT), _NO_FDS


def _reap(pid: int, patience: float = 2.0) -> None:
    """Wait briefly for the helper to exit after its socket closed; kill it if it does not."""
    deadline = time.monotonic() + patience
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.005)
    except ChildProcessError:
        pass  # already reaped


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- the helper process ------------------------------------------------------------------------


def _run_helper(  # pragma: no cover - covered by every fork-mode test, in another process
    sock: socket.socket, program: str, argv: list[str], base_env: dict[str, str]
) -> None:
    code = 0
    try:
        _prepare_helper()
        _serve(sock, program, argv, base_env)
    except BaseException:  # noqa: BLE001 - nothing may escape into the forked copy of the loop
        code = 1
    os._exit(code)


def _prepare_helper() -> None:  # pragma: no cover
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.prctl(_PR_SET_NAME, NAME.encode(), 0, 0, 0)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # The watchdog drives shutdown; a Ctrl-C to the terminal's process group must not kill us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _serve(  # pragma: no cover
    sock: socket.socket, program: str, argv: list[str], base_env: dict[str, str]
) -> None:
    """Block in recvmsg; exits are reported from the SIGCHLD handler, which Python runs when
    the signal interrupts it (no poll, no wake-up pipe to write, poll and drain)."""
    signal.set_wakeup_fd(-1)  # the one inherited is the watchdog's loop's: never wake it
    reaper = _Reaper(sock)
    signal.signal(signal.SIGCHLD, reaper.on_signal)
    spawn = _Spawner(program, argv, base_env)
    # One buffer for every message: a fresh megabyte per recv cost an mmap, an mremap and a
    # munmap (with its TLB shootdown) per request. An anonymous mapping, not a bytearray
    # (which zero-fills it): only the pages a message reaches become resident.
    import mmap  # here: the watchdog itself has no use for it

    view = memoryview(mmap.mmap(-1, _MAX_MESSAGE))
    _free_standard_fds()  # last: nothing opened from here on may take 0, 1 or 2
    while True:
        size, fds = _receive(sock, view)
        if not size and not fds:
            return  # the watchdog is gone
        reaper.hold()
        sock.send(spawn(view[:size], fds))
        reaper.release()


class _Reaper:  # pragma: no cover
    """Reports exits from the SIGCHLD handler, but never a child's before its spawn reply
    (Python may run the handler between any two steps of a spawn, and a handler that fails
    to exec exits at once): while a spawn is in hand, the report waits for its reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.holding = False
        self.pending = False

    def on_signal(self, *_: object) -> None:
        if self.holding:
            self.pending = True
        else:
            _report_exits(self.sock)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        if self.pending:
            self.pending = False
            _report_exits(self.sock)


def _free_standard_fds() -> None:  # pragma: no cover
    """Close our own 0, 1 and 2 (nothing here writes to them; Python's streams are dropped
    with them): each request's three pipe ends then arrive as 0, 1 and 2, where the handler
    inherits them as they are (:func:`spawn_in_own_group`), with no close-on-exec flag to
    set."""
    sys.stdin = sys.stdout = sys.stderr = None
    for fd in _STANDARD_FDS:
        try:
            os.close(fd)
        except OSError:
            pass


def _receive(sock: socket.socket, view: memoryview) -> tuple[int, list[int]]:  # pragma: no cover
    size, ancdata, _, _ = sock.recvmsg_into([view], _FDS_SPACE)
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return size, fds.tolist()


class _Spawner:  # pragma: no cover
    """Spawns the handler: the base environment is encoded once, as bytes, and each request
    adds its own ``KEY=value`` entries to a copy, undecoded."""

    def __init__(self, program: str, argv: list[str], base_env: dict[str, str]) -> None:
        self.program = program
        self.argv = argv
        self.name = argv[0]
        self.base_env = {os.fsencode(k): os.fsencode(v) for k, v in base_env.items()}

    def __call__(self, payload: memoryview, fds: list[int]) -> bytes:
        env = self.base_env.copy()
        if payload:
            for entry in bytes(payload).split(b"\0"):
                key, _, value = entry.partition(b"=")
                env[key] = value
        try:
            if fds != _STANDARD_FDS:  # our 0, 1 or 2 were taken after all: no copy may leak
                for fd in fds:
                    os.set_inheritable(fd, False)
            pid = spawn_in_own_group(self.program, self.argv, env, fds)
        except OSError as exc:
            return _FAILED + f"cannot start {self.name!r}: {exc.strerror}".encode()
        finally:
            for fd in fds:
                os.close(fd)
        return _SPAWNED + _PID.pack(pid)


def _report_exits(sock: socket.socket) -> None:  # pragma: no cover
    """Reap every child that has exited and report them in one message (under load, one
    SIGCHLD often stands for several)."""
    records: list[bytes] = []
    while len(records) < _EXITS_PER_MESSAGE:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        records.append(_EXIT.pack(pid, status, usage.ru_utime, usage.ru_stime))
    if records:
        sock.send(_EXITED + b"".join(records))
    if len(records) == _EXITS_PER_MESSAGE:
        _report_exits(sock)
