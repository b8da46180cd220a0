"""Altair IoT Studio's function invocation API over the gateway's invoke path and queue.

Routes, under ``/spaces/``:

================================================  ===============================================
Altair IoT Studio                                 here
================================================  ===============================================
``POST|GET|PUT|PATCH|DELETE``                     a synchronous call of the mapped function
``SPACE/functions/NAME/invoke[/a/b/c][?query]``   through the gateway's invoke path: the function
                                                  gets the method, ``/a/b/c`` (``/`` without) and
                                                  the query; the caller gets its status, headers
                                                  and body (other methods: ``405``)
``POST SPACE/functions/NAME/async-invoke``        an asynchronous call on the queue, ``202`` at
``[/a/b/c][?query]``, ``X-Callback-Url``          once; the result is POSTed to the callback URL
                                                  with the function's body, every header it set
                                                  and ``X-Function-Status`` (other methods: 405)
================================================  ===============================================

Names: a space that is a gateway namespace (some function is registered in it) is that
namespace; any other space is the gateway's default namespace, so code written against one
Altair space works unchanged. ``NAME`` is the function ``NAME``. The custom path has at most
three levels (a fourth is no route: ``404``); its empty, ``.`` and ``..`` segments are ``400``.

Auth: with bearer tokens configured (``altair_tokens``, ``altair_tokens_file``) every request
needs ``Authorization: Bearer TOKEN`` with one of them (the gateway's basic-auth credentials
also do); the token stays at the door. Errors are Altair's JSON
``{"error": {"status", "message", "details"}}``; nothing is queued for a refused request.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from multidict import CIMultiDict

from ...forwarding import forwarded_headers
from ...http import Request, Response, StreamResponse
from ...responses import INTERNAL_HEADER
from ..answers import json_response
from ..async_api import (
    CALLBACK_HEADER,
    BadRequest,
    RefusedCallback,
    accepted,
    callback_url,
    client_call_id,
    read_limited,
)
from ..invoke import CALL_ID_HEADER, Call, InvokeError
from ..queue.base import CallRequest, QueueError, QueueFull, QueueUnavailable
from ..registry import Function, is_valid_name
from ..relay import answer_call
from .base import DoorRoute, DoorServices, RouteKind

PREFIX = "/spaces/"
METHODS = ("POST", "GET", "PUT", "PATCH", "DELETE")
MAX_LEVELS = 3
BEARER_CHALLENGE = 'Bearer realm="Altair IoT Studio"'
BASIC_CHALLENGE = 'Basic realm="Restricted"'
_INVOKE, _ASYNC = "invoke", "async-invoke"


class Refused(Exception):
    """A request Altair would refuse: answered in Altair's error shape."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def error(status: int, message: str, **details: Any) -> Response:
    """Altair's error body: ``{"error": {"status", "message", "details"}}``."""
    body = {"error": {"status": status, "message": message, "details": details}}
    return json_response(status, body)


class AltairDoor:
    """The Altair IoT Studio door (setting ``altair_door``)."""

    name = "altair"
    setting = "altair_door"

    def routes(self, services: DoorServices) -> list[DoorRoute]:
        api = AltairApi(services)
        return [DoorRoute(PREFIX, api.handle, kind_of, api.unauthorized, accepts=api.has_token)]


def kind_of(request: Request, rest: str) -> RouteKind:
    # Decoded as the handler decodes them: `%69nvoke` must not slip past as another kind.
    parts = _parts(rest)
    if len(parts) >= 4 and parts[1] == "functions" and parts[3] in (_INVOKE, _ASYNC):
        return "invoke"
    return "open"


def _parts(rest: str) -> list[str]:
    """The raw segments after ``/spaces/``; the first four decoded (space, ``functions``,
    name, ``invoke``), the custom path left as sent, for the function."""
    parts = rest.partition("?")[0].split("/")
    return [unquote(part) for part in parts[:4]] + parts[4:]


class AltairApi:
    """The handlers of one gateway's Altair door."""

    def __init__(self, services: DoorServices) -> None:
        self.services = services
        self.config = services.config
        self.tokens = tuple(
            token.encode()
            for token in (*self.config.altair_tokens, *self.config.altair_file_tokens)
        )

    # -- auth -----------------------------------------------------------------------------

    def has_token(self, request: Request) -> bool:
        """The request carries one of the configured bearer tokens (none configured: False)."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.tokens:
            return False
        raw = given.strip().encode()
        # Every token compared, in constant time: no early exit tells which came close.
        matches = [hmac.compare_digest(raw, token) for token in self.tokens]
        return any(matches)

    def _allowed(self, request: Request) -> bool:
        """With tokens on: a token, or the gateway's own basic-auth credentials."""
        if not self.tokens or self.has_token(request):
            return True
        return self.config.credentials is not None and self.services.authorized(request)

    def unauthorized(self, request: Request) -> StreamResponse:
        given = request.headers.get("Authorization", "")
        message = "Invalid bearer token" if given else "Missing credentials"
        response = error(401, message)
        if self.tokens:
            response.headers.add("WWW-Authenticate", BEARER_CHALLENGE)
        if self.config.credentials is not None:
            response.headers.add("WWW-Authenticate", BASIC_CHALLENGE)
        return response

    # -- routing --------------------------------------------------------------------------

    async def handle(self, request: Request, rest: str) -> StreamResponse:
        if not self._allowed(request):
            return self.unauthorized(request)
        try:
            return await self._route(request, rest)
        except Refused as exc:
            return error(exc.status, exc.message, **exc.details)

    async def _route(self, request: Request, rest: str) -> StreamResponse:
        parts = _parts(rest)
        if len(parts) < 4 or parts[1] != "functions" or parts[3] not in (_INVOKE, _ASYNC):
            raise Refused(404, "Not Found", path=request.path)
        space, name, route = parts[0], parts[2], parts[3]
        allowed = METHODS if route == _INVOKE else ("POST",)
        if request.method not in allowed:
            response = error(405, f"Method {request.method} is not allowed on {route}")
            response.headers["Allow"] = ", ".join(allowed)
            return response
        path = _custom_path(parts[4:])
        function = self._function(space, name)
        query = rest.partition("?")[2]
        try:
            call_id = client_call_id(request)
        except BadRequest as exc:
            raise Refused(400, str(exc)) from None
        if route == _INVOKE:
            target = path + (f"?{query}" if query else "")
            return await self._invoke(request, function, target, call_id)
        return await self._enqueue(request, function, path, query, call_id)

    def _function(self, space: str, name: str) -> Function:
        """``NAME`` in the namespace ``space`` stands for (see the module doc)."""
        namespace = self.config.namespace
        if is_valid_name(space) and self.services.registry.list(space):
            namespace = space
        function = self.services.registry.get(name, namespace) if is_valid_name(name) else None
        if function is None:
            raise Refused(
                404,
                f"Function {name} not found in space {space}",
                space=space,
                function=name,
                namespace=namespace,
            )
        return function

    def _keep_credentials(self, headers: CIMultiDict[str]) -> None:
        """Drop from what the function gets the credentials the door or the gateway checked:
        they are theirs, not the function's."""
        if self.tokens or self.services.needs_credentials("invoke"):
            headers.popall("Authorization", None)

    # -- invoke ---------------------------------------------------------------------------

    async def _invoke(
        self, request: Request, function: Function, target: str, call_id: str
    ) -> StreamResponse:
        invoker = self.services.invoker
        try:
            async with asyncio.timeout(invoker.timeout_of(function)):
                call = await Call.from_request(request, target)
        except TimeoutError:
            return error(408, "The request body was not received within the timeout")
        self._keep_credentials(call.headers)
        call.call_id = call_id
        try:
            return await answer_call(invoker, request, function, call)
        except InvokeError as exc:
            return _invoke_error(exc, call_id)

    # -- async-invoke ---------------------------------------------------------------------

    async def _enqueue(
        self, request: Request, function: Function, path: str, query: str, call_id: str
    ) -> StreamResponse:
        callback_url = self._callback_url(request)
        body = await read_limited(request, self.config.max_async_body)
        if body is None:
            limit = self.config.max_async_body
            return error(413, f"The request body exceeds the limit of {limit} bytes", limit=limit)
        headers = forwarded_headers(request)
        self._keep_credentials(headers)
        call = CallRequest(
            function=function.key,
            method="POST",
            path="" if path == "/" else path,
            query=query,
            headers=tuple(headers.items()),
            body=body,
            callback_url=callback_url,
            call_id=call_id,
        )
        try:
            result = await self.services.queue.enqueue(call)
        except QueueFull as exc:
            response = error(429, f"Too many requests: {exc}")
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
            return response
        except QueueUnavailable as exc:
            # The write may have landed: the caller gets the id to look it up with.
            response = error(503, f"The queue is unavailable: {exc}", callId=call_id)
            response.headers["Retry-After"] = "1"
            response.headers[CALL_ID_HEADER] = exc.call_id or call_id
            return response
        except QueueError as exc:
            return error(409, str(exc), callId=call_id)
        return accepted(result.call_id, result.status)

    def _callback_url(self, request: Request) -> str | None:
        try:
            return callback_url(request, self.config.callback_policy)
        except RefusedCallback as exc:
            message = f"{CALLBACK_HEADER} is not accepted: {exc.problem}"
            raise Refused(400, message, url=exc.url) from None


# -- helpers --------------------------------------------------------------------------------


def _custom_path(levels: Sequence[str]) -> str:
    """The function's request path from the segments after ``invoke`` (still encoded)."""
    trailing = bool(levels) and levels[-1] == ""
    kept = list(levels[:-1] if trailing else levels)
    if len(kept) > MAX_LEVELS:
        raise Refused(
            404,
            f"Not Found: a custom path has at most {MAX_LEVELS} levels",
            levels=len(kept),
            max=MAX_LEVELS,
        )
    if any(level == "" or unquote(level) in (".", "..") for level in kept):
        raise Refused(400, "The custom path may not have empty, '.' or '..' levels")
    return "/" + "/".join(kept) + ("/" if trailing and kept else "")


def _invoke_error(exc: InvokeError, call_id: str) -> Response:
    """The gateway's refusal (unknown, at its limit, unreachable, too slow) in Altair's shape,
    marked as the gateway's own (``X-OpenFaaS-Internal``) as on ``/function/``."""
    response = error(exc.status, exc.message)
    response.headers[INTERNAL_HEADER] = "gateway"
    response.headers[CALL_ID_HEADER] = call_id
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response
