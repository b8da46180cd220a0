"""Watchdog configuration: every environment variable is parsed and validated here, once.

The names and formats are the OpenFaaS watchdogs' (``fprocess``, ``exec_timeout=10s`` ...), so an
existing Dockerfile keeps working. Unlike the anchors nothing falls back silently: every malformed
value is collected into one :class:`ConfigError` that names the variable, the value and what is
expected.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from .pycommand import NotPython, parse_python_command

Mode = Literal["auto", "serializing", "streaming", "http", "static"]
LogFormat = Literal["text", "json"]

# The largest request body the watchdog reads into memory (serializing, buffer_http): twice the
# 64 MiB upload that must pass, while a handful of such requests still fit a small container.
MAX_BODY_SIZE = 128 * 1024**2
FORK_MODES: frozenset[str] = frozenset({"auto", "serializing", "streaming"})
MODES: tuple[str, ...] = ("auto", "serializing", "streaming", "http", "static")


class ConfigError(Exception):
    """One or more configuration values are invalid; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Invalid(ValueError):
    """Raised by a value parser; the message says what is expected."""


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


def parse_duration(text: str) -> float:
    """Parse a Go duration (``1m30s``, ``500ms``) or bare whole seconds (``30``) into seconds."""
    value = text.strip()
    if value.isdigit():
        return float(value)
    if value.startswith("-"):
        raise _Invalid("a non-negative duration such as 10s, 1m30s, 500ms or whole seconds")
    value = value.removeprefix("+")
    if value == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(value):
        match = _DURATION_PART.match(value, pos)
        if match is None:
            raise _Invalid("a duration such as 10s, 1m30s, 500ms or whole seconds")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise _Invalid("a duration such as 10s, 1m30s, 500ms or whole seconds")
    return total


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise _Invalid("true, false, 1 or 0")


def _size_units() -> dict[str, int]:
    units = {"": 1, "b": 1}
    for power, prefix in enumerate("kmg", 1):
        for suffix in ("", "b"):  # 64M = 64MB, 64Mi = 64MiB: the final B is optional
            units[prefix + suffix] = 1000**power
            units[prefix + "i" + suffix] = 1024**power
    return units


_SIZE_UNITS = _size_units()
_SIZE = re.compile(r"([0-9]+) ?([a-z]*)")  # ASCII digits only


def parse_size(text: str) -> int:
    """Bytes: ``1048576``, or with a unit, decimal (``64MB``, ``64M``) or binary (``64MiB``,
    ``64Mi``), from k to G, any case."""
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise _Invalid("a size in bytes such as 1048576, 512KiB, 64Mi or 1GB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def _size_from(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        size = parse_size(text)
        if size < low:
            raise _Invalid(f"a size of at least {low} bytes, such as 1048576 or 64Mi")
        return size

    return parse


def _int_in(low: int, high: int | None, extra: tuple[int, ...] = ()) -> Callable[[str], int]:
    def parse(text: str) -> int:
        expected = f"a whole number from {low}" + (f" to {high}" if high is not None else " up")
        if extra:
            expected += " or " + ", ".join(map(str, extra))
        try:
            number = int(text.strip())
        except ValueError:
            raise _Invalid(expected) from None
        if number in extra:
            return number
        if number < low or (high is not None and number > high):
            raise _Invalid(expected)
        return number

    return parse


def _parse_mode(text: str) -> str:
    value = text.strip().lower()
    if value == "":
        return "auto"
    if value not in MODES:
        raise _Invalid("one of " + ", ".join(MODES) + " (or unset for the adaptive default)")
    return value


def _parse_log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise _Invalid("text or json")
    return value


def _parse_command(text: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise _Invalid(f"a command line with balanced quotes ({exc})") from None
    if argv and not argv[0]:
        raise _Invalid("a command line whose first word names a program")
    return argv


def _parse_url(text: str) -> str:
    value = text.strip()
    if value == "":
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid("an http:// URL such as http://127.0.0.1:5000")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise _Invalid("an http:// URL with a valid port") from None
    return value.rstrip("/")


def _parse_path(text: str) -> str:
    value = text.strip()
    if value and not value.startswith("/"):
        raise _Invalid("a URL path starting with /")
    return value


def _parse_modules(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise _Invalid(f"comma-separated module names such as numpy,pandas (not {name!r})")
    return names


def _identity(text: str) -> str:
    return text


def _header_value(text: str) -> str:
    """A value that goes into a response header: CR, LF or NUL would break every answer."""
    if any(ch in text for ch in "\r\n\0"):
        raise _Invalid("expected one line without control characters (CR, LF or NUL)")
    return text


@dataclass(frozen=True, slots=True)
class _Field:
    """One configuration variable: its names (first wins on conflict), parser, default, doc."""

    attr: str
    names: tuple[str, ...]
    parse: Callable[[str], Any]
    default: Any
    doc: str


def _f(attr: str, names: str, parse: Callable[[str], Any], default: Any, doc: str) -> _Field:
    return _Field(attr, tuple(names.split()), parse, default, doc)


_duration = parse_duration
FIELDS: tuple[_Field, ...] = (
    _f("fprocess", "function_process fprocess", _parse_command, (), "handler command line"),
    _f("mode", "mode", _parse_mode, "auto", "auto, serializing, streaming, http or static"),
    _f("port", "port", _int_in(0, 65535), 8080, "HTTP port"),
    _f("metrics_port", "metrics_port", _int_in(0, 65535), 8081, "Prometheus metrics port"),
    _f("read_timeout", "read_timeout", _duration, 30.0, "limit to receive headers and body"),
    _f("write_timeout", "write_timeout", _duration, 30.0, "limit on a stalled response write"),
    _f("exec_timeout", "exec_timeout", _duration, 30.0, "hard limit per request, 0 = none"),
    _f("healthcheck_interval", "healthcheck_interval", _duration, None, "drain notice period"),
    _f("max_inflight", "max_inflight", _int_in(0, None), 0, "concurrent requests, 0 = no cap"),
    _f("content_type", "content_type", _header_value, "", "response Content-Type in fork modes"),
    _f("combine_output", "combine_output", parse_bool, False, "stderr into the response"),
    _f("prefix_logs", "prefix_logs", parse_bool, True, "prefix function log lines"),
    _f("log_buffer_size", "log_buffer_size", _int_in(1, None, (-1,)), 65536, "max log line"),
    _f("suppress_lock", "suppress_lock", parse_bool, False, "do not write the lock file"),
    _f("cgi_headers", "cgi_headers", parse_bool, True, "pass Http_* variables"),
    _f("cgi_response", "cgi_response", parse_bool, False, "parse a CGI header block"),
    _f("write_debug", "write_debug", parse_bool, False, "log bodies, stderr in 500s"),
    _f("upstream_url", "http_upstream_url upstream_url", _parse_url, "", "http mode upstream"),
    _f("ready_path", "ready_path", _parse_path, "", "upstream readiness path"),
    _f("buffer_http", "http_buffer_req_body buffer_http", parse_bool, False, "buffer bodies"),
    _f("max_body_size", "max_body_size", _size_from(1), MAX_BODY_SIZE, "largest body held whole"),
    _f("static_path", "static_path", _identity, "/home/app/public", "static mode root"),
    _f("log_format", "log_format", _parse_log_format, "text", "watchdog log lines: text/json"),
    _f("kill_grace", "kill_grace", _duration, 1.0, "SIGTERM to SIGKILL grace for handlers"),
    _f("upstream_restart", "upstream_restart", parse_bool, True, "restart an exited upstream"),
    _f("upstream_hung_after", "upstream_hung_after", _int_in(0, None), 3, "timeouts = hung"),
    _f("upstream_start_timeout", "upstream_start_timeout", _duration, 30.0, "wait for upstream"),
    _f("prefork", "prefork", parse_bool, False, "fork Python handlers from a warm zygote"),
    _f("prefork_preload", "prefork_preload", _parse_modules, (), "modules the zygote imports"),
)


@dataclass(frozen=True, slots=True)
class WatchdogConfig:
    """The validated watchdog configuration. Build it with :meth:`from_env`."""

    fprocess: tuple[str, ...] = ()
    mode: Mode = "auto"
    port: int = 8080
    metrics_port: int = 8081
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    exec_timeout: float = 30.0
    healthcheck_interval: float = 30.0
    max_inflight: int = 0
    content_type: str = ""
    combine_output: bool = False
    prefix_logs: bool = True
    log_buffer_size: int = 65536
    suppress_lock: bool = False
    cgi_headers: bool = True
    cgi_response: bool = False
    write_debug: bool = False
    upstream_url: str = ""
    ready_path: str = ""
    buffer_http: bool = False
    max_body_size: int = MAX_BODY_SIZE
    static_path: str = "/home/app/public"
    log_format: LogFormat = "text"
    kill_grace: float = 1.0
    upstream_restart: bool = True
    upstream_hung_after: int = 3
    upstream_start_timeout: float = 30.0
    prefork: bool = False
    prefork_preload: tuple[str, ...] = ()
    lock_path: Path = Path("/tmp/.lock")
    environ: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WatchdogConfig:
        """Parse and validate ``env``; raise :class:`ConfigError` listing every problem."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for spec in FIELDS:
            name, raw = _lookup(env, spec.names)
            if raw is None:
                values[spec.attr] = spec.default
                continue
            try:
                values[spec.attr] = spec.parse(raw)
            except _Invalid as exc:
                problems.append(f"{name}={raw!r} is invalid: expected {exc}")
        if values.get("healthcheck_interval") is None:
            values["healthcheck_interval"] = values.get("write_timeout", 30.0)
        problems += _cross_checks(values, env)
        if problems:
            raise ConfigError(problems)
        tmpdir = env.get("TMPDIR") or "/tmp"
        return cls(
            **values,
            lock_path=Path(tmpdir) / ".lock",
            environ=MappingProxyType(dict(env)),
        )

    def summary(self) -> dict[str, object]:
        """The effective configuration, for the one start-up log line."""
        skip = {"environ"}
        out: dict[str, object] = {}
        for spec in fields(self):
            if spec.name in skip:
                continue
            value = getattr(self, spec.name)
            out[spec.name] = " ".join(value) if isinstance(value, tuple) else str(value)
        return out


def _lookup(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str | None]:
    for name in names:
        if name in env:
            return name, env[name]
    return names[-1], None


def _cross_checks(values: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    mode = values.get("mode", "auto")
    # A value that failed to parse is reported already, so only a truly absent one counts here.
    if mode != "static" and values.get("fprocess") == ():
        problems.append(
            f"fprocess is required in mode {mode}: set fprocess (or function_process) "
            'to the handler\'s command line, e.g. fprocess="python3 index.py"'
        )
    if mode == "http" and values.get("upstream_url") == "":
        problems.append(
            "upstream_url is required in mode http: set it to the address the "
            "upstream listens on, e.g. upstream_url=http://127.0.0.1:5000"
        )
    problems += _prefork_checks(values)
    port, metrics_port = values.get("port"), values.get("metrics_port")
    if isinstance(port, int) and port != 0 and port == metrics_port:
        problems.append(f"metrics_port={metrics_port} is invalid: expected a port other than port")
    return problems


def _prefork_checks(values: Mapping[str, Any]) -> list[str]:
    if values.get("prefork") is not True:
        return []
    mode = values.get("mode", "auto")
    if mode not in FORK_MODES:
        return [
            f"prefork=true is invalid in mode {mode}: expected a fork mode (auto, "
            "serializing or streaming)"
        ]
    fprocess = values.get("fprocess")
    if not fprocess:
        return []
    try:
        parse_python_command(fprocess)
    except NotPython as exc:
        return [
            f"prefork=true needs fprocess to be a Python command line: "
            f"fprocess={' '.join(fprocess)!r} is invalid: expected {exc}"
        ]
    return []
