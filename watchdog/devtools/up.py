"""``fwatchdog up``: the gateway and one watchdog per function as local processes (no Docker).

For each function: write its build context (as ``build --shrinkwrap``), get its cached venv,
start ``python -m watchdog`` in the context folder with the template Dockerfile's ``ENV`` plus
the stack's ``environment`` and wait until it is healthy; then start the gateway with a
generated functions file. Every child runs in its own process group, so a terminal's Ctrl-C
reaches only ``up``, which stops the gateway first, then the functions, and kills whatever
is left of each group.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import psutil
import yaml

from ..config import WatchdogConfig
from ..settings import declared
from . import DevError, templates
from .build import build_context
from .stack import FunctionSpec, Stack
from .templates import Template
from .venvs import bin_dir, ensure_venv

STATE_DIR = ".fwatchdog"
STATE_FILE = "up.json"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
# Local defaults a Dockerfile or the stack may override: nothing stands in front of a local
# watchdog that needs time to notice it is draining.
LOCAL_DEFAULTS = {"healthcheck_interval": "0"}
# Set by the image, not by the function: a local run keeps the developer's own.
HOST_OWNED = frozenset({"PATH", "HOME", "HOSTNAME", "LANG", "TMPDIR"})
_WATCHDOG_VARIABLES = frozenset(name for spec in declared(WatchdogConfig) for name in spec.env)
_UPSTREAM_KEYS = ("http_upstream_url", "upstream_url")
_PR_SET_PDEATHSIG = 1
# fwatchdog once installed (PyPI's watchdog owns that name), watchdog from a source checkout.
_PACKAGE = __name__.partition(".")[0]

Report = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class UpOptions:
    stack: Stack
    port: int = 8080
    watch: bool = False
    cache: Path = Path()
    pip_output: IO[bytes] | None = None  # None: pip writes to our own stdout

    @property
    def state_dir(self) -> Path:
        return self.stack.directory / STATE_DIR


def state_dir_for(project: Path) -> Path:
    return project / STATE_DIR


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


@dataclass(slots=True)
class FunctionProcess:
    """One function's watchdog: how to (re)start it and the running process."""

    spec: FunctionSpec
    template: Template
    port: int
    metrics_port: int
    upstream_port: int
    context: Path = Path()
    venv: Path = Path()
    proc: subprocess.Popen[bytes] | None = None
    family: list[psutil.Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LocalStack:
    """Owns every process ``up`` starts; :meth:`stop` leaves none behind."""

    def __init__(self, options: UpOptions, report: Report, stop: threading.Event) -> None:
        self.options = options
        self.report = report
        self.stop_requested = stop
        self.functions: dict[str, FunctionProcess] = {}
        self.gateway: subprocess.Popen[bytes] | None = None
        self._gateway_family: list[psutil.Process] = []
        self._claimed_ports: set[int] = set()
        self.port = options.port or self._free_port()

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Spawn the gateway and every function, then wait for all of them: the ports are
        chosen up front, so nothing has to wait for anything else to start."""
        state = self.options.state_dir
        (state / "logs").mkdir(parents=True, exist_ok=True)
        self._check_gateway_port()
        stack = self.options.stack
        for spec in stack.functions:
            template = templates.find(spec.lang, stack.directory)
            self.functions[spec.name] = FunctionProcess(
                spec, template, self._free_port(), self._free_port(), 0
            )
        for function in self.functions.values():
            self._prepare(function)  # one at a time: pip's progress stays readable
        self._spawn_gateway()
        for function in self.functions.values():
            self._spawn(function)
        for function in self.functions.values():
            self._wait_ready(function)
        self._wait_gateway()
        self._write_state()

    def restart(self, name: str) -> None:
        function = self.functions[name]
        self._stop_function(function)
        self._prepare(function)
        self._spawn(function)
        self._wait_ready(function)

    def stop(self) -> None:
        """Gateway first (no new calls reach a stopping function), then every function."""
        if self.gateway is not None:
            _stop_group(self.gateway, self._gateway_family)
        for function in self.functions.values():
            self._stop_function(function)
        (self.options.state_dir / STATE_FILE).unlink(missing_ok=True)

    def _prepare(self, function: FunctionProcess) -> None:
        """Write the build context and get the venv (created on a cache miss)."""
        spec = function.spec
        function.context = build_context(self.options.stack, spec, function.template)
        self.report(f"{spec.name}: build context {function.context}")
        requirements = _requirement_files(function.context)
        if requirements:
            names = _names(requirements, function.context)
            self.report(f"{spec.name}: venv for {names}")
        function.venv = ensure_venv(requirements, self.options.cache, self.options.pip_output)

    def _spawn(self, function: FunctionProcess) -> None:
        spec = function.spec
        env = self._environment(function, function.context, function.venv)
        logfile = log_path(self.options.state_dir, spec.name)
        with open(logfile, "ab") as out:
            out.write(f"--- fwatchdog up: starting {spec.name} on {function.url}\n".encode())
            out.flush()
            function.proc = _start_child([], env, out, cwd=function.context)

    def _wait_ready(self, function: FunctionProcess) -> None:
        assert function.proc is not None
        name = function.spec.name
        logfile = log_path(self.options.state_dir, name)
        _wait_healthy(function.proc, f"{function.url}/_/health", logfile, name, self.stop_requested)
        function.family = _family(function.proc)
        self.report(f"{name}: ready on {function.url} (logs: fwatchdog logs {name})")

    def _stop_function(self, function: FunctionProcess) -> None:
        if function.proc is not None:
            function.family = _family(function.proc) or function.family
            _stop_group(function.proc, function.family)
            function.proc = None

    def _environment(
        self, function: FunctionProcess, context: Path, venv_path: Path
    ) -> dict[str, str]:
        spec, template = function.spec, function.template
        env = {k: v for k, v in os.environ.items() if k not in _WATCHDOG_VARIABLES}
        env.update(LOCAL_DEFAULTS)
        dockerfile = context / "Dockerfile"
        image_env = templates.dockerfile_env(dockerfile) if dockerfile.is_file() else {}
        env.update({k: v for k, v in image_env.items() if k not in HOST_OWNED})
        if spec.fprocess:
            env.pop("function_process", None)
            env["fprocess"] = spec.fprocess
        elif template.fprocess and not (env.get("fprocess") or env.get("function_process")):
            env["fprocess"] = template.fprocess
        env.update(spec.environment)
        self._place_upstream(function, env, explicit=spec.environment)
        env.update(
            {
                "port": str(function.port),
                "metrics_port": str(function.metrics_port),
                "TMPDIR": str(self._run_dir(spec.name)),
                "PATH": f"{bin_dir(venv_path)}{os.pathsep}{os.environ.get('PATH', '')}",
                "VIRTUAL_ENV": str(venv_path),
                "OPENFAAS_NAME": spec.name,
            }
        )
        return env

    def _place_upstream(
        self, function: FunctionProcess, env: dict[str, str], explicit: Mapping[str, str]
    ) -> None:
        """Keep the template's upstream port (official templates hard-code theirs) unless
        another function of this stack has it or it is busy; then move it to a free port and
        say so in ``http_port``, which fwatchdog's templates and OpenFaaS's node ones read."""
        key = next((k for k in _UPSTREAM_KEYS if env.get(k)), None)
        if key is None or any(k in explicit for k in _UPSTREAM_KEYS):
            return
        parts = urlsplit(env[key])
        port = function.upstream_port or parts.port or 80
        if function.upstream_port == 0 and (port in self._claimed_ports or not _port_free(port)):
            port = self._free_port()
        function.upstream_port = port
        self._claimed_ports.add(port)
        if port != parts.port:
            env[key] = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))
            env["http_port"] = str(port)

    def _run_dir(self, name: str) -> Path:
        path = self.options.state_dir / "run" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _spawn_gateway(self) -> None:
        config = self.options.state_dir / "gateway.yml"
        config.write_text(yaml.safe_dump({"functions": self._gateway_functions()}))
        logfile = log_path(self.options.state_dir, "gateway")
        # This project's functions file and async queue, whatever the developer's shell says.
        env = {k: v for k, v in os.environ.items() if k not in ("gateway_config", "queue_path")}
        queue = self.options.state_dir / "queue.db"
        args = ["gateway", "--port", str(self.port), "--config", str(config)]
        with open(logfile, "ab") as out:
            self.gateway = _start_child([*args, "--queue-path", str(queue)], env, out)

    def _wait_gateway(self) -> None:
        assert self.gateway is not None
        logfile = log_path(self.options.state_dir, "gateway")
        _wait_healthy(
            self.gateway, f"{self.gateway_url}/healthz", logfile, "gateway", self.stop_requested
        )
        self._gateway_family = _family(self.gateway)

    def _gateway_functions(self) -> dict[str, dict[str, object]]:
        functions: dict[str, dict[str, object]] = {}
        for name, function in self.functions.items():
            entry: dict[str, object] = {"url": function.url}
            spec = function.spec
            if spec.image:
                entry["image"] = spec.image
            fprocess = spec.fprocess or function.template.fprocess
            if fprocess:
                entry["fprocess"] = fprocess
            if spec.environment:
                entry["environment"] = dict(spec.environment)
            if spec.labels:
                entry["labels"] = dict(spec.labels)
            if spec.annotations:
                entry["annotations"] = dict(spec.annotations)
            functions[name] = entry
        return functions

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "gateway": self.gateway_url,
            "functions": {
                name: {"url": fn.url, "log": str(log_path(self.options.state_dir, name))}
                for name, fn in self.functions.items()
            },
        }
        (self.options.state_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _check_gateway_port(self) -> None:
        if not _port_free(self.port):
            raise DevError(f"port {self.port} is in use: choose another with --port")

    def _free_port(self) -> int:
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in self._claimed_ports:
                self._claimed_ports.add(port)
                return port


def _requirement_files(context: Path) -> list[Path]:
    """The template's own requirements, then the handler's (the Dockerfiles' order)."""
    candidates = [context / "requirements.txt", context / "function" / "requirements.txt"]
    return [path for path in candidates if path.is_file()]


def _names(paths: Iterable[Path], base: Path) -> str:
    return " + ".join(str(path.relative_to(base)) for path in paths)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_healthy(
    proc: subprocess.Popen[bytes], url: str, logfile: Path, name: str, stop: threading.Event
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if stop.is_set():
            raise DevError(f"stopped while {name} was starting")
        if proc.poll() is not None:
            raise DevError(
                f"{name} exited with status {proc.returncode} while starting; "
                f"its output ({logfile}):\n{_tail(logfile)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        stop.wait(0.05)
    raise DevError(f"{name} did not become healthy within {READY_TIMEOUT:.0f}s ({logfile})")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _family(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The process and its descendants now: what must be gone after a stop."""
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop_group(proc: subprocess.Popen[bytes], family: list[psutil.Process]) -> None:
    """SIGTERM (the watchdog drains and stops its own children), then SIGKILL the group and any
    descendant that left it."""
    family = [*family, *_family(proc)]
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    for member in family:
        try:
            if member.is_running() and member.status() != psutil.STATUS_ZOMBIE:
                member.kill()
        except psutil.Error:
            continue
    proc.wait()


def _start_child(
    args: list[str], env: dict[str, str], out: IO[bytes], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """``python -m watchdog ARGS`` in a process group of its own, output to ``out``, dying
    with ``up`` even if ``up`` is killed."""
    return subprocess.Popen(
        [sys.executable, "-m", _PACKAGE, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        process_group=0,
        preexec_fn=_die_with_parent,
    )


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when ``up`` dies, even by SIGKILL, so a killed
    session still drains and stops its watchdogs (they stop their own children)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_up(options: UpOptions, report: Report, stop: threading.Event) -> None:
    """Start everything, serve (and watch) until ``stop`` is set, then stop everything."""
    local = LocalStack(options, report, stop)
    try:
        try:
            local.start()
        except DevError:
            if stop.is_set():
                return  # Ctrl-C during start-up is not a failure
            raise
        report(f"gateway: {local.gateway_url}")
        for name in local.functions:
            report(f"  {name}: {local.gateway_url}/function/{name}")
        if options.watch:
            from .watch import watch_handlers

            watch_handlers(local, stop, report)
        else:
            while not stop.wait(0.5):
                pass
    finally:
        report("stopping")
        local.stop()
