"""``up --watch``: restart a function when a file in its handler folder changes.

watchfiles (inotify through a Rust core) debounces bursts of events, so an editor's
write-rename-chmod sequence is one restart, and its default filter skips editor swap files,
``__pycache__`` and VCS folders, as faas-cli's watcher does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import watchfiles

from . import DevError
from .build import BUILD_DIR
from .up import STATE_DIR, LocalStack

GENERATED_DIRS = (BUILD_DIR, STATE_DIR)

DEBOUNCE_MS = 300


def watch_handlers(local: LocalStack, stop: threading.Event, report: Callable[[str], None]) -> None:
    """Block until ``stop`` is set, restarting each function whose handler files change."""
    folders = {name: fn.spec.handler for name, fn in local.functions.items()}
    report("watching " + ", ".join(str(path) for path in folders.values()))
    generated = GeneratedFilter(local.options.stack.directory)
    for changes in watchfiles.watch(
        *set(folders.values()),
        watch_filter=generated,
        stop_event=stop,
        debounce=DEBOUNCE_MS,
        raise_interrupt=False,
    ):
        for name in changed_functions(folders, (Path(path) for _, path in changes)):
            if stop.is_set():
                return
            report(f"{name}: change detected, restarting")
            try:
                local.restart(name)
            except DevError as exc:
                # A broken edit must not end the session: the next save gets another try.
                report(f"{name}: restart failed: {exc}")


class GeneratedFilter(watchfiles.DefaultFilter):
    """watchfiles' default filter, plus what ``up`` itself writes in the project (``build/``,
    ``.fwatchdog/``): with ``handler: .`` those are inside a watched folder, and every
    restart or log line would trigger the next restart."""

    def __init__(self, project: Path) -> None:
        super().__init__()
        self.generated = tuple(str(project.resolve() / name) for name in GENERATED_DIRS)

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        resolved = str(Path(path).resolve())
        if any(resolved == top or resolved.startswith(top + "/") for top in self.generated):
            return False
        return super().__call__(change, path)


def changed_functions(folders: dict[str, Path], paths: Iterable[Path]) -> list[str]:
    changed = list(paths)
    return [
        name for name, folder in folders.items() if any(p.is_relative_to(folder) for p in changed)
    ]
