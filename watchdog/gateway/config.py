"""Gateway configuration: flags, environment variables and the functions file, parsed once.

Each setting is one row of :data:`FIELDS`: its command-line flag, its environment variable (the
OpenFaaS gateway's name where it has one, e.g. ``upstream_timeout``, ``basic_auth``,
``secret_mount_path``), parser, default and description. A flag wins over the environment.
Like the watchdog's configuration nothing falls back silently: every problem, including those in
the functions file, is collected into one :class:`~watchdog.config.ConfigError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..config import ConfigError, parse_bool, parse_duration, parse_size
from .callbacks import CallbackPolicy, parse_allow
from .queue import BACKENDS
from .registry import DEFAULT_NAMESPACE, Function, is_valid_name
from .retry import RetryPolicy

DEFAULT_SECRET_MOUNT_PATH = "/var/openfaas/secrets"


def _port(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError("a whole number from 0 to 65535") from None
    if not 0 <= value <= 65535:
        raise ValueError("a whole number from 0 to 65535")
    return value


def _positive_duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if value <= 0:
        raise ValueError("a duration above zero such as 60s or 1m30s")
    return value


def _bool(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def _namespace(text: str) -> str:
    value = text.strip()
    if not is_valid_name(value):
        raise ValueError("a Kubernetes name: lowercase letters, digits and dashes, at most 63")
    return value


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise ValueError("text or json")
    return value


def _text(text: str) -> str:
    return text


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError("a whole number from 1 up") from None
    if value < 1:
        raise ValueError("a whole number from 1 up")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError("a whole number from 0 up (0 = no limit)") from None
    if value < 0:
        raise ValueError("a whole number from 0 up (0 = no limit)")
    return value


def _nats_url(text: str) -> str:
    servers = [part.strip() for part in text.split(",") if part.strip()]
    if not servers:
        raise ValueError("nats://HOST:PORT, several separated by commas")
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ValueError(f"nats://HOST:PORT with a valid port (not {server!r})") from None
        if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
            raise ValueError(f"nats://HOST:PORT (not {server!r})")
    return ",".join(server if "://" in server else f"nats://{server}" for server in servers)


def _nats_prefix(text: str) -> str:
    value = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", value):
        raise ValueError("1 to 32 letters, digits, - or _")
    return value


def _openfaas_nats_url(env: Mapping[str, str], problems: list[str]) -> str:
    """``nats://faas_nats_address:faas_nats_port``, the OpenFaaS gateway's variables."""
    host = env.get("faas_nats_address", "").strip()
    port_text = env.get("faas_nats_port", "").strip()
    if not host and not port_text:
        return "nats://127.0.0.1:4222"
    port = 4222
    if port_text:
        try:
            port = _port(port_text)
        except ValueError as exc:
            problems.append(f"faas_nats_port={port_text!r} is invalid: expected {exc}")
    return f"nats://{host or '127.0.0.1'}:{port}"


def _backend(text: str) -> str:
    value = text.strip().lower()
    if value not in BACKENDS:
        raise ValueError("one of " + ", ".join(sorted(BACKENDS)))
    return value


def _allow(text: str) -> tuple[str, ...]:
    return parse_allow(text)


@dataclass(frozen=True, slots=True)
class _Field:
    attr: str
    flag: str
    env: str | None
    parse: Callable[[str], Any]
    default: Any
    doc: str
    takes_value: bool = True  # False: a bare ``--flag`` means true


FIELDS: tuple[_Field, ...] = (
    _Field("port", "--port", "port", _port, 8080, "HTTP port (0 picks a free one)"),
    _Field("config_file", "--config", "gateway_config", _text, "", "functions file (YAML)"),
    _Field(
        "upstream_timeout",
        "--upstream-timeout",
        "upstream_timeout",
        _positive_duration,
        60.0,
        "longest a call may take, to the end of its response (504); per function: timeout",
    ),
    _Field(
        "read_timeout", "--read-timeout", "read_timeout", _positive_duration, 60.0,
        "idle keep-alive limit for client connections",
    ),
    _Field(
        "write_timeout", "--write-timeout", "write_timeout", _positive_duration, 60.0,
        "on SIGTERM, how long in-flight calls may finish",
    ),
    _Field(
        "namespace", "--namespace", "function_namespace", _namespace, DEFAULT_NAMESPACE,
        "namespace of functions registered without one",
    ),
    _Field(
        "basic_auth", "--basic-auth", "basic_auth", _bool, False,
        "require basic auth on /system/*", takes_value=False,
    ),
    _Field(
        "basic_auth_invoke", "--basic-auth-invoke", "basic_auth_invoke", _bool, False,
        "require basic auth on /function/* too", takes_value=False,
    ),
    _Field(
        "secret_mount_path", "--secret-mount-path", "secret_mount_path", _text,
        DEFAULT_SECRET_MOUNT_PATH, "directory holding basic-auth-user and basic-auth-password",
    ),
    _Field("log_format", "--log-format", "log_format", _log_format, "text", "text or json"),
    # -- asynchronous calls --
    _Field(
        "queue_backend", "--queue", "queue_backend", _backend, "sqlite",
        "where asynchronous calls are stored: sqlite (one gateway) or nats (several)",
    ),
    _Field(
        "queue_path", "--queue-path", "queue_path", _text, "",
        "SQLite queue file (default $XDG_STATE_HOME/fwatchdog/queue.db)",
    ),
    _Field(
        "nats_url", "--nats-url", "nats_url", _nats_url, "",
        "NATS servers of the nats queue, comma-separated (default from faas_nats_address"
        " and faas_nats_port, else nats://127.0.0.1:4222)",
    ),
    _Field(
        "nats_prefix", "--nats-prefix", "nats_prefix", _nats_prefix, "fwatchdog",
        "names of the nats queue's streams and buckets start with this",
    ),
    _Field(
        "nats_replicas", "--nats-replicas", "nats_replicas", _positive_int, 1,
        "copies JetStream keeps of the nats queue (3 on a 3-node cluster)",
    ),
    _Field(
        "max_queue_depth", "--max-queue-depth", "max_queue_depth", _non_negative_int, 1_000_000,
        "unfinished asynchronous calls before 429 (0 = no limit)",
    ),
    _Field(
        "max_async_body", "--max-async-body", "max_async_body", parse_size, 1 << 20,
        "largest request body of an asynchronous call (413 beyond)",
    ),
    _Field(
        "max_result_body", "--max-result-body", "max_result_body", parse_size, 1 << 20,
        "response bytes kept in an activation record (the rest is cut, flagged)",
    ),
    _Field(
        "async_concurrency", "--async-concurrency", "async_concurrency", _positive_int, 32,
        "asynchronous calls run at once, all functions together",
    ),
    _Field(
        "async_lease", "--lease", "async_lease", _positive_duration, 30.0,
        "how long a worker holds a call (renewed while it runs); a dead gateway's calls"
        " run again after it",
    ),
    _Field(
        "activation_retention", "--activation-retention", "activation_retention",
        _positive_duration, 72 * 3600.0, "how long records of ended calls are kept",
    ),
    _Field(
        "convert_after", "--convert-after", "convert_after", _duration, 0.0,
        "a /function call running longer answers 202 and goes on async (0 = never)",
    ),
    _Field(
        "max_attempts", "--max-attempts", "max_retry_attempts", _positive_int, 10,
        "attempts of an asynchronous call",
    ),
    _Field(
        "initial_backoff", "--initial-backoff", "initial_retry_wait", _duration, 10.0,
        "wait before the first retry; doubles each time",
    ),
    _Field(
        "max_backoff", "--max-backoff", "max_retry_wait", _duration, 120.0,
        "longest wait between retries",
    ),
    _Field(
        "max_event_age", "--max-event-age", "max_event_age", _positive_duration, 86400.0,
        "a call older than this fails instead of running",
    ),
    _Field(
        "retry_codes", "--retry-codes", "retry_http_codes", _text, "408,429,500,502,503,504",
        "function statuses that are retried",
    ),
    _Field(
        "callback_secret", "--callback-secret", "callback_secret", _text, "",
        "HMAC-SHA256 key for X-Callback-Signature (empty: unsigned)",
    ),
    _Field(
        "callback_allow", "--callback-allow", "callback_allow", _allow, (),
        "only these callback hosts, *.domains or networks (comma-separated)",
    ),
    _Field(
        "callback_deny_private", "--callback-deny-private", "callback_deny_private", _bool,
        False, "refuse loopback and private callback addresses", takes_value=False,
    ),
)  # fmt: skip
_RETRY_FIELDS = ("max_attempts", "initial_backoff", "max_backoff", "max_event_age", "retry_codes")
_BY_FLAG = {spec.flag: spec for spec in FIELDS}
FUNCTION_FLAG = "--function"
_FUNCTION_KEYS = frozenset(
    {
        "url",
        "namespace",
        "timeout",
        "max_concurrency",
        "image",
        "fprocess",
        "labels",
        "annotations",
        "environment",
        "convert_after",
        *_RETRY_FIELDS,
    }
)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The validated gateway configuration. Build it with :meth:`from_args`."""

    port: int = 8080
    config_file: str = ""
    upstream_timeout: float = 60.0
    read_timeout: float = 60.0
    write_timeout: float = 60.0
    namespace: str = DEFAULT_NAMESPACE
    basic_auth: bool = False
    basic_auth_invoke: bool = False
    secret_mount_path: str = DEFAULT_SECRET_MOUNT_PATH
    log_format: str = "text"
    queue_backend: str = "sqlite"
    queue_path: str = ""
    nats_url: str = ""
    nats_prefix: str = "fwatchdog"
    nats_replicas: int = 1
    max_queue_depth: int = 1_000_000
    max_async_body: int = 1 << 20
    max_result_body: int = 1 << 20
    async_concurrency: int = 32
    async_lease: float = 30.0
    activation_retention: float = 72 * 3600.0
    convert_after: float = 0.0
    max_attempts: int = 10
    initial_backoff: float = 10.0
    max_backoff: float = 120.0
    max_event_age: float = 86400.0
    retry_codes: str = "408,429,500,502,503,504"
    callback_secret: str = ""
    callback_allow: tuple[str, ...] = ()
    callback_deny_private: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    callback_policy: CallbackPolicy = field(default_factory=CallbackPolicy)
    credentials: tuple[str, str] | None = None
    functions: tuple[Function, ...] = ()
    environ: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_args(cls, argv: Sequence[str], env: Mapping[str, str]) -> GatewayConfig:
        """Parse the flags in ``argv`` over the variables in ``env``; read the functions file
        and the basic-auth credentials.

        Raises:
            ConfigError: listing every problem found.
        """
        problems: list[str] = []
        raw_flags, function_flags = _split_flags(argv, problems)
        values: dict[str, Any] = {}
        for spec in FIELDS:
            if spec.flag in raw_flags:
                source, raw = spec.flag, raw_flags[spec.flag]
            elif spec.env is not None and spec.env in env:
                source, raw = spec.env, env[spec.env]
            else:
                values[spec.attr] = spec.default
                continue
            try:
                values[spec.attr] = spec.parse(raw)
            except ValueError as exc:
                problems.append(f"{source}={raw!r} is invalid: expected {exc}")
        namespace = values.get("namespace") or DEFAULT_NAMESPACE
        retry = _retry_policy(values, problems)
        callback_policy = _callback_policy(values, problems)
        if not values.get("queue_path"):
            values["queue_path"] = str(default_queue_path(env))
        if not values.get("nats_url"):
            values["nats_url"] = _openfaas_nats_url(env, problems)
        functions: dict[tuple[str, str], Function] = {}
        if values.get("config_file"):
            loaded_functions = _load_functions_file(
                values["config_file"], namespace, retry, problems
            )
            for loaded in loaded_functions:
                functions[(loaded.name, loaded.namespace)] = loaded
        for raw in function_flags:
            flagged = _parse_function_flag(raw, namespace, problems)
            if flagged is None:
                continue
            if (flagged.name, flagged.namespace) in functions:
                problems.append(
                    f"{FUNCTION_FLAG} {raw!r} is invalid: function {flagged.key} is already "
                    "defined (in the functions file or an earlier flag)"
                )
                continue
            functions[(flagged.name, flagged.namespace)] = flagged
        credentials = None
        if values.get("basic_auth") or values.get("basic_auth_invoke"):
            credentials = _load_credentials(env, values["secret_mount_path"], problems)
        if problems:
            raise ConfigError(problems)
        return cls(
            **values,
            retry=retry,
            callback_policy=callback_policy,
            credentials=credentials,
            functions=tuple(functions.values()),
            environ=MappingProxyType(dict(env)),
        )

    def summary(self) -> str:
        """The effective settings, for the start-up log line (never the password)."""
        hidden = {"callback_secret"}
        parts = [
            f"{spec.attr}={getattr(self, spec.attr)!r}"
            for spec in FIELDS
            if spec.attr not in hidden
        ]
        parts.append(f"callback_secret={'set' if self.callback_secret else 'unset'}")
        parts.append(f"functions={len(self.functions)}")
        return " ".join(parts)


def usage() -> str:
    """The ``fwatchdog gateway --help`` text, generated from :data:`FIELDS`."""
    lines = [
        "usage: fwatchdog gateway [flags]",
        "",
        f"  {FUNCTION_FLAG} NAME[.NAMESPACE]=URL   register a function (repeatable)",
    ]
    for spec in FIELDS:
        flag = spec.flag if not spec.takes_value else f"{spec.flag} VALUE"
        env = f" [env {spec.env}]" if spec.env else ""
        default = "" if spec.default in ("", False) else f" (default {spec.default!r})"
        lines.append(f"  {flag:<32} {spec.doc}{default}{env}")
    lines += [
        "",
        "Basic-auth credentials: basic_auth_user and basic_auth_password from the environment,",
        "else the files basic-auth-user and basic-auth-password in secret_mount_path.",
    ]
    return "\n".join(lines)


def _split_flags(argv: Sequence[str], problems: list[str]) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    functions: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        name, eq, value = arg.partition("=")
        if name == FUNCTION_FLAG:
            if not eq:
                if i >= len(args):
                    problems.append(f"{FUNCTION_FLAG} needs a value: NAME=URL")
                    break
                value = args[i]
                i += 1
            functions.append(value)
            continue
        spec = _BY_FLAG.get(name)
        if spec is None:
            problems.append(f"unknown argument {arg!r} (see fwatchdog gateway --help)")
            continue
        if not eq:
            if not spec.takes_value:
                value = "true"
            elif i >= len(args):
                problems.append(f"{name} needs a value")
                continue
            else:
                value = args[i]
                i += 1
        flags[name] = value
    return flags, functions


def _parse_url(text: str) -> str:
    value = text.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// URL such as http://127.0.0.1:8081")
    if parts.query or parts.fragment:
        raise ValueError("a URL without a query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError("an http:// URL with a valid port") from None
    return value.rstrip("/")


def _parse_function_flag(raw: str, namespace: str, problems: list[str]) -> Function | None:
    ref, eq, url = raw.partition("=")
    name, dot, ns = ref.partition(".")
    where = f"{FUNCTION_FLAG} {raw!r}"
    ok = True
    if not eq:
        problems.append(f"{where} is invalid: expected NAME=URL")
        return None
    if not is_valid_name(name) or (dot and not is_valid_name(ns)):
        problems.append(
            f"{where} is invalid: expected NAME or NAME.NAMESPACE made of lowercase letters, "
            "digits and dashes (at most 63)"
        )
        ok = False
    try:
        url = _parse_url(url)
    except ValueError as exc:
        problems.append(f"{where} is invalid: expected {exc}")
        ok = False
    if not ok:
        return None
    return Function(name=name, namespace=ns if dot else namespace, url=url)


def default_queue_path(env: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/fwatchdog/queue.db``, else ``~/.local/state/fwatchdog/queue.db``."""
    state = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "/tmp")) / ".local" / "state")
    return Path(state) / "fwatchdog" / "queue.db"


def _retry_policy(values: Mapping[str, Any], problems: list[str]) -> RetryPolicy:
    """The gateway's default retry policy from its flags (each already parsed alone)."""
    try:
        return RetryPolicy.from_mapping(
            {key: values[key] for key in _RETRY_FIELDS if key in values}
        )
    except ConfigError as exc:
        problems.extend(exc.problems)
        return RetryPolicy()


def _callback_policy(values: Mapping[str, Any], problems: list[str]) -> CallbackPolicy:
    try:
        return CallbackPolicy(
            allow=values.get("callback_allow", ()),
            deny_private=values.get("callback_deny_private", False),
        )
    except ConfigError as exc:
        problems.extend(exc.problems)
        return CallbackPolicy()


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key defined twice in one mapping (PyYAML keeps the last,
    which would let a second ``echo:`` silently replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is defined twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_functions_file(
    path: str, namespace: str, retry: RetryPolicy, problems: list[str]
) -> list[Function]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        problems.append(f"functions file {path}: cannot read it: {exc.strerror or exc}")
        return []
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        problems.append(f"functions file {path}: not valid YAML: {exc}")
        return []
    if document is None:
        return []
    if not isinstance(document, dict) or set(document) - {"functions"}:
        problems.append(f"functions file {path}: expected a mapping with one key, functions")
        return []
    entries = document.get("functions") or {}
    if not isinstance(entries, dict):
        problems.append(f"functions file {path}: functions: expected a mapping of name to settings")
        return []
    out: list[Function] = []
    for name, settings in entries.items():
        where = f"{path}: functions.{name}"
        function = _function_from_yaml(where, name, settings, namespace, retry)
        if isinstance(function, Function):
            out.append(function)
        else:
            problems.extend(function)
    return out


def _function_from_yaml(
    where: str, name: object, settings: object, default_namespace: str, retry: RetryPolicy
) -> Function | list[str]:
    problems: list[str] = []
    if not isinstance(name, str) or not is_valid_name(name):
        problems.append(
            f"{where}: invalid name: expected lowercase letters, digits and dashes (at most 63)"
        )
    if not isinstance(settings, dict):
        return problems + [f"{where}: expected a mapping with at least url"]
    unknown = sorted(str(key) for key in settings if key not in _FUNCTION_KEYS)
    if unknown:
        known = ", ".join(sorted(_FUNCTION_KEYS))
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; known: {known}")
    values: dict[str, Any] = {}

    def parse(key: str, parser: Callable[[str], Any], required: bool = False) -> None:
        if key not in settings or settings[key] is None:
            if required:
                problems.append(f"{where}.{key}: required")
            return
        raw = settings[key]
        if isinstance(raw, bool | dict | list):
            problems.append(f"{where}.{key}={raw!r} is invalid: expected a single value")
            return
        try:
            values[key] = parser(str(raw))
        except ValueError as exc:
            problems.append(f"{where}.{key}={raw!r} is invalid: expected {exc}")

    parse("url", _parse_url, required=True)
    parse("namespace", _namespace)
    parse("timeout", _positive_duration)
    parse("max_concurrency", _non_negative_int)
    parse("image", _text)
    parse("fprocess", _text)
    parse("convert_after", _duration)
    overrides = {key: settings[key] for key in _RETRY_FIELDS if settings.get(key) is not None}
    if overrides:
        try:
            values["retry"] = RetryPolicy.from_mapping(overrides, base=retry, where=where)
        except ConfigError as exc:
            problems.extend(exc.problems)
    for key in ("labels", "annotations", "environment"):
        raw = settings.get(key)
        if raw is None:
            continue
        if not isinstance(raw, dict):
            problems.append(f"{where}.{key}: expected a mapping of names to values")
            continue
        mapping = {str(k): "" if v is None else str(v) for k, v in raw.items()}
        values[key] = MappingProxyType(mapping)
    if problems:
        return problems
    values.setdefault("namespace", default_namespace)
    return Function(name=str(name), **values)


def _load_credentials(
    env: Mapping[str, str], secret_mount_path: str, problems: list[str]
) -> tuple[str, str] | None:
    user, password = env.get("basic_auth_user"), env.get("basic_auth_password")
    if user is not None or password is not None:
        if not user or not password:
            problems.append(
                "basic_auth_user and basic_auth_password must both be set and non-empty"
            )
            return None
        return user, password
    found: list[str] = []
    for filename in ("basic-auth-user", "basic-auth-password"):
        path = Path(secret_mount_path) / filename
        try:
            found.append(path.read_text().strip())
        except OSError as exc:
            problems.append(
                f"basic_auth is on but {path} cannot be read ({exc.strerror or exc}): set "
                "basic_auth_user and basic_auth_password, or secret_mount_path"
            )
            return None
        if not found[-1]:
            problems.append(f"basic_auth is on but {path} is empty")
            return None
    return found[0], found[1]
