"""The gateway's request handling: routing, authentication and the system API.

Routes, as in the OpenFaaS gateway:

- ``/function/NAME[.NAMESPACE][/sub/path][?query]``, any method: the function's answer.
- ``GET /system/functions``, ``GET /system/function/NAME``: function status JSON (faas-cli).
- ``GET /system/info``, ``GET /healthz``, ``GET /metrics``.

Paths are taken raw (still percent-encoded) so the sub-path and query reach the function byte
for byte. Only the function-name segment is decoded, to be matched.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import platform
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import parse_qs, unquote

from multidict import MultiMapping

from .. import __version__
from ..http import Request, Response, StreamResponse
from ..http.express import NOTE
from ..targets import refuse_target
from .answers import json_response, method_not_allowed, refusal, text
from .config import GatewayConfig
from .console import cross_site, refuse_cross_site
from .invoke import (
    CALL_ID_HEADER,
    DURATION_HEADER,
    START_TIME_HEADER,
    Call,
    InvokeError,
    Invoker,
    Sent,
)
from .metrics import CONTENT_TYPE_LATEST, GatewayMetrics
from .proxy import body_pending
from .queue.base import new_call_id
from .registry import Function, FunctionRegistry, InvalidName, split_ref
from .relay import answer_call

log = logging.getLogger("watchdog.gateway")

Handler = Callable[[Request, str], Awaitable[StreamResponse]]
REALM = 'Basic realm="Restricted"'
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
FUNCTION_PREFIX = "/function/"


@dataclass(frozen=True, slots=True)
class Route:
    """A path prefix, its handler (given the raw path after the prefix) and whether basic auth
    guards it. ``same_site``: state-changing methods made by another site's page are refused
    (403)."""

    prefix: str
    handler: Handler
    protected: bool
    protected_methods: frozenset[str] = frozenset()
    """Methods guarded even when the route is not: those that read or change call records."""
    same_site: bool = False


class Converter(Protocol):
    """Turns slow synchronous calls into asynchronous ones (:mod:`.async_api`)."""

    def conversion_wait(self, headers: MultiMapping[str], function: Function) -> float | None:
        """Seconds after which a synchronous call turns asynchronous; None: never."""

    async def call_converting(
        self, request: Request, function: Function, target: str, wait: float
    ) -> StreamResponse: ...


def basic_credentials(request: Request) -> bytes | None:
    """The decoded ``user:password`` of a ``Basic`` Authorization header, else None."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


class BasicAuth:
    """The gateway's basic-auth check, shared by its routes and its front doors."""

    def __init__(self, credentials: tuple[str, str] | None) -> None:
        self._credentials = credentials

    @property
    def enabled(self) -> bool:
        return self._credentials is not None

    def authorized(self, request: Request) -> bool:
        """True when basic auth is off or the request carries its credentials."""
        if self._credentials is None:
            return True
        decoded = basic_credentials(request)
        if decoded is None:
            return False
        user, sep, password = decoded.partition(b":")
        want_user, want_password = self._credentials
        # Both compared, always, in constant time: no early exit tells which one was wrong.
        user_ok = hmac.compare_digest(user, want_user.encode())
        password_ok = hmac.compare_digest(password, want_password.encode())
        return bool(sep) and user_ok and password_ok


class GatewayApp:
    """Dispatches requests to routes; owns nothing that needs closing. Built once, complete:
    its own routes plus ``routes`` (the asynchronous API, the console, the front doors)."""

    def __init__(
        self,
        config: GatewayConfig,
        registry: FunctionRegistry,
        invoker: Invoker,
        metrics: GatewayMetrics,
        auth: BasicAuth,
        routes: Sequence[Route] = (),
        converter: Converter | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.invoker = invoker
        self.metrics = metrics
        self.auth = auth
        self.converter = converter
        self.healthy = True
        auth_system = config.basic_auth
        own = [
            # With basic auth on, a browser that logged in to the console sends the credentials
            # with any site's requests: only then can another site's page act as the user.
            Route(
                FUNCTION_PREFIX,
                self.function,
                protected=config.basic_auth_invoke,
                same_site=config.basic_auth_invoke and auth.enabled,
            ),
            Route("/system/functions", self.system_functions, protected=auth_system),
            Route("/system/function/", self.system_function, protected=auth_system),
            Route("/system/info", self.system_info, protected=auth_system),
            Route("/system/", self.system_unknown, protected=auth_system),
            Route("/healthz", self.healthz, protected=False),
            Route("/metrics", self.serve_metrics, protected=False),
        ]
        # Longest prefix first, so the order routes are given in does not matter.
        self.routes: tuple[Route, ...] = tuple(
            sorted([*own, *routes], key=lambda route: len(route.prefix), reverse=True)
        )
        self._by_segment = _routes_by_segment(self.routes)
        self._info = _info_body()

    async def dispatch(self, request: Request) -> StreamResponse:
        refused = _refuse_target(request)
        if refused is not None:
            return refused
        raw_path = request.raw_path.partition("?")[0]
        candidates = self._by_segment.get(_first_segment(raw_path), self.routes)
        for route in candidates:
            if raw_path.startswith(route.prefix):
                guarded = route.protected or request.method in route.protected_methods
                if guarded and not self.auth.authorized(request):
                    return _unauthorized()
                if route.same_site and request.method not in _SAFE and cross_site(request):
                    return refuse_cross_site()
                return await route.handler(request, request.raw_path[len(route.prefix) :])
        return text(404, "Not Found")

    # -- /function/NAME ---------------------------------------------------------------------

    async def function(self, request: Request, rest: str) -> StreamResponse:
        sent = request.state.get(NOTE)
        if isinstance(sent, Sent):  # by the express (:mod:`.express`), which handed it over
            try:
                return await answer_call(self.invoker, request, sent.function, sent.call, sent=sent)
            except InvokeError as exc:
                return _invoke_error(exc, sent.call, request)
        redirect = _clean_redirect(request)
        if redirect is not None:
            return redirect
        path, _, query = rest.partition("?")
        segment, slash, sub_path = path.partition("/")
        target = "/" + sub_path if slash else "/"
        if query:
            target += "?" + query
        call: Call | None = None
        try:
            function = self.invoker.resolve(unquote(segment))
            if self.converter is not None:
                wait = self.converter.conversion_wait(request.headers, function)
                if wait is not None:
                    return await self.converter.call_converting(request, function, target, wait)
            try:
                call = await self._call_of(request, function, target)
            except TimeoutError:
                return refusal(408, "request body not received within the timeout")
            return await answer_call(self.invoker, request, function, call)
        except InvokeError as exc:
            return _invoke_error(exc, call, request)

    async def _call_of(self, request: Request, function: Function, target: str) -> Call:
        """The request as a call, its small body read within the function's timeout.

        Raises:
            TimeoutError: the body did not arrive in time.
        """
        if not body_pending(request):  # nothing to wait for: no timer to set and cancel
            return await Call.from_request(request, target)
        async with asyncio.timeout(self.invoker.timeout_of(function)):
            return await Call.from_request(request, target)

    # -- system API -------------------------------------------------------------------------

    async def system_functions(self, request: Request, rest: str) -> StreamResponse:
        if rest.partition("?")[0] not in ("", "/"):
            return text(404, "Not Found")
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed("GET, HEAD")
        namespace = parse_qs(request.query_string).get("namespace", [self.config.namespace])[0]
        body = [self._status(fn) for fn in self.registry.list(namespace)]
        return json_response(200, body)

    async def system_function(self, request: Request, rest: str) -> StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed("GET, HEAD")
        ref = unquote(rest.partition("?")[0])
        namespace = parse_qs(request.query_string).get("namespace", [self.config.namespace])[0]
        try:
            name, namespace = split_ref(ref if "." in ref else f"{ref}.{namespace}", namespace)
        except InvalidName as exc:
            return text(400, str(exc))
        function = self.registry.get(name, namespace)
        if function is None:
            return text(404, f"function {ref!r} not found in namespace {namespace!r}")
        return json_response(200, self._status(function))

    async def system_info(self, request: Request, rest: str) -> StreamResponse:
        if rest.partition("?")[0]:
            return text(404, "Not Found")
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed("GET, HEAD")
        return json_response(200, self._info)

    async def system_unknown(self, request: Request, rest: str) -> StreamResponse:
        return text(404, "Not Found")

    async def healthz(self, request: Request, rest: str) -> StreamResponse:
        if rest.partition("?")[0]:
            return text(404, "Not Found")
        if not self.healthy:
            return text(503, "Service Unavailable")
        return text(200, "OK")

    async def serve_metrics(self, request: Request, rest: str) -> StreamResponse:
        if rest.partition("?")[0]:
            return text(404, "Not Found")
        body = await asyncio.get_running_loop().run_in_executor(None, self.metrics.exposition)
        response = Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    def _status(self, function: Function) -> dict[str, object]:
        """The OpenFaaS ``FunctionStatus`` JSON (faas-provider types) for ``function``."""
        created = datetime.fromtimestamp(function.created_at, UTC)
        status: dict[str, object] = {
            "name": function.name,
            "image": function.image,
            "namespace": function.namespace,
            "invocationCount": float(self.invoker.invocations(function)),
            "replicas": 1,
            "availableReplicas": 1,
            "createdAt": created.isoformat().replace("+00:00", "Z"),
            "labels": dict(function.labels),
            "annotations": dict(function.annotations),
        }
        if function.fprocess:
            status["envProcess"] = function.fprocess
        if function.environment:
            status["envVars"] = dict(function.environment)
        return status


# -- helpers --------------------------------------------------------------------------------


def _first_segment(raw_path: str) -> str:
    """``/function/`` of ``/function/echo/x``; empty for a path of one segment."""
    return raw_path[: raw_path.find("/", 1) + 1]


def _routes_by_segment(routes: tuple[Route, ...]) -> dict[str, tuple[Route, ...]]:
    """For each first segment of a route's prefix, the routes a path starting with it can
    match, longest prefix first: a few instead of all of them on every request. (A route
    matching such a path either starts with the segment or is a prefix of it.) Paths with
    another first segment try every route."""
    segments = {_first_segment(route.prefix) for route in routes} - {""}
    return {
        segment: tuple(
            route
            for route in routes
            if route.prefix.startswith(segment) or segment.startswith(route.prefix)
        )
        for segment in segments
    }


def _refuse_target(request: Request) -> Response | None:
    """Only origin-form targets are served, as by the watchdog (:mod:`..targets`): a
    function's address comes from its configured URL alone, never from the request."""
    refused = refuse_target(request.method, request.raw_path, request.version)
    if refused is None:
        return None
    return refused.apply(text(refused.status, refused.message))


def _unauthorized() -> Response:
    response = text(401, "Unauthorized")
    response.headers["WWW-Authenticate"] = REALM
    return response


def _invoke_error(exc: InvokeError, call: Call | None, request: Request) -> Response:
    response = refusal(exc.status, exc.message)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    if call is None:  # refused before a call existed (malformed or unknown name)
        call_id = request.headers.get(CALL_ID_HEADER) or new_call_id()
        response.headers[CALL_ID_HEADER] = call_id
        return response
    response.headers[CALL_ID_HEADER] = call.call_id
    response.headers[START_TIME_HEADER] = str(call.start_time_ns)
    response.headers[DURATION_HEADER] = f"{(time.time_ns() - call.start_time_ns) / 1e9:.6f}"
    return response


def _clean_redirect(request: Request) -> Response | None:
    """301 to the cleaned path for ``//``, ``.`` and ``..`` segments, as the OpenFaaS gateway's
    router (gorilla/mux) does, so ``/function/a/../b`` never reaches function ``a`` as ``/../b``.
    Percent-encoded dots count as dots; everything else stays encoded."""
    raw_path, mark, query = request.raw_path.partition("?")
    if "//" not in raw_path and "/." not in raw_path and "/%2" not in raw_path:
        return None  # no empty segment, none that is (or decodes to) a dot or two
    segments = raw_path.split("/")[1:]
    if not any(seg in ("", ".", "..") or unquote(seg) in (".", "..") for seg in segments[:-1]) and (
        unquote(segments[-1]) not in (".", "..")
    ):
        return None
    cleaned: list[str] = []
    for seg in segments:
        value = unquote(seg)
        if value == "..":
            if cleaned:
                cleaned.pop()
        elif seg not in ("", ".") and value != ".":
            cleaned.append(seg)
    trailing = raw_path.endswith("/")
    location = "/" + "/".join(cleaned) + ("/" if trailing and cleaned else "")
    response = text(301, "Moved Permanently")
    response.headers["Location"] = location + (mark + query if query else "")
    return response


def _info_body() -> dict[str, object]:
    version = {"sha": "", "release": __version__}
    return {
        "provider": {"provider": "fwatchdog", "orchestration": "static", "version": version},
        "version": {**version, "commit_message": ""},
        "arch": platform.machine(),
    }
