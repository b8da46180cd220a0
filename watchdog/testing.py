"""Call a python3-http handler in a plain pytest test, without a container or a server.

``call(handle, body=b"Ada")`` builds the ``event`` and ``context`` the python3-http entry point
(``templates/python3-http/index.py``) passes, calls ``handle(event, context)`` and normalises
what it returns exactly as the entry point does (a dict with ``statusCode``/``body``/
``headers``, a plain value, or None) into a :class:`Response`::

    from watchdog.testing import call
    from .handler import handle

    def test_greets():
        response = call(handle, body=b"Ada", headers={"X-Lang": "en"})
        assert response.status == 200 and response.text == "Hello, Ada!"
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

__all__ = ["Context", "Event", "Response", "call", "load_handler", "make_event"]


@dataclass(frozen=True, slots=True)
class Event:
    """What ``handle`` gets as ``event``: the same types as under the aiohttp entry point."""

    body: bytes
    headers: CIMultiDictProxy[str]
    method: str
    query: MultiDictProxy[str]
    path: str


@dataclass(frozen=True, slots=True)
class Context:
    hostname: str = field(default_factory=lambda: os.getenv("HOSTNAME", "localhost"))


@dataclass(frozen=True, slots=True)
class Response:
    """The handler's answer as the caller would receive it."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


def make_event(
    body: bytes | str | Mapping[str, Any] | list[Any] = b"",
    *,
    method: str = "POST",
    path: str = "/",
    query: Mapping[str, str] | str = "",
    headers: Mapping[str, str] | None = None,
) -> Event:
    """An ``event``; a dict or list body is sent as JSON with that Content-Type."""
    header_map: CIMultiDict[str] = CIMultiDict(headers or {})
    if isinstance(body, (dict, list)):
        raw = json.dumps(body).encode()
        header_map.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = bytes(body)  # type: ignore[arg-type]
    pairs = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else query.items()
    return Event(
        body=raw,
        headers=CIMultiDictProxy(header_map),
        method=method.upper(),
        query=MultiDictProxy(MultiDict(pairs)),
        path=path,
    )


def call(
    handle: Callable[[Event, Context], Any],
    body: bytes | str | Mapping[str, Any] | list[Any] = b"",
    *,
    method: str = "POST",
    path: str = "/",
    query: Mapping[str, str] | str = "",
    headers: Mapping[str, str] | None = None,
    context: Context | None = None,
) -> Response:
    """Call ``handle(event, context)`` and normalise its return value like the entry point."""
    event = make_event(body, method=method, path=path, query=query, headers=headers)
    return normalise(handle(event, context or Context()))


def normalise(result: Any) -> Response:
    """The python3-http return-value rules (kept in step with the template's ``index.py``)."""
    if result is None:
        return Response(200, b"", {})
    if isinstance(result, tuple):
        # Flask's forms, which the official template passes through: (body, status),
        # (body, headers), (body, status, headers).
        status, headers = 200, {}
        for item in result[1:]:
            if isinstance(item, int):
                status = item
            elif isinstance(item, Mapping):
                headers = {str(k): str(v) for k, v in item.items()}
        return _formatted(status, result[0] if result else None, headers)
    if not isinstance(result, dict):
        return _formatted(200, result, {})
    headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
    return _formatted(int(result.get("statusCode", 200)), result.get("body"), headers)


def _formatted(status: int, body: Any, headers: dict[str, str]) -> Response:
    if isinstance(body, (dict, list)):
        headers.setdefault("Content-Type", "application/json")
        return Response(status, json.dumps(body).encode(), headers)
    if body is None:
        return Response(status, b"", headers)
    headers.setdefault("Content-Type", "text/html; charset=utf-8")
    return Response(status, _bytes(body), headers)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def load_handler(folder: str | os.PathLike[str]) -> ModuleType:
    """Import ``FOLDER/handler.py`` as the package ``function`` (as the entry point does), so
    its relative imports work; returns the module (``load_handler("hello").handle``)."""
    package = ModuleType("function")
    package.__path__ = [str(Path(folder).resolve())]
    for name in [n for n in sys.modules if n == "function" or n.startswith("function.")]:
        del sys.modules[name]  # a handler loaded before, from another folder
    sys.modules["function"] = package
    return importlib.import_module("function.handler")
