"""Fixtures that run the real gateway (``python -m watchdog gateway``) in front of real
watchdogs and a real HTTP upstream, all as child processes on free loopback ports."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import (
    FIXTURES,
    PYTHON,
    ROOT,
    RunningWatchdog,
    free_port,
    wait_until_serving,
    watchdog_env,
)

StartGateway = Callable[..., RunningWatchdog]


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM first, so a watchdog stops what it supervises (an http-mode upstream would
    outlive a SIGKILL), then SIGKILL whatever is still there after a while."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_for(proc: RunningWatchdog, path: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise AssertionError(f"exited with {proc.proc.returncode}:\n{proc.logs()}")
        try:
            if proc.request("GET", path, timeout=1).status < 500:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{path} did not answer:\n{proc.logs()}")


class Launcher:
    """Starts processes into one directory and reaps them all in :meth:`close`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[subprocess.Popen[bytes]] = []

    def _dir(self, stem: str) -> Path:
        path = self.directory / f"{stem}{len(self.procs)}"
        path.mkdir()
        return path

    def watchdog(self, **env: str) -> RunningWatchdog:
        run_dir = self._dir("wd")
        full_env = watchdog_env(run_dir, **env)
        log_path = run_dir / "watchdog.log"
        proc = _spawn([PYTHON, "-m", "watchdog"], full_env, log_path)
        self.procs.append(proc)
        wd = RunningWatchdog(
            proc, int(full_env["port"]), int(full_env["metrics_port"]), log_path, run_dir
        )
        wait_until_serving(wd)
        return wd

    def upstream(self) -> RunningWatchdog:
        """The HTTP function of ``fixtures/http_upstream.py``."""
        run_dir = self._dir("up")
        port = free_port()
        log_path = run_dir / "upstream.log"
        proc = _spawn([PYTHON, str(FIXTURES / "http_upstream.py"), str(port)], _env(), log_path)
        self.procs.append(proc)
        up = RunningWatchdog(proc, port, port, log_path, run_dir)
        _wait_for(up, "/status/200")
        return up

    def gateway(self, *args: str, wait: bool = True, **env: str) -> RunningWatchdog:
        """``python -m watchdog gateway --port FREE ARGS...`` with ``env`` added."""
        run_dir = self._dir("gw")
        port = free_port()
        log_path = run_dir / "gateway.log"
        argv = [PYTHON, "-m", "watchdog", "gateway", "--port", str(port), *args]
        env.setdefault("XDG_STATE_HOME", str(run_dir))  # its own queue file
        proc = _spawn(argv, _env(**env), log_path)
        self.procs.append(proc)
        gw = RunningWatchdog(proc, port, port, log_path, run_dir)
        if wait:
            _wait_for(gw, "/healthz")
        return gw

    def close(self) -> None:
        _reap(self.procs)


def _env(**extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    env.update(extra)
    return env


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """Start gateways, watchdogs and upstreams for one test; all are reaped after it."""
    launch = Launcher(tmp_path)
    try:
        yield launch
    finally:
        launch.close()


@dataclass
class World:
    gateway: RunningWatchdog
    cat: RunningWatchdog
    env: RunningWatchdog
    upstream: RunningWatchdog


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One gateway in front of a ``cat`` and an ``env`` watchdog and an HTTP function, shared
    by a test module (starting processes is the slow part of these tests)."""
    directory = tmp_path_factory.mktemp("world")
    launch = Launcher(directory)
    try:
        cat = launch.watchdog(fprocess="cat")
        env = launch.watchdog(fprocess="env")
        upstream = launch.upstream()
        up = f"http://127.0.0.1:{upstream.port}"
        functions = directory / "gateway.yml"
        functions.write_text(
            textwrap.dedent(
                f"""\
                functions:
                  env:
                    url: http://127.0.0.1:{env.port}
                    image: ghcr.io/example/env:1.0
                    fprocess: env
                    labels: {{team: core}}
                    annotations: {{com.example/owner: ada}}
                    environment: {{LEVEL: debug}}
                  web:
                    url: {up}
                  slow:
                    url: {up}
                    timeout: 500ms
                  limited:
                    url: {up}
                    max_concurrency: 1
                  staged:
                    url: {up}
                    namespace: staging
                """
            )
        )
        gateway = launch.gateway(
            "--config",
            str(functions),
            "--function",
            f"cat=http://127.0.0.1:{cat.port}",
            "--function",
            f"down=http://127.0.0.1:{free_port()}",
        )
        yield World(gateway, cat, env, upstream)
    finally:
        launch.close()
