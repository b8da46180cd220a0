"""Build contexts: ``build/NAME/`` exactly as faas-cli's ``CreateBuildContext`` writes it.

The template folder is copied whole, then each top-level entry of the handler folder (except
``build`` and ``template``) is laid over ``function/``; ``configuration.copy`` paths land in
``function/<path>``. For ``lang: dockerfile`` the handler folder itself is the context.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import DevError
from .stack import FunctionSpec, Stack
from .templates import Template

BUILD_DIR = "build"
DOCKERFILE_LANG = "dockerfile"
# faas-cli skips build and template; .fwatchdog is fwatchdog up's own state (logs, queue).
_SKIPPED_HANDLER_ENTRIES = frozenset({"build", "template", ".fwatchdog"})


def context_dir(stack: Stack, name: str) -> Path:
    return stack.directory / BUILD_DIR / name


def build_context(stack: Stack, spec: FunctionSpec, template: Template) -> Path:
    """Write ``build/NAME`` afresh and return it."""
    if not spec.handler.is_dir():
        raise DevError(f"function {spec.name}: handler folder {spec.handler} does not exist")
    target = context_dir(stack, spec.name)
    if target.exists():
        shutil.rmtree(target)
    if spec.lang == DOCKERFILE_LANG:
        target.mkdir(parents=True, mode=_dir_mode())
        _overlay(spec.handler, target)
        function_dir = target
    else:
        function_dir = target / template.handler_folder
        function_dir.mkdir(parents=True, mode=_dir_mode())
        shutil.copytree(template.path, target, dirs_exist_ok=True)
        _overlay(spec.handler, function_dir)
    for extra in stack.copy:
        _copy_extra(stack.directory, extra, function_dir)
    return target


def _dir_mode() -> int:
    return 0o777 if os.environ.get("CI", "").lower() in ("true", "1") else 0o700


def _overlay(source: Path, target: Path) -> None:
    for entry in sorted(source.iterdir()):
        if entry.name in _SKIPPED_HANDLER_ENTRIES:
            continue
        _copy_entry(entry, target / entry.name)


def _copy_entry(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)


def _copy_extra(project: Path, extra: str, function_dir: Path) -> None:
    source = (project / extra).resolve()
    if source == project.resolve() or not source.is_relative_to(project.resolve()):
        raise DevError(f"configuration.copy: forbidden path {extra!r}: it must be inside {project}")
    if not source.exists():
        raise DevError(f"configuration.copy: {extra!r} does not exist")
    destination = function_dir / source.relative_to(project.resolve())
    destination.parent.mkdir(parents=True, exist_ok=True)
    _copy_entry(source, destination)
