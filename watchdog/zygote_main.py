"""The prefork zygote: run by the handler's own interpreter as a script, standard library only.

``python [OPTIONS] zygote_main.py FD PRELOAD (-m MODULE | SCRIPT) [ARGS]``. It imports what the
handler imports at its top level plus PRELOAD, freezes the collector's objects so that pages
stay shared after fork, says ``R`` on the socket FD and then speaks the fork server's protocol
(watchdog/forkserver.py): each message is the request's extra environment with the three pipe
ends attached; it forks, answers ``P`` + pid (or ``E`` + reason), and reports ``X`` exits.
The child runs the handler as ``__main__`` exactly as a freshly started interpreter would.
"""

# Annotations stay unevaluated: the handler's interpreter may be older than the watchdog's.
from __future__ import annotations

import sys

# sys.path[0] is this file's directory (the watchdog package): it must never shadow the
# handler's modules or the standard library (watchdog/logs.py, watchdog/cgi.py ...).
del sys.path[0]

import ast  # noqa: E402
import atexit  # noqa: E402
import builtins  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import pkgutil  # noqa: E402
import runpy  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402
from importlib.machinery import SourceFileLoader, SourcelessFileLoader  # noqa: E402

_PR_SET_PDEATHSIG = 1
_PID = struct.Struct("=i")
_EXIT = struct.Struct("=iidd")
_RESET = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)
_OWN_FRAMES = (__file__, "<frozen runpy>")

_script: types.CodeType | None = None
"""The handler script compiled at warm-up (None: ``-m``, or a directory or zip archive)."""


def main(argv: list[str]) -> None:
    sock = socket.socket(fileno=int(argv[0]))
    preload = [name for name in argv[1].split(",") if name]
    module = argv[2] == "-m"
    target = argv[3] if module else argv[2]
    handler_argv = argv[3:] if module else argv[2:]
    if not module:
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    else:
        sys.path.insert(0, os.getcwd())
    _die_with_parent()
    for name in _top_level_imports(target, module) + preload:
        importlib.import_module(name)
    global _script
    _script = None if module else _compile_script(target)
    gc.freeze()
    base_env = dict(os.environ)
    sock.send(b"R")
    _serve(sock, base_env, target, module, handler_argv)


def _compile_script(target: str) -> types.CodeType | None:
    """The script, compiled once for every child. runpy.run_path compiles it in each child,
    after importing pkgutil and probing the file as a zip archive: for the classic template
    that doubled a child's private memory and CPU (2.7 MB of USS and 3.3 ms per child, 1.4 MB
    and 1.7 ms without). A directory or a zip archive (run through its __main__.py) is left
    to runpy."""
    if pkgutil.get_importer(target) is not None:
        return None
    path = os.path.abspath(target)
    with io.open_code(path) as source:
        code: types.CodeType | None = pkgutil.read_code(source)  # a .pyc given as the script
    if code is None:
        with io.open_code(path) as source:
            code = compile(source.read(), path, "exec", dont_inherit=True)
    return code


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _top_level_imports(target: str, module: bool) -> list[str]:
    """Modules imported by the handler's top-level statements (not inside functions or ifs)."""
    path = target
    if module:
        spec = importlib.util.find_spec(target)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            return []
        path = spec.origin
    with open(path, "rb") as source:
        tree = ast.parse(source.read(), path)
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names if _is_module(node.module, a)]
    return names


def _is_module(package: str, alias: ast.alias) -> bool:
    # ``from function import handler``: handler is a submodule to import, not an attribute.
    try:
        return importlib.util.find_spec(f"{package}.{alias.name}") is not None
    except (ImportError, ValueError):
        return False


def _serve(
    sock: socket.socket, env: dict[str, str], target: str, module: bool, handler_argv: list[str]
) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                _drain(wake_r)
                _report_exits(sock)
                continue
            payload, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
            for fd in fds:  # CPython ignores MSG_CMSG_CLOEXEC; children close >2 regardless
                os.set_inheritable(fd, False)
            if not payload and not fds:
                return
            extra = _parse_env(payload)
            _fork_one(sock, {**env, **extra}, fds, target, module, handler_argv)


def _parse_env(payload: bytes) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in payload.split(b"\0") if payload else ():
        key, _, value = entry.decode("utf-8", "surrogateescape").partition("=")
        env[key] = value
    return env


def _fork_one(
    sock: socket.socket,
    env: dict[str, str],
    fds: list[int],
    target: str,
    module: bool,
    handler_argv: list[str],
) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    # The child waits for a go byte that the watchdog writes once it has read the child's pid
    # (the pipe's write end travels with it): a zygote that dies before then leaves a child
    # that exits without running, so the watchdog can spawn the request again, never twice.
    go_r, go_w = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in (*fds, go_r, go_w):
            os.close(fd)
        sock.send(b"E" + f"cannot fork the zygote: {exc.strerror}".encode())
        return
    if pid == 0:
        os.close(go_w)
        if os.read(go_r, 1) != b"g":
            os._exit(127)
        os.close(go_r)
        _run_child(env, fds, target, module, handler_argv)
    for fd in (*fds, go_r):
        os.close(fd)
    socket.send_fds(sock, [b"P" + _PID.pack(pid)], [go_w])
    os.close(go_w)


def _run_child(
    env: dict[str, str], fds: list[int], target: str, module: bool, handler_argv: list[str]
) -> None:
    code = 1
    try:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for sig in _RESET:
            signal.signal(sig, signal.SIG_DFL)
        for target_fd, fd in enumerate(fds):
            os.dup2(fd, target_fd)
        # Only stdin, stdout and stderr: nothing of the zygote (its socket) is inherited.
        _close_inherited()
        _replace_environ(env)
        sys.argv = list(handler_argv)
        code = _run_handler(target, module)
    finally:
        os._exit(code)


def _close_inherited() -> None:
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            try:
                os.close(int(name))
            except OSError:
                pass  # the directory's own descriptor, already closed


def _replace_environ(env: dict[str, str]) -> None:
    """``os.environ`` becomes ``env`` exactly. Only what differs is changed (a child starts
    with the zygote's environment, the request adds its few variables): rebuilding it whole
    wrote about 0.4 MB of pages shared with the zygote in every child."""
    for key in [key for key in os.environ if key not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _run_handler(target: str, module: bool) -> int:
    code = 0
    try:
        if module:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        elif _script is None:
            runpy.run_path(target, run_name="__main__")
        else:
            _run_script(_script, target)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:  # noqa: BLE001 - as the interpreter: traceback, status 1
        _print_traceback(exc)
        code = 1
    _join_threads()
    # The child leaves with os._exit: finalizing the interpreter would tear down every module
    # the zygote imported (35 ms more per request for the bench's 200,000-function package).
    # The atexit module has no public call that runs the callbacks without finalizing (only
    # register and unregister), so its private _run_exitfuncs stands in for that step of
    # Py_FinalizeEx; it prints a failing callback's traceback itself, as at a normal exit.
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120  # as Python does when stdout cannot be flushed at exit
    return code


def _run_script(script: types.CodeType, target: str) -> None:
    """As ``python SCRIPT`` runs it: in a new ``__main__`` module, the one in sys.modules."""
    path = os.path.abspath(target)
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__cached__ = None  # type: ignore[attr-defined]
    loader = SourcelessFileLoader if path.endswith(".pyc") else SourceFileLoader
    main.__loader__ = loader("__main__", path)
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    exec(script, vars(main))  # noqa: S102 - the handler's own script, as the interpreter runs it


def _print_traceback(exc: BaseException) -> None:
    """As the interpreter prints it: from the handler's frames on, without the zygote's."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _OWN_FRAMES:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def _join_threads() -> None:
    """As the interpreter does before atexit: wait for the handler's non-daemon threads."""
    threading = sys.modules.get("threading")
    if threading is None:
        return  # never imported: no thread can have been started from Python
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _report_exits(sock: socket.socket) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(b"X" + _EXIT.pack(pid, status, usage.ru_utime, usage.ru_stime))


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
