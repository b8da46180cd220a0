"""Which functions the gateway knows: names, where their watchdogs listen, and their settings.

The registry is behind the small :class:`FunctionRegistry` protocol so that something other than
the configuration (the local runner, which starts watchdogs itself) can fill it at run time.
Functions are keyed by name *and* namespace, as in OpenFaaS; a name without a namespace means the
gateway's default namespace (``openfaas-fn`` unless configured).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .retry import RetryPolicy

DEFAULT_NAMESPACE = "openfaas-fn"

# A Kubernetes name (RFC 1123 label): lowercase letters, digits and dashes, starting and ending
# with a letter or digit, at most 63 characters.
_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")


class InvalidName(ValueError):
    """A function reference that is not ``NAME`` or ``NAME.NAMESPACE`` with valid labels."""


def is_valid_name(text: str) -> bool:
    """True if ``text`` is a valid function or namespace name (a Kubernetes label)."""
    return _LABEL.fullmatch(text) is not None


def split_ref(ref: str, default_namespace: str) -> tuple[str, str]:
    """Split ``NAME`` or ``NAME.NAMESPACE`` into ``(name, namespace)``.

    Raises:
        InvalidName: a part is not a valid name, or there is more than one namespace suffix.
    """
    name, dot, namespace = ref.partition(".")
    if not dot:
        namespace = default_namespace
    if not is_valid_name(name) or not is_valid_name(namespace):
        raise InvalidName(
            f"invalid function name {ref!r}: expected NAME or NAME.NAMESPACE, each made of "
            "lowercase letters, digits and dashes (at most 63, starting and ending with a "
            "letter or digit)"
        )
    return name, namespace


def _frozen(mapping: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class Function:
    """One function: where its watchdog listens, and its limits and descriptive metadata.

    ``timeout`` (seconds) overrides the gateway's ``upstream_timeout`` when set;
    ``max_concurrency`` 0 means no limit at the gateway. ``labels``, ``annotations``,
    ``environment``, ``image`` and ``fprocess`` are only shown by the system API.
    ``retry`` (asynchronous calls) and ``convert_after`` (seconds after which a synchronous
    call answers 202 and goes on asynchronously) override the gateway's when set.
    """

    name: str
    url: str
    namespace: str = DEFAULT_NAMESPACE
    timeout: float | None = None
    max_concurrency: int = 0
    image: str = ""
    fprocess: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _frozen(None))
    annotations: Mapping[str, str] = field(default_factory=lambda: _frozen(None))
    environment: Mapping[str, str] = field(default_factory=lambda: _frozen(None))
    retry: RetryPolicy | None = None
    convert_after: float | None = None
    created_at: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        """``name.namespace``: the registry key and the ``function_name`` metric label."""
        return f"{self.name}.{self.namespace}"

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


class FunctionRegistry(Protocol):
    """Where the gateway looks functions up. Implementations must be safe to use from the
    event loop (no blocking I/O in ``get``: it runs on every invocation)."""

    def register(self, function: Function) -> None:
        """Add ``function``, replacing one with the same name and namespace."""

    def unregister(self, name: str, namespace: str) -> Function | None:
        """Remove and return the function, or ``None`` if there was none."""

    def get(self, name: str, namespace: str) -> Function | None:
        """The function called ``name`` in ``namespace``, if registered."""

    def list(self, namespace: str | None = None) -> list[Function]:
        """Registered functions, sorted by namespace and name; all namespaces when ``None``."""


class InMemoryRegistry:
    """A :class:`FunctionRegistry` in a dict, filled from the configuration or programmatically."""

    def __init__(self, functions: tuple[Function, ...] | list[Function] = ()) -> None:
        self._functions: dict[tuple[str, str], Function] = {}
        for function in functions:
            self.register(function)

    def register(self, function: Function) -> None:
        self._functions[(function.name, function.namespace)] = function

    def unregister(self, name: str, namespace: str) -> Function | None:
        return self._functions.pop((name, namespace), None)

    def get(self, name: str, namespace: str) -> Function | None:
        return self._functions.get((name, namespace))

    def list(self, namespace: str | None = None) -> list[Function]:
        return [
            fn
            for key, fn in sorted(self._functions.items(), key=lambda item: item[0][::-1])
            if namespace is None or fn.namespace == namespace
        ]

    def __len__(self) -> int:
        return len(self._functions)
