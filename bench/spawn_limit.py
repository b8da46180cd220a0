"""The spawn limit: the same handler spawned from a tight loop, without any HTTP.

Each spawn is what a fork-mode request must do at least: ``posix_spawn`` with stdin and stdout
on pipes, write the body, close stdin, read stdout to EOF, wait for the exit. ``workers``
threads run loops side by side (``posix_spawn``, reads and ``waitpid`` release the GIL).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class SpawnResult:
    spawns: int
    seconds: float
    workers: int
    cpu_ms_per_spawn: float  # this process: the parent's side of each spawn
    handler_cpu_ms_per_spawn: float  # the spawned processes

    @property
    def rate(self) -> float:
        return self.spawns / self.seconds


def spawn_once(path: str, argv: list[str], env: dict[str, str], body: bytes) -> bytes:
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(
            path,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin_r, 0),
                (os.POSIX_SPAWN_DUP2, stdout_w, 1),
            ],
        )
    finally:
        os.close(stdin_r)
        os.close(stdout_w)
    try:
        if body:
            os.write(stdin_w, body)
    finally:
        os.close(stdin_w)
    chunks = []
    try:
        while chunk := os.read(stdout_r, 65536):
            chunks.append(chunk)
    finally:
        os.close(stdout_r)
    os.waitpid(pid, 0)
    return b"".join(chunks)


def spawn_loop(argv: list[str], body: bytes, seconds: float, workers: int = 1) -> SpawnResult:
    path = _resolve(argv[0])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    expected = spawn_once(path, argv, env, body)  # also checks the handler works
    counts = [0] * workers
    deadline = time.monotonic() + seconds

    def loop(index: int) -> None:
        while time.monotonic() < deadline:
            if spawn_once(path, argv, env, body) != expected:
                raise RuntimeError(f"{argv} answered differently")
            counts[index] += 1

    self_before = resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    spawns = max(sum(counts), 1)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return SpawnResult(
        spawns=spawns,
        seconds=elapsed,
        workers=workers,
        cpu_ms_per_spawn=_cpu(self_before, self_after) * 1000 / spawns,
        handler_cpu_ms_per_spawn=_cpu(children_before, children_after) * 1000 / spawns,
    )


def _cpu(before: resource.struct_rusage, after: resource.struct_rusage) -> float:
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _resolve(command: str) -> str:
    if "/" in command:
        return command
    for directory in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        candidate = os.path.join(directory, command)
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"{command} is not on PATH")
