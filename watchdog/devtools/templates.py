"""Finding templates and reading what they declare (``template.yml``, the Dockerfile's ENV).

Lookup order for a language: ``./template/LANG`` in the project (where ``faas-cli template
pull`` puts official OpenFaaS templates, so they win, as with faas-cli), then the templates
that ship with fwatchdog: ``templates/`` at the root of a checkout, or the copy installed as
package data (``watchdog/devtools/bundled``) when fwatchdog was installed from a wheel.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from . import DevError

PROJECT_TEMPLATE_DIR = "template"
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
_CANDIDATE_BUNDLES = (_PACKAGE_ROOT / "templates", Path(__file__).resolve().parent / "bundled")


@dataclass(frozen=True, slots=True)
class BuildOption:
    name: str
    packages: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Template:
    """One template folder and its ``template.yml``."""

    lang: str
    path: Path
    fprocess: str = ""
    welcome_message: str = ""
    handler_folder: str = "function"
    build_options: tuple[BuildOption, ...] = ()

    @property
    def dockerfile(self) -> Path:
        return self.path / "Dockerfile"


def bundled_dir() -> Path | None:
    """The templates shipped with fwatchdog, or None if this installation has none."""
    for candidate in _CANDIDATE_BUNDLES:
        if (candidate / "python3-http" / "template.yml").is_file():
            return candidate
    return None


def template_dirs(project: Path) -> list[Path]:
    dirs = [project / PROJECT_TEMPLATE_DIR]
    bundled = bundled_dir()
    if bundled is not None:
        dirs.append(bundled)
    return dirs


def available(project: Path) -> list[str]:
    """Every language found, in lookup order, without duplicates."""
    names: dict[str, None] = {}
    for directory in template_dirs(project):
        if directory.is_dir():
            for entry in sorted(directory.iterdir()):
                if (entry / "template.yml").is_file():
                    names.setdefault(entry.name, None)
    return list(names)


def find(lang: str, project: Path) -> Template:
    """The template for ``lang``; an unknown language names the available ones."""
    if lang and "/" not in lang and lang not in (".", ".."):
        for directory in template_dirs(project):
            if (directory / lang / "template.yml").is_file():
                return read(lang, directory / lang)
    choices = ", ".join(available(project)) or "none"
    raise DevError(f"unknown language {lang!r}: available templates are {choices}")


def read(lang: str, path: Path) -> Template:
    where = path / "template.yml"
    try:
        document = yaml.safe_load(where.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DevError(f"{where}: cannot read it: {exc}") from None
    if not isinstance(document, dict):
        raise DevError(f"{where}: expected a mapping (language, fprocess, ...)")
    return Template(
        lang=lang,
        path=path,
        fprocess=str(document.get("fprocess") or ""),
        welcome_message=str(document.get("welcome_message") or ""),
        handler_folder=str(document.get("handler_folder") or "function"),
        build_options=_build_options(where, document.get("build_options")),
    )


def _build_options(where: Path, raw: Any) -> tuple[BuildOption, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise DevError(f"{where}: build_options: expected a list of {{name, packages}}")
    options = []
    for item in raw:
        if not isinstance(item, dict) or "name" not in item:
            raise DevError(f"{where}: build_options: each entry needs a name")
        options.append(BuildOption(str(item["name"]), tuple(map(str, item.get("packages") or []))))
    return tuple(options)


def dockerfile_env(dockerfile: Path) -> Mapping[str, str]:
    """The ``ENV`` settings of a Dockerfile's final stage, in order (later lines win).

    Both forms are read: ``ENV k=v k2="v 2"`` and the legacy ``ENV k v``. ``$VAR``
    references are left as written; the caller decides what to do with them (e.g. PATH).
    """
    try:
        lines = _logical_lines(dockerfile.read_text())
    except OSError as exc:
        raise DevError(f"{dockerfile}: cannot read it: {exc.strerror or exc}") from None
    env: dict[str, str] = {}
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            env = {}  # a new stage starts from its base image, not from the previous stage
        elif word.upper() == "ENV":
            env.update(_parse_env(dockerfile, rest.strip()))
    return MappingProxyType(env)


def _logical_lines(text: str) -> list[str]:
    """Join backslash continuations; drop comments and blank lines."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def _parse_env(dockerfile: Path, rest: str) -> dict[str, str]:
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise DevError(f"{dockerfile}: ENV {rest}: {exc}") from None
    if words and "=" not in words[0]:
        # Legacy form: ENV key the rest of the line is the value
        key, _, value = rest.partition(" ")
        return {key: " ".join(shlex.split(value.strip()))}
    pairs = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise DevError(f"{dockerfile}: ENV {rest}: expected key=value, got {word!r}")
        pairs[key] = value
    return pairs
