"""Gateway configuration: flags, environment variables and the functions file, parsed once.

Each setting is one field of :class:`GatewayConfig` declared with
:func:`~watchdog.settings.setting`: its command-line flag, its environment variable (the OpenFaaS
gateway's name where it has one, e.g. ``upstream_timeout``, ``basic_auth``,
``secret_mount_path``), parser, default and help. A flag wins over the environment.
Like the watchdog's configuration nothing falls back silently: every problem, including those in
the functions file, is collected into one :class:`~watchdog.config.ConfigError`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..flags import CommandParser, UsageError, add_flags
from ..settings import (
    ConfigError,
    Invalid,
    Setting,
    declared,
    default_of,
    int_in,
    one_of,
    parse_bool,
    parse_duration,
    parse_port,
    parse_size,
    positive_duration,
    resolve,
    setting,
    text,
)
from .callbacks import CallbackPolicy, parse_allow
from .queue import BACKENDS
from .registry import DEFAULT_NAMESPACE, Function, is_valid_name
from .retry import RetryPolicy, parse_codes

DEFAULT_SECRET_MOUNT_PATH = "/var/openfaas/secrets"


def _namespace(text: str) -> str:
    value = text.strip()
    if not is_valid_name(value):
        raise Invalid("a Kubernetes name: lowercase letters, digits and dashes, at most 63")
    return value


_positive_int = int_in(1)
_non_negative_int = int_in(0, note=" (0 = no limit)")


def _nats_url(text: str) -> str:
    servers = [part.strip() for part in text.split(",") if part.strip()]
    if not servers:
        raise Invalid("nats://HOST:PORT, several separated by commas")
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise Invalid(f"nats://HOST:PORT with a valid port (not {server!r})") from None
        if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
            raise Invalid(f"nats://HOST:PORT (not {server!r})")
    return ",".join(server if "://" in server else f"nats://{server}" for server in servers)


def _nats_prefix(text: str) -> str:
    value = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", value):
        raise Invalid("1 to 32 letters, digits, - or _")
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
            port = parse_port(port_text)
        except ValueError as exc:
            problems.append(f"faas_nats_port={port_text!r} is invalid: expected {exc}")
    return f"nats://{host or '127.0.0.1'}:{port}"


def _allow(text: str) -> tuple[str, ...]:
    return parse_allow(text)


_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750's b64token
_TOKENS_EXPECTED = "bearer tokens (letters, digits, - . _ ~ + /, then = padding)"


def _bearer_tokens(text: str) -> tuple[str, ...]:
    tokens = tuple(part.strip() for part in text.split(",") if part.strip())
    if any(_TOKEN.fullmatch(token) is None for token in tokens):
        raise Invalid(f"{_TOKENS_EXPECTED} separated by commas")
    return tokens


_FC_SERVICE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,127}")


def _fc_service(text: str) -> str:
    value = text.strip()
    if not _FC_SERVICE.fullmatch(value):
        raise Invalid("an FC service name: letters, digits, _ and -, starting with a letter or _")
    return value


def _fc_access_keys(text: str) -> tuple[tuple[str, str], ...]:
    """``ID:SECRET`` pairs separated by commas or newlines."""
    pairs: list[tuple[str, str]] = []
    for item in re.split(r"[,\n]", text):
        if not item.strip():
            continue
        key_id, sep, secret = item.strip().partition(":")
        if not sep or not key_id.strip() or not secret.strip():
            raise Invalid("ID:SECRET pairs separated by commas, neither part empty")
        pairs.append((key_id.strip(), secret.strip()))
    return tuple(pairs)


def _secret_file_text(name: str, path: str, problems: list[str]) -> str | None:
    """The text of the file a secret-file setting names (None when unset or unreadable, the
    reason added to ``problems``); callers report its contents' problems without showing them."""
    if not path:
        return None
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{name}={path!r} cannot be read: {exc}")
        return None


def _load_fc_keys(values: Mapping[str, Any], problems: list[str]) -> Mapping[str, str]:
    """``fc_access_keys`` plus the pairs of ``fc_access_keys_file`` (one a line)."""
    keys: dict[str, str] = {}
    try:
        keys.update(_fc_access_keys(values["fc_access_keys"]))
    except Invalid as exc:
        problems.append(f"fc_access_keys is invalid (value not shown): expected {exc}")
    path = values["fc_access_keys_file"]
    text = _secret_file_text("fc_access_keys_file", path, problems)
    if text is not None:
        try:
            keys.update(_fc_access_keys(text))
        except Invalid as exc:
            problems.append(f"fc_access_keys_file={path!r} is invalid: expected {exc}")
    return MappingProxyType(keys)


def _load_tokens(path: str, problems: list[str]) -> tuple[str, ...]:
    """The tokens of ``altair_tokens_file``, one a line (blank lines and ``#`` comments
    skipped)."""
    text = _secret_file_text("altair_tokens_file", path, problems)
    if text is None:
        return ()
    lines = text.splitlines()
    tokens = tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    if not tokens or any(_TOKEN.fullmatch(token) is None for token in tokens):
        problems.append(
            f"altair_tokens_file={path!r} is invalid: expected {_TOKENS_EXPECTED}, one a line"
        )
        return ()
    return tokens


def _api_keys(text: str) -> tuple[str, ...]:
    """OpenWhisk's ``UUID:KEY`` API keys, comma-separated."""
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    for key in keys:
        user, colon, secret = key.partition(":")
        if not (colon and user and secret) or any(ch.isspace() for ch in key):
            raise Invalid("API keys such as UUID:KEY, separated by commas")
    return keys


_RETRY_FIELDS = ("max_attempts", "initial_backoff", "max_backoff", "max_event_age", "retry_codes")
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


_G, _N, _A, _D = "gateway", "nats", "async", "doors"


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """The validated gateway configuration. Build it with :meth:`from_args`.

    Each ``setting(...)`` field is the one declaration of a setting: flag, environment
    variable (the OpenFaaS gateway's name where it has one), parser, default as a user writes
    it, the README's line, and the README table it belongs to."""

    retry: RetryPolicy
    callback_policy: CallbackPolicy = field(default_factory=CallbackPolicy)
    credentials: tuple[str, str] | None = None
    altair_file_tokens: tuple[str, ...] = ()
    """The tokens read from ``altair_tokens_file``."""
    fc_keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Function Compute access keys (id to secret): ``fc_access_keys`` plus the file's."""
    functions: tuple[Function, ...] = ()
    environ: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    port: int = setting(
        "port",
        parse_port,
        "8080",
        "HTTP port (`/metrics` is served on it too)",
        flag="--port",
        group=_G,
    )
    config_file: str = setting(
        "gateway_config",
        text,
        "",
        "functions file (YAML, above)",
        flag="--config",
        group=_G,
        shown="—",
    )
    upstream_timeout: float = setting(
        "upstream_timeout",
        positive_duration,
        "60s",
        "longest a call may take, to the end of its response: `504`; per function: `timeout`",
        flag="--upstream-timeout",
        group=_G,
    )
    read_timeout: float = setting(
        "read_timeout",
        positive_duration,
        "60s",
        "idle keep-alive limit for client connections",
        flag="--read-timeout",
        group=_G,
    )
    write_timeout: float = setting(
        "write_timeout",
        positive_duration,
        "60s",
        "on SIGTERM, how long calls in flight may finish",
        flag="--write-timeout",
        group=_G,
    )
    namespace: str = setting(
        "function_namespace",
        _namespace,
        DEFAULT_NAMESPACE,
        "namespace of functions registered without one",
        flag="--namespace",
        group=_G,
    )
    basic_auth: bool = setting(
        "basic_auth",
        parse_bool,
        "false",
        "basic auth on `/system/*` and every route that reads or changes records",
        flag="--basic-auth",
        switch=True,
        group=_G,
    )
    basic_auth_invoke: bool = setting(
        "basic_auth_invoke",
        parse_bool,
        "false",
        "basic auth on `/function/*` and `/async-function/*` too",
        flag="--basic-auth-invoke",
        switch=True,
        group=_G,
    )
    secret_mount_path: str = setting(
        "secret_mount_path",
        text,
        DEFAULT_SECRET_MOUNT_PATH,
        "holds `basic-auth-user` and `basic-auth-password`",
        flag="--secret-mount-path",
        group=_G,
    )
    log_format: str = setting(
        "log_format",
        one_of("text", "json"),
        "text",
        "`text` or `json`",
        flag="--log-format",
        group=_G,
    )
    # -- the queue's backend --
    queue_backend: str = setting(
        "queue_backend",
        one_of(*sorted(BACKENDS)),
        "sqlite",
        "where asynchronous calls are "
        "stored: `sqlite` (one gateway) or `nats` (JetStream, several)",
        flag="--queue",
        group=_N,
    )
    nats_url: str = setting(
        "nats_url",
        _nats_url,
        None,
        "NATS servers of the nats queue, comma-separated",
        flag="--nats-url",
        group=_N,
        shown="`nats://$faas_nats_address:$faas_nats_port` when "
        "either OpenFaaS variable is set, else `nats://127.0.0.1:4222`",
    )
    nats_prefix: str = setting(
        "nats_prefix",
        _nats_prefix,
        "fwatchdog",
        "names of the streams (`P_calls`, "
        "`P_callbacks`) and buckets (`P_records`, `P_idempotency`) start with this: gateway "
        "groups sharing a NATS keep apart by prefix",
        flag="--nats-prefix",
        group=_N,
    )
    nats_replicas: int = setting(
        "nats_replicas",
        _positive_int,
        "1",
        "copies JetStream keeps of the nats queue (`3` "
        "on a 3-node cluster; set when the streams are first made)",
        flag="--nats-replicas",
        group=_N,
    )
    nats_start_timeout: float = setting(
        "nats_start_timeout",
        positive_duration,
        "30s",
        "at start, how long the gateway waits for NATS to accept connections and for "
        "JetStream to be ready (a cluster forming), logging while it waits",
        flag="--nats-start-timeout",
        group=_N,
    )
    async_lease: float = setting(
        "async_lease",
        positive_duration,
        "30s",
        "both backends: how long a worker holds a "
        "call, renewed every third while it runs; a dead gateway's calls run again after it",
        flag="--lease",
        group=_N,
    )
    # -- asynchronous calls --
    queue_path: str = setting(
        "queue_path",
        text,
        None,
        "SQLite queue file",
        flag="--queue-path",
        group=_A,
        shown="`$XDG_STATE_HOME/fwatchdog/queue.db`",
    )
    max_queue_depth: int = setting(
        "max_queue_depth",
        _non_negative_int,
        "1000000",
        "unfinished asynchronous calls before `429` (`0` = no limit)",
        flag="--max-queue-depth",
        group=_A,
    )
    max_async_body: int = setting(
        "max_async_body",
        parse_size,
        "1MiB",
        "largest request body of an asynchronous call, "
        "`413` beyond (1MiB is NATS's default message size)",
        flag="--max-async-body",
        group=_A,
    )
    max_result_body: int = setting(
        "max_result_body",
        parse_size,
        "1MiB",
        "response bytes kept in an activation record (the rest is cut, flagged)",
        flag="--max-result-body",
        group=_A,
    )
    async_concurrency: int = setting(
        "async_concurrency",
        _positive_int,
        "32",
        "asynchronous calls run at once, all functions together",
        flag="--async-concurrency",
        group=_A,
    )
    activation_retention: float = setting(
        "activation_retention",
        positive_duration,
        "72h",
        "how long records of ended calls are kept",
        flag="--activation-retention",
        group=_A,
    )
    convert_after: float = setting(
        "convert_after",
        parse_duration,
        "0",
        "a `/function` call running longer answers `202` and goes on asynchronously (`0` = never)",
        flag="--convert-after",
        group=_A,
    )
    max_attempts: int = setting(
        "max_retry_attempts",
        _positive_int,
        "10",
        "attempts of an asynchronous call",
        flag="--max-attempts",
        group=_A,
    )
    initial_backoff: float = setting(
        "initial_retry_wait",
        parse_duration,
        "10s",
        "wait before the first retry; doubles each time",
        flag="--initial-backoff",
        group=_A,
    )
    max_backoff: float = setting(
        "max_retry_wait",
        parse_duration,
        "120s",
        "longest wait between retries",
        flag="--max-backoff",
        group=_A,
    )
    max_event_age: float = setting(
        "max_event_age",
        positive_duration,
        "24h",
        "a call older than this fails instead of running",
        flag="--max-event-age",
        group=_A,
    )
    retry_codes: frozenset[int] = setting(
        "retry_http_codes",
        parse_codes,
        "408,429,500,502,503,504",
        "function statuses that are retried",
        flag="--retry-codes",
        group=_A,
    )
    callback_secret: str = setting(
        "callback_secret",
        text,
        "",
        "HMAC-SHA256 key for `X-Callback-Signature` (unset: unsigned)",
        flag="--callback-secret",
        group=_A,
        secret=True,
    )
    callback_allow: tuple[str, ...] = setting(
        "callback_allow",
        _allow,
        "",
        "only these callback hosts, `*.domains` or networks "
        "(comma-separated); unset: any destination not refused",
        flag="--callback-allow",
        group=_A,
    )
    callback_deny_private: bool = setting(
        "callback_deny_private",
        parse_bool,
        "false",
        "refuse loopback and private callback addresses",
        flag="--callback-deny-private",
        switch=True,
        group=_A,
    )
    # -- front doors: other platforms' APIs (watchdog/gateway/doors/) --
    openwhisk_door: bool = setting(
        "openwhisk_door",
        parse_bool,
        "true",
        "serve OpenWhisk's (DigitalOcean Functions') API under `/api/v1/` (`false`: off)",
        flag="--openwhisk-door",
        switch=True,
        group=_D,
    )
    openwhisk_wait: float = setting(
        "openwhisk_wait",
        positive_duration,
        "30s",
        "how long a blocking OpenWhisk invoke waits before answering `202` (the call runs on)",
        flag="--openwhisk-wait",
        group=_D,
    )
    openwhisk_api_keys: tuple[str, ...] = setting(
        "openwhisk_api_keys",
        _api_keys,
        "",
        "`UUID:KEY` API keys the OpenWhisk door accepts as Basic auth (comma-separated); "
        "unset: no key needed",
        flag="--openwhisk-api-keys",
        group=_D,
        secret=True,
    )
    altair_door: bool = setting(
        "altair_door",
        parse_bool,
        "true",
        "serve Altair IoT Studio's `invoke` and `async-invoke` under `/spaces/` (`false`: off)",
        flag="--altair-door",
        switch=True,
        group=_D,
    )
    altair_tokens: tuple[str, ...] = setting(
        "altair_tokens",
        _bearer_tokens,
        "",
        "bearer tokens the Altair door accepts (comma-separated); unset, and no "
        "`altair_tokens_file`: no token needed",
        flag="--altair-tokens",
        group=_D,
        secret=True,
    )
    altair_tokens_file: str = setting(
        "altair_tokens_file",
        text,
        "",
        "a file of bearer tokens for the Altair door, one a line (a secret file)",
        flag="--altair-tokens-file",
        group=_D,
        shown="—",
    )
    fc_door: bool = setting(
        "fc_door",
        parse_bool,
        "true",
        "serve Alibaba Function Compute's invoke and task API under `/2016-08-15/` and "
        "`/2023-03-30/` (`false`: off)",
        flag="--fc-door",
        switch=True,
        group=_D,
    )
    fc_default_service: str = setting(
        "fc_default_service",
        _fc_service,
        "default",
        "the FC service that is the gateway's namespace (`--namespace`); any other service "
        "`S` is namespace `S`",
        flag="--fc-default-service",
        group=_D,
    )
    fc_access_keys: str = setting(
        "fc_access_keys",
        text,  # parsed by _load_fc_keys, whose errors never show the secrets
        "",
        "`ID:SECRET,...`: FC door requests must be signed (`Authorization: FC ID:SIGNATURE`) "
        "with one of these keys (unset, and no `fc_access_keys_file`: not checked)",
        flag="--fc-access-keys",
        group=_D,
        secret=True,
    )
    fc_access_keys_file: str = setting(
        "fc_access_keys_file",
        text,
        "",
        "a file of `ID:SECRET` lines, keys added to `fc_access_keys` (a secret file)",
        flag="--fc-access-keys-file",
        group=_D,
        shown="—",
    )

    @classmethod
    def from_args(cls, argv: Sequence[str], env: Mapping[str, str]) -> GatewayConfig:
        """Parse the flags in ``argv`` over the variables in ``env`` (see :meth:`from_flags`)."""
        try:
            parser = add_arguments(CommandParser(prog=PROG, allow_abbrev=False))
            args, missing = join_flag_values(argv)
            parsed, unknown = parser.parse_known_args(args)
        except UsageError as exc:
            raise ConfigError([str(exc)]) from None
        return cls.from_flags(vars(parsed), env, [*missing, *unknown_arguments(unknown)])

    @classmethod
    def from_flags(
        cls, flags: Mapping[str, Any], env: Mapping[str, str], problems: Sequence[str] = ()
    ) -> GatewayConfig:
        """Build the configuration from parsed flags (:func:`add_arguments`) over ``env``;
        read the functions file and the basic-auth credentials.

        Raises:
            ConfigError: listing every problem found, ``problems`` first.
        """
        given = {key: value for key, value in flags.items() if isinstance(value, str)}
        specs = declared(cls)
        values, found = resolve(specs, env, given)
        problems = [*problems, *found]
        # A setting that failed is reported already: its default stands in for the checks
        # that follow (the retry policy, the functions file), which need every value.
        values = {spec.attr: default_of(spec) for spec in specs} | values
        retry = _retry_policy(values, problems)
        callback_policy = _callback_policy(values, problems)
        if not values["queue_path"]:  # unset or empty: the default place
            values["queue_path"] = str(default_queue_path(env))
        if values["nats_url"] is None:
            values["nats_url"] = _openfaas_nats_url(env, problems)
        functions = _functions(values, retry, flags.get("functions") or (), problems)
        credentials = None
        if values["basic_auth"] or values["basic_auth_invoke"]:
            credentials = _load_credentials(env, values["secret_mount_path"], problems)
        file_tokens = _load_tokens(values["altair_tokens_file"], problems)
        fc_keys = _load_fc_keys(values, problems)
        if problems:
            raise ConfigError(problems)
        return cls(
            **values,
            retry=retry,
            callback_policy=callback_policy,
            credentials=credentials,
            altair_file_tokens=file_tokens,
            fc_keys=fc_keys,
            functions=functions,
            environ=MappingProxyType(dict(env)),
        )

    def summary(self) -> str:
        """The effective settings, for the start-up log line (never the password)."""
        parts = [f"{spec.attr}={self._shown(spec)}" for spec in declared(GatewayConfig)]
        parts.append(f"altair_file_tokens={len(self.altair_file_tokens)}")
        parts.append(f"fc_keys={len(self.fc_keys)}")
        parts.append(f"functions={len(self.functions)}")
        return " ".join(parts)

    def _shown(self, spec: Setting) -> str:
        """A setting's value for the log; a secret only as set or unset (a count for lists)."""
        value = getattr(self, spec.attr)
        if not spec.secret:
            return repr(value)
        if isinstance(value, tuple):
            return str(len(value))
        return "set" if value else "unset"


PROG = "fwatchdog gateway"
_EPILOG = (
    "Basic-auth credentials: basic_auth_user and basic_auth_password from the environment, "
    "else the files basic-auth-user and basic-auth-password in secret_mount_path. A flag wins "
    "over its environment variable."
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The gateway's flags, from its declarations, on ``parser``."""
    parser.description = "Route /function/NAME and queue /async-function/NAME calls."
    parser.epilog = _EPILOG
    parser.add_argument(
        FUNCTION_FLAG,
        dest="functions",
        action="append",
        metavar="NAME[.NAMESPACE]=URL",
        help="register a function (repeatable)",
    )
    add_flags(parser, declared(GatewayConfig))
    return parser


def join_flag_values(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--flag VALUE`` as ``--flag=VALUE`` for every flag that takes a value, so a value that
    starts with ``-`` (a secret, ``-5s``) is read as the value, as Go's flag package and the
    gateway always did. Returns the arguments and a problem for each flag left without a
    value (reported with the rest, not alone)."""
    takes_value = {FUNCTION_FLAG} | {
        spec.flag for spec in declared(GatewayConfig) if spec.flag and not spec.switch
    }
    joined: list[str] = []
    problems: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg not in takes_value:
            joined.append(arg)
        elif (value := next(args, None)) is None:
            problems.append(f"{arg} needs a value")
        else:
            joined.append(f"{arg}={value}")
    return joined, problems


def unknown_arguments(unknown: Sequence[str]) -> list[str]:
    return [f"unknown argument {arg!r} (see {PROG} --help)" for arg in unknown]


def _functions(
    values: Mapping[str, Any], retry: RetryPolicy, flagged: Sequence[str], problems: list[str]
) -> tuple[Function, ...]:
    """The functions file's functions, then the ``--function`` flags' (a name defined twice
    is a problem)."""
    namespace = values["namespace"]
    functions: dict[tuple[str, str], Function] = {}
    if values["config_file"]:
        for loaded in _load_functions_file(values["config_file"], namespace, retry, problems):
            functions[(loaded.name, loaded.namespace)] = loaded
    for raw in flagged:
        function = _parse_function_flag(raw, namespace, problems)
        if function is None:
            continue
        if (function.name, function.namespace) in functions:
            problems.append(
                f"{FUNCTION_FLAG} {raw!r} is invalid: function {function.key} is already "
                "defined (in the functions file or an earlier flag)"
            )
            continue
        functions[(function.name, function.namespace)] = function
    return tuple(functions.values())


def _parse_url(text: str) -> str:
    value = text.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("an http:// URL such as http://127.0.0.1:8081")
    if parts.query or parts.fragment:
        raise Invalid("a URL without a query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise Invalid("an http:// URL with a valid port") from None
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
    """The gateway's retry policy from its settings (each already parsed alone)."""
    policy = RetryPolicy(**{key: values[key] for key in _RETRY_FIELDS})
    problems.extend(policy.problems())
    return policy


def default_retry_policy() -> RetryPolicy:
    """The retry policy the declarations' defaults make."""
    specs = declared(GatewayConfig)
    return RetryPolicy(
        **{spec.attr: default_of(spec) for spec in specs if spec.attr in _RETRY_FIELDS}
    )


def _function_retry(
    settings: Mapping[Any, Any], base: RetryPolicy, where: str, problems: list[str]
) -> RetryPolicy | None:
    """A function's retry settings from the functions file over ``base`` (None when it sets
    none); each parsed by its setting's own parser."""
    specs = {spec.attr: spec for spec in declared(GatewayConfig) if spec.attr in _RETRY_FIELDS}
    changes: dict[str, Any] = {}
    for key in _RETRY_FIELDS:
        raw = settings.get(key)
        if raw is None:
            continue
        try:
            changes[key] = specs[key].parse(str(raw))
        except Invalid as exc:
            problems.append(f"{where}.{key}={raw!r} is invalid: expected {exc}")
    if not changes:
        return None
    policy = replace(base, **changes)
    problems.extend(f"{where}: {line}" for line in policy.problems())
    return policy


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
        content = Path(path).read_text()
    except OSError as exc:
        problems.append(f"functions file {path}: cannot read it: {exc.strerror or exc}")
        return []
    try:
        document = yaml.load(content, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
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
    parse("timeout", positive_duration)
    parse("max_concurrency", _non_negative_int)
    parse("image", text)
    parse("fprocess", text)
    parse("convert_after", parse_duration)
    function_retry = _function_retry(settings, retry, where, problems)
    if function_retry is not None:
        values["retry"] = function_retry
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
