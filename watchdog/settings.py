"""Settings, declared once: the one place a setting's names, parser, default and help live.

A configuration class declares each setting as a dataclass field made by :func:`setting`; the
field's name is the attribute, its type the parsed value's, and its metadata the rest. From
those declarations come, with nothing repeated:

- parsing and validation of flags and environment variables (:func:`resolve`), every problem
  collected into one :class:`ConfigError` that names the setting, the value and what is expected;
- the command-line flags and their ``--help`` (:func:`.flags.add_flags`);
- the README's configuration tables (:func:`markdown_table`, checked by a test and rewritten by
  ``python -m watchdog.settings README.md``).

Defaults are written as a user writes them (``30s``, ``1MiB``) and parsed like any value, so the
help, the README and the parsed default can never disagree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

_KEY = "fwatchdog.setting"


class ConfigError(Exception):
    """One or more configuration values are invalid; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Invalid(ValueError):
    """Raised by a value parser; the message says what is expected."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting. ``default`` is text parsed like a value; ``None`` means unset, with
    ``shown`` saying what applies then (for example another setting's value)."""

    env: tuple[str, ...]
    parse: Callable[[str], Any]
    default: str | None
    help: str
    flag: str | None = None
    switch: bool = False  # a bare --flag means true
    group: str = ""
    shown: str = ""
    secret: bool = False  # never logged: the start-up line says only whether it is set
    attr: str = ""  # the field's name, filled in by declared()

    @property
    def default_text(self) -> str:
        """The default as the help and the README show it."""
        if self.shown:
            return self.shown
        return "unset" if self.default in (None, "") else self.default


def setting(
    env: str,
    parse: Callable[[str], Any],
    default: str | None,
    help: str,
    *,
    flag: str | None = None,
    switch: bool = False,
    group: str = "",
    shown: str = "",
    secret: bool = False,
) -> Any:
    """Declare a setting as a dataclass field. ``env`` lists the variable names, space
    separated, the first present winning (an empty string: flag only)."""
    spec = Setting(tuple(env.split()), parse, default, help, flag, switch, group, shown, secret)
    return field(metadata={_KEY: spec})


_DECLARED: dict[type, tuple[Setting, ...]] = {}


def declared(cls: type) -> tuple[Setting, ...]:
    """The settings ``cls`` declares, in declaration order (read once per class)."""
    found = _DECLARED.get(cls)
    if found is None:
        found = tuple(
            replace(item.metadata[_KEY], attr=item.name)
            for item in fields(cls)
            if _KEY in item.metadata
        )
        _DECLARED[cls] = found
    return found


def resolve(
    specs: Iterable[Setting], env: Mapping[str, str], flags: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Parse every setting from ``flags`` (by attribute) over ``env`` over its default.

    Returns the parsed values by attribute and one line per problem. A setting that failed
    is left out of the values, so checks across settings can tell it from a value that is
    truly absent and do not report it twice; a secret's value is never repeated.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    given = flags or {}
    for spec in specs:
        source, raw = _source(spec, env, given)
        if raw is None:
            values[spec.attr] = default_of(spec)
            continue
        try:
            values[spec.attr] = spec.parse(raw)
        except Invalid as exc:
            shown = f"{source} (value not shown)" if spec.secret else f"{source}={raw!r}"
            problems.append(f"{shown} is invalid: expected {exc}")
    return values, problems


def default_of(spec: Setting) -> Any:
    """The parsed default (None for a setting unset by default)."""
    return None if spec.default is None else spec.parse(spec.default)


def _source(
    spec: Setting, env: Mapping[str, str], flags: Mapping[str, str]
) -> tuple[str, str | None]:
    if spec.flag and spec.attr in flags:
        return spec.flag, flags[spec.attr]
    for name in spec.env:
        if name in env:
            return name, env[name]
    return spec.attr, None


_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def plain(markdown: str) -> str:
    """A help line's Markdown as a terminal shows it: no backticks, links as their text."""
    return _LINK.sub(r"\1", markdown).replace("`", "")


def markdown_table(specs: Iterable[Setting], *, flags: bool = False) -> str:
    """The README table of ``specs``: variable (and flag), default, meaning."""
    head = "| flag | env | default | meaning |" if flags else "| variable | default | meaning |"
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for spec in specs:
        names = _env_names(spec)
        cells = [f"`{spec.flag}`" if spec.flag else "—"] if flags else []
        cells += [names, _code(spec.default_text), _escape(spec.help)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _env_names(spec: Setting) -> str:
    if not spec.env:
        return "—"
    first, *aliases = (f"`{name}`" for name in reversed(spec.env))
    return first + (f" (alias {', '.join(aliases)}, which wins)" if aliases else "")


def _code(value: str) -> str:
    return value if value in ("unset", "—") or value.startswith("`") else f"`{value}`"


def _escape(value: str) -> str:
    return value.replace("|", "\\|")


# -- parsers every configuration shares ------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_EXPECTED = "a duration such as 10s, 1m30s, 500ms or whole seconds"


def parse_duration(text: str) -> float:
    """A Go duration (``1m30s``, ``500ms``) or bare whole seconds (``30``), in seconds."""
    value = text.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    if value.startswith("-"):
        raise Invalid("a non-negative duration such as 10s, 1m30s, 500ms or whole seconds")
    value = value.removeprefix("+")
    if value == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(value):
        match = _DURATION_PART.match(value, pos)
        if match is None or not match.group(1).isascii():
            raise Invalid(_DURATION_EXPECTED)
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise Invalid(_DURATION_EXPECTED)
    return total


def positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise Invalid("a duration above zero such as 60s or 1m30s")
    return value


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise Invalid("true, false, 1 or 0")


def int_in(
    low: int, high: int | None = None, extra: tuple[int, ...] = (), note: str = ""
) -> Callable[[str], int]:
    """Whole numbers from ``low`` to ``high`` (or up), plus the ``extra`` values."""
    expected = f"a whole number from {low}" + (f" to {high}" if high is not None else " up")
    if extra:
        expected += " or " + ", ".join(map(str, extra))
    expected += note

    def parse(text: str) -> int:
        value = text.strip()
        if not value.removeprefix("-").isascii() or not value.removeprefix("-").isdigit():
            raise Invalid(expected)
        number = int(value)
        if number in extra:
            return number
        if number < low or (high is not None and number > high):
            raise Invalid(expected)
        return number

    return parse


parse_port = int_in(0, 65535)


def _size_units() -> dict[str, int]:
    units = {"": 1, "b": 1}
    for power, prefix in enumerate("kmg", 1):
        for suffix in ("", "b"):  # 64M = 64MB, 64Mi = 64MiB (Kubernetes' spelling)
            units[prefix + suffix] = 1000**power
            units[prefix + "i" + suffix] = 1024**power
    return units


_SIZE_UNITS = _size_units()


def parse_size(text: str) -> int:
    """Bytes: ``1048576``, or with a decimal (``1MB``, ``1M``) or binary (``1MiB``, ``1Mi``)
    unit from k to G, any case."""
    value = text.strip().lower()
    digits = value.rstrip("abgikm")
    unit = value[len(digits) :]
    if not (digits.isascii() and digits.isdigit()) or unit not in _SIZE_UNITS:
        raise Invalid("a size in bytes such as 1048576, 512KiB, 1MiB or 64Mi")
    return int(digits) * _SIZE_UNITS[unit]


def one_of(*choices: str, note: str = "") -> Callable[[str], str]:
    """One of ``choices``, case-insensitive."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise Invalid("one of " + ", ".join(choices) + note)
        return value

    return parse


def text(value: str) -> str:
    return value


def header_value(value: str) -> str:
    """A value that goes into a response header: CR, LF or NUL would break every answer."""
    if any(ch in value for ch in "\r\n\0"):
        raise Invalid("one line without control characters (CR, LF or NUL)")
    return value


# -- the README's tables ---------------------------------------------------------------------


def rewrite_readme(readme: str, tables: Mapping[str, str]) -> str:
    """``readme`` with each ``<!-- settings:NAME -->`` ... ``<!-- /settings:NAME -->`` block
    replaced by ``tables[NAME]``."""
    for name, table in tables.items():
        start, end = f"<!-- settings:{name} -->", f"<!-- /settings:{name} -->"
        before, found, rest = readme.partition(start)
        if not found:
            raise KeyError(f"the README has no {start} block")
        _, found, after = rest.partition(end)
        if not found:
            raise KeyError(f"the README's {start} block has no {end}")
        readme = f"{before}{start}\n{table}\n{end}{after}"
    return readme


def readme_tables() -> dict[str, str]:
    """Every generated README table, by block name."""
    from .config import WatchdogConfig
    from .gateway.config import GatewayConfig

    gateway = declared(GatewayConfig)
    out = {"watchdog": markdown_table(declared(WatchdogConfig))}
    for group in dict.fromkeys(spec.group for spec in gateway):
        chosen = [spec for spec in gateway if spec.group == group]
        out[f"gateway-{group}"] = markdown_table(chosen, flags=True)
    return out


def main(argv: Sequence[str]) -> int:
    """``python -m watchdog.settings README.md``: rewrite the README's settings tables."""
    from pathlib import Path

    for name in argv:
        path = Path(name)
        path.write_text(rewrite_readme(path.read_text(), readme_tables()))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
