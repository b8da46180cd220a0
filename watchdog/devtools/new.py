"""``fwatchdog new NAME --lang LANG``: the handler folder and the stack file, as faas-cli new."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from . import DevError, templates
from .stack import (
    DEFAULT_FILES,
    DEFAULT_GATEWAY,
    NAME_PATTERN,
    load_stack,
    render_function,
    render_new_stack,
)

GITIGNORE_ENTRIES = ("template", "build", ".secrets", ".fwatchdog")


@dataclass(frozen=True, slots=True)
class NewRequest:
    name: str
    lang: str
    project: Path
    prefix: str = ""
    handler: str = ""
    stack_file: str = ""  # -f: write this file instead of stack.yaml
    append: str = ""  # --append: add the function to this existing stack file
    gateway: str = DEFAULT_GATEWAY


@dataclass(frozen=True, slots=True)
class NewResult:
    stack_file: Path
    handler: Path
    welcome_message: str


def new_function(request: NewRequest) -> NewResult:
    """Scaffold one function. Nothing is written when a check fails."""
    if not NAME_PATTERN.match(request.name):
        raise DevError(
            f"invalid function name {request.name!r}: use lowercase letters, digits and "
            "dashes, starting and ending with a letter or digit"
        )
    template = templates.find(request.lang, request.project)
    handler_rel = request.handler or request.name
    handler = request.project / handler_rel
    stack_file = _stack_path(request)
    if handler.exists():
        raise DevError(f"folder {handler} already exists: choose another name or --handler")
    if request.append:
        existing = load_stack(stack_file)
        if any(spec.name == request.name for spec in existing.functions):
            raise DevError(f"{stack_file} already has a function named {request.name!r}")
    elif stack_file.exists():
        raise DevError(f"{stack_file} already exists: add the function with --append {stack_file}")
    source = template.path / template.handler_folder
    if not source.is_dir():
        raise DevError(f"template {request.lang} has no {template.handler_folder}/ folder")
    shutil.copytree(source, handler)
    handler.chmod(0o700)
    _update_gitignore(request.project / ".gitignore")
    image = (
        f"{request.prefix.rstrip('/')}/{request.name}:latest"
        if request.prefix
        else (f"{request.name}:latest")
    )
    handler_ref = f"./{handler_rel}"
    if request.append:
        entry = render_function(request.name, request.lang, handler_ref, image)
        stack_file.write_text(with_function(stack_file.read_text(), entry))
    else:
        stack_file.write_text(
            render_new_stack(request.name, request.lang, handler_ref, image, request.gateway)
        )
    return NewResult(stack_file, handler, template.welcome_message)


def with_function(text: str, entry: str) -> str:
    """``text`` with ``entry`` (a rendered function) at the end of its ``functions:`` block,
    before any top-level section that follows it (``configuration:``...)."""
    lines = text.splitlines(keepends=True)
    at = len(lines)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == "functions:"), None)
    if start is not None:
        for i in range(start + 1, len(lines)):
            line = lines[i]
            if line.strip() and not line[0].isspace() and not line.startswith("#"):
                at = i
                break
    head = "".join(lines[:at])
    if head and not head.endswith("\n"):
        head += "\n"
    return head + entry + "".join(lines[at:])


def _stack_path(request: NewRequest) -> Path:
    if request.append:
        path = request.project / request.append
        if path.suffix not in (".yml", ".yaml"):
            raise DevError(f"--append {request.append}: the file must end in .yml or .yaml")
        if not path.is_file():
            raise DevError(f"--append {request.append}: the file does not exist")
        return path
    return request.project / (request.stack_file or DEFAULT_FILES[0])


def _update_gitignore(path: Path) -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    missing = [entry for entry in GITIGNORE_ENTRIES if entry not in lines]
    if missing:
        path.write_text("\n".join([*lines, *missing]) + "\n")
