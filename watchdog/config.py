"""Watchdog configuration: every environment variable is declared, parsed and validated here,
once (see :mod:`.settings`).

The names and formats are the OpenFaaS watchdogs' (``fprocess``, ``exec_timeout=10s`` ...), so an
existing Dockerfile keeps working. Unlike the anchors nothing falls back silently: every malformed
value is collected into one :class:`ConfigError` that names the variable, the value and what is
expected.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from .pycommand import NotPython, parse_python_command
from .settings import (
    ConfigError,
    Invalid,
    declared,
    header_value,
    int_in,
    one_of,
    parse_bool,
    parse_duration,
    parse_port,
    parse_size,
    resolve,
    setting,
    text,
)

__all__ = ["ConfigError", "WatchdogConfig", "parse_bool", "parse_duration"]

Mode = Literal["auto", "serializing", "streaming", "http", "static"]
LogFormat = Literal["text", "json"]

FORK_MODES: frozenset[str] = frozenset({"auto", "serializing", "streaming"})
MODES: tuple[str, ...] = ("auto", "serializing", "streaming", "http", "static")


def _parse_mode(text: str) -> str:
    value = text.strip().lower()
    if value == "":
        return "auto"
    if value not in MODES:
        raise Invalid("one of " + ", ".join(MODES) + " (or unset for the adaptive default)")
    return value


def _parse_command(text: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise Invalid(f"a command line with balanced quotes ({exc})") from None
    if argv and not argv[0]:
        raise Invalid("a command line whose first word names a program")
    return argv


def _parse_url(text: str) -> str:
    value = text.strip()
    if value == "":
        return ""
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname:
        # Not https: the upstream runs beside the watchdog, which speaks plain HTTP to it.
        raise Invalid("an http:// URL such as http://127.0.0.1:5000")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise Invalid("an http:// URL with a valid port") from None
    return value.rstrip("/")


def _parse_path(text: str) -> str:
    value = text.strip()
    if value and not value.startswith("/"):
        raise Invalid("a URL path starting with /")
    return value


def _parse_modules(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise Invalid(f"comma-separated module names such as numpy,pandas (not {name!r})")
    return names


def _at_least_one_byte(value: str) -> int:
    size = parse_size(value)
    if size < 1:
        raise Invalid("a size of at least 1 byte, such as 1048576, 64MiB or 64Mi")
    return size


_duration = parse_duration
_bool = parse_bool
_HTTP = "http mode: "


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchdogConfig:
    """The validated watchdog configuration. Build it with :meth:`from_env`.

    Each ``setting(...)`` field is the one declaration of an environment variable: its names
    (the first present wins), parser, default as a user writes it, and the README's line."""

    lock_path: Path = Path("/tmp/.lock")
    environ: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    fprocess: tuple[str, ...] = setting(
        "function_process fprocess",
        _parse_command,
        "",
        "the handler's command line; required except in `static` mode",
        shown="—",
    )
    mode: Mode = setting(
        "mode", _parse_mode, "auto", "`auto`, `serializing`, `streaming`, `http`, `static`"
    )
    port: int = setting("port", parse_port, "8080", "HTTP port")
    metrics_port: int = setting(
        "metrics_port",
        parse_port,
        "8081",
        "Prometheus `/metrics` port (configurable, unlike the anchors)",
    )
    read_timeout: float = setting(
        "read_timeout",
        _duration,
        "30s",
        "time to receive the headers (also the idle keep-alive limit) and the body: `408`",
    )
    write_timeout: float = setting(
        "write_timeout",
        _duration,
        "30s",
        "longest a client may stall reading the response: "
        "each write of a streamed answer, and the whole of an answer sent in one piece "
        "(buffered fork output, error answers, small proxied bodies, static files); the "
        "request keeps its `max_inflight` slot until it is written, and a client that stalls "
        "is cut off. Also the drain limit on shutdown",
    )
    exec_timeout: float = setting(
        "exec_timeout",
        _duration,
        "30s",
        "hard limit per request; `0` disables. The handler's whole tree is killed: `504`",
    )
    healthcheck_interval: float = setting(
        "healthcheck_interval",
        _duration,
        None,
        "longest wait after SIGTERM before refusing connections; `0` = none",
        shown="`write_timeout`",
    )
    max_inflight: int = setting(
        "max_inflight",
        int_in(0),
        "0",
        "concurrent requests, `0` = no cap; beyond it `429` at once",
    )
    content_type: str = setting(
        "content_type",
        header_value,
        "",
        "response Content-Type in the fork modes; unset "
        "echoes the request's (as the classic watchdog) or `application/octet-stream`",
    )
    combine_output: bool = setting(
        "combine_output",
        _bool,
        "false",
        "stderr into the response (classic defaulted to `true`, leaking stderr to callers)",
    )
    write_debug: bool = setting(
        "write_debug", _bool, "false", "log response bodies; include stderr in `500` bodies"
    )
    cgi_headers: bool = setting("cgi_headers", _bool, "true", "pass `Http_*` variables")
    cgi_response: bool = setting(
        "cgi_response", _bool, "false", "parse a CGI header block at the start of stdout"
    )
    prefix_logs: bool = setting(
        "prefix_logs", _bool, "true", "prefix handler lines with time and stream name"
    )
    log_buffer_size: int = setting(
        "log_buffer_size",
        int_in(1, None, (-1,)),
        "65536",
        "longest handler log line before it is cut; `-1` = never cut",
    )
    log_format: LogFormat = setting(
        "log_format",
        one_of("text", "json"),
        "text",
        'the watchdog\'s own lines: `text` or `json` (handler lines too, as `{"stream":...}`)',
    )
    suppress_lock: bool = setting(
        "suppress_lock",
        _bool,
        "false",
        "do not write `$TMPDIR/.lock` (health endpoints keep working)",
    )
    kill_grace: float = setting(
        "kill_grace",
        _duration,
        "1s",
        "SIGTERM to SIGKILL grace for handler trees and the http-mode upstream",
    )
    upstream_url: str = setting(
        "http_upstream_url upstream_url",
        _parse_url,
        "",
        _HTTP + "where the upstream listens, an http:// URL; required there",
        shown="—",
    )
    ready_path: str = setting(
        "ready_path",
        _parse_path,
        "",
        _HTTP + "a path that must answer 2xx before the watchdog is ready",
    )
    buffer_http: bool = setting(
        "http_buffer_req_body buffer_http",
        _bool,
        "false",
        _HTTP + "send request bodies with a Content-Length",
    )
    # 128 MiB: twice the 64 MiB upload that must pass, and what one request may pin in memory
    # (max_inflight bounds the total); the Go watchdogs impose no limit at all.
    max_body_size: int = setting(
        "max_body_size",
        _at_least_one_byte,
        "128MiB",
        "largest request body read whole into memory (`serializing`, `buffer_http`); a longer "
        "one gets `413 Request body larger than max_body_size (N bytes)`, at once when its "
        "Content-Length says so. Streamed bodies (`auto`, `streaming`, http mode without "
        "`buffer_http`) are not bounded, as in the Go watchdogs. The default passes a 64 MiB "
        "upload with room and bounds what one request pins (`max_inflight` bounds the total)",
    )
    upstream_restart: bool = setting(
        "upstream_restart",
        _bool,
        "true",
        _HTTP + "restart an exited upstream; `false` exits with its status",
    )
    upstream_hung_after: int = setting(
        "upstream_hung_after",
        int_in(0),
        "3",
        _HTTP + "consecutive timeouts that mark the upstream hung; `0` = never",
    )
    upstream_start_timeout: float = setting(
        "upstream_start_timeout",
        _duration,
        "30s",
        _HTTP + "longest wait for the upstream at start",
    )
    static_path: str = setting(
        "static_path", text, "/home/app/public", "static mode: the directory served"
    )
    prefork: bool = setting(
        "prefork",
        _bool,
        "false",
        "fork modes: fork each Python handler from a warm zygote "
        "(see [prefork](#prefork-python-handlers-forked-from-a-warm-interpreter)); "
        "`fprocess` must be `python… SCRIPT [ARGS]` or `python… -m MODULE [ARGS]`",
    )
    prefork_preload: tuple[str, ...] = setting(
        "prefork_preload",
        _parse_modules,
        "",
        "prefork: comma-separated modules the zygote "
        "imports besides the handler's own top-level imports",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WatchdogConfig:
        """Parse and validate ``env``; raise :class:`ConfigError` listing every problem."""
        values, problems = resolve(declared(cls), env)
        if values.get("healthcheck_interval", 0.0) is None:
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
