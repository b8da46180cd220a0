"""The stack file (faas-cli's ``stack.yaml``/``stack.yml``), parsed once into frozen dataclasses.

Only the keys the local workflow uses are interpreted; the other keys of faas-cli's schema are
accepted and kept out of the way, so a stack file written for faas-cli needs no change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from . import DevError

DEFAULT_FILES = ("stack.yaml", "stack.yml")
DEFAULT_GATEWAY = "http://127.0.0.1:8080"
NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENVSUBST = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_KNOWN_FUNCTION_KEYS = frozenset(
    {
        "lang", "handler", "image", "fprocess", "environment", "environment_file", "secrets",
        "labels", "annotations", "limits", "requests", "build_args", "build_options",
        "build_secrets", "platforms", "namespace", "readonly_root_filesystem", "skip_build",
        "constraints",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One entry of ``functions:``. ``handler`` is resolved against the stack file's folder."""

    name: str
    lang: str
    handler: Path
    image: str = ""
    fprocess: str = ""
    environment: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Stack:
    """A validated stack file."""

    path: Path
    gateway: str
    functions: tuple[FunctionSpec, ...]
    copy: tuple[str, ...] = ()

    @property
    def directory(self) -> Path:
        return self.path.parent

    def function(self, name: str) -> FunctionSpec:
        for spec in self.functions:
            if spec.name == name:
                return spec
        known = ", ".join(spec.name for spec in self.functions) or "none"
        raise DevError(f"{self.path}: no function named {name!r} (defined: {known})")


class _TextKeysLoader(yaml.SafeLoader):
    """A SafeLoader that keeps mapping keys as the text written: YAML 1.1 would read a
    function named ``off``, ``yes`` or ``null`` (valid names) or a variable named ``010`` as a
    boolean, nothing or a number. Go's YAML 1.2 parser, faas-cli's, keeps them as text."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # merge keys (<<: *defaults) first, as SafeLoader does
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key: Any = key_node.value
            else:
                key = self.construct_object(key_node, deep=deep)
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def find_stack_file(explicit: str | None, directory: Path) -> Path:
    """``-f FILE`` if given, else ``stack.yaml`` then ``stack.yml`` in ``directory`` (faas-cli)."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise DevError(f"stack file {explicit} does not exist")
        return path.resolve()
    for name in DEFAULT_FILES:
        if (directory / name).is_file():
            return (directory / name).resolve()
    raise DevError(f"no stack.yaml or stack.yml in {directory} (give one with -f FILE)")


def load_stack(path: Path, env: Mapping[str, str] | None = None) -> Stack:
    """Read, ``${VAR}``-expand (as faas-cli's --envsubst) and validate the stack file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DevError(f"stack file {path}: cannot read it: {exc.strerror or exc}") from None
    text = envsubst(text, os.environ if env is None else env)
    try:
        document = yaml.load(text, Loader=_TextKeysLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise DevError(f"stack file {path}: not valid YAML: {exc}") from None
    return parse_stack(path, document)


def envsubst(text: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset variable becomes "" (faas-cli)."""

    def replace(match: re.Match[str]) -> str:
        value = env.get(match.group(1), "")
        default = match.group(2)
        return value if default is None else value or default

    return _ENVSUBST.sub(replace, text)


def parse_stack(path: Path, document: Any) -> Stack:
    problems: list[str] = []
    where = f"stack file {path}"
    if not isinstance(document, dict):
        raise DevError(f"{where}: expected a mapping with provider and functions")
    version = document.get("version")
    if version is not None and str(version) != "1.0":
        problems.append(f"{where}: version {version!r} is not supported (only 1.0)")
    provider = document.get("provider")
    gateway = DEFAULT_GATEWAY
    if not isinstance(provider, dict) or provider.get("name") != "openfaas":
        problems.append(f"{where}: provider.name must be openfaas")
    elif provider.get("gateway"):
        gateway = str(provider["gateway"])
    functions = document.get("functions")
    specs: list[FunctionSpec] = []
    if not isinstance(functions, dict) or not functions:
        problems.append(f"{where}: functions: expected a mapping of name to settings")
    else:
        for name, settings in functions.items():
            spec = _parse_function(where, path.parent, str(name), settings, problems)
            if spec is not None:
                specs.append(spec)
    copy = _parse_copy(where, document.get("configuration"), problems)
    if problems:
        raise DevError(problems)
    return Stack(path=path, gateway=gateway, functions=tuple(specs), copy=copy)


def _parse_function(
    where: str, base: Path, name: str, settings: Any, problems: list[str]
) -> FunctionSpec | None:
    at = f"{where}: functions.{name}"
    if not NAME_PATTERN.match(name):
        problems.append(f"{at}: the name must be lowercase letters, digits and dashes")
        return None
    if not isinstance(settings, dict):
        problems.append(f"{at}: expected a mapping with lang and handler")
        return None
    unknown = sorted(set(map(str, settings)) - _KNOWN_FUNCTION_KEYS)
    if unknown:
        problems.append(f"{at}: unknown keys {', '.join(unknown)}")
    missing = [key for key in ("lang", "handler") if not settings.get(key)]
    if missing:
        problems.append(f"{at}: {' and '.join(missing)} required")
        return None
    return FunctionSpec(
        name=name,
        lang=str(settings["lang"]),
        handler=(base / str(settings["handler"])).resolve(),
        image=str(settings.get("image") or ""),
        fprocess=str(settings.get("fprocess") or ""),
        environment=_environment(at, base, settings, problems),
        labels=_string_map(f"{at}.labels", settings.get("labels"), problems),
        annotations=_string_map(f"{at}.annotations", settings.get("annotations"), problems),
    )


def _environment(
    at: str, base: Path, settings: dict[str, Any], problems: list[str]
) -> Mapping[str, str]:
    """``environment``, then each ``environment_file`` (YAML ``environment: {...}``) in order:
    files win over the inline map, later files over earlier ones (faas-cli)."""
    merged = dict(_string_map(f"{at}.environment", settings.get("environment"), problems))
    files = settings.get("environment_file") or []
    if not isinstance(files, list):
        problems.append(f"{at}.environment_file: expected a list of files")
        return MappingProxyType(merged)
    for name in files:
        where = f"{at}.environment_file {name}"
        try:
            document = yaml.load((base / str(name)).read_text(), Loader=_TextKeysLoader)
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{where}: cannot read it: {exc}")
            continue
        if not isinstance(document, dict) or "environment" not in document:
            problems.append(f"{where}: expected a mapping with one key, environment")
            continue
        merged.update(_string_map(where, document["environment"], problems))
    return MappingProxyType(merged)


def _string_map(at: str, value: Any, problems: list[str]) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        problems.append(f"{at}: expected a mapping of names to values")
        return MappingProxyType({})
    return MappingProxyType({str(k): "" if v is None else str(v) for k, v in value.items()})


def _parse_copy(where: str, configuration: Any, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(configuration, dict) or configuration.get("copy") is None:
        return ()
    copy = configuration["copy"]
    if not isinstance(copy, list) or not all(isinstance(item, str) for item in copy):
        problems.append(f"{where}: configuration.copy: expected a list of paths")
        return ()
    return tuple(copy)


def render_new_stack(name: str, lang: str, handler: str, image: str, gateway: str) -> str:
    """The stack file ``faas-cli new`` writes, byte for byte (it concatenates strings)."""
    return (
        "version: 1.0\n"
        "provider:\n"
        "  name: openfaas\n"
        f"  gateway: {gateway}\n"
        "functions:\n" + render_function(name, lang, handler, image)
    )


def render_function(name: str, lang: str, handler: str, image: str) -> str:
    return f"  {name}:\n    lang: {lang}\n    handler: {handler}\n    image: {image}\n"
