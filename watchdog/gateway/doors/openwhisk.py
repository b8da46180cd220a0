"""Apache OpenWhisk's REST API, as DigitalOcean Functions serves it, over the gateway's queue.

Routes, under ``/api/v1/``:

==================================================  ==============================================
OpenWhisk                                           here
==================================================  ==============================================
``POST namespaces/NS/actions/[PKG/]NAME``           an asynchronous call of the mapped function,
``?blocking=&result=&timeout=``                     with a 32-hex id; ``blocking=true`` waits for
                                                    its record (``timeout`` ms, else
                                                    ``openwhisk_wait``), then 200 (502 when it
                                                    failed) with the record or its result, or
                                                    202 ``{"activationId"}`` while it runs on
``GET namespaces/NS/activations``                   records of ended calls of the namespace,
``?name=&limit=&skip=&since=&upto=&docs=&count=``   newest first (summaries unless ``docs``)
``GET namespaces/NS/activations/ID``                the record in OpenWhisk's shape
``GET namespaces/NS/activations/ID/result``         ``{"result", "success", "status"}``
``GET namespaces/NS/activations/ID/logs``           ``{"logs": []}`` (the gateway has no logs)
``ANY web/NS/PKG/NAME[.EXT][/PATH][?QUERY]``        a web action: a synchronous call of the mapped
                                                    function with the request as it came (method,
                                                    ``/PATH``, query, headers, body), no record;
                                                    ``.json``, ``.text``, ``.html``, ``.svg`` set
                                                    the answer's Content-Type, ``.http`` (or no
                                                    extension) keeps the function's
==================================================  ==============================================

Names: namespace ``_`` is the gateway's default namespace, any other the gateway namespace of
that name; action ``NAME`` is the function ``NAME``, ``PKG/NAME`` the function ``PKG-NAME``
(``default/NAME``: ``NAME``). A name that is no function is OpenWhisk's 404.

Parameters to request: the JSON object body (``{}`` when there is none) is POSTed to the
function's ``/`` with ``Content-Type: application/json``, ``X-OpenWhisk-Activation-Id`` and
``X-OpenWhisk-Action-Name: /NS/[PKG/]NAME`` (the caller's ``Authorization`` is not passed).
Answer to result: a JSON object answer is the result as it is; any other answer is
``{"body", "statusCode", "headers"}`` (a body that is not UTF-8 in base64, with
``"bodyEncoding": "base64"``). A failed call's result is ``{"error": ...}`` around that.

Ids: calls made here have 32-hex ids; the gateway's other calls (UUIDs) are shown with their
dashes removed, and found again by either form. Records appear once the call has ended
(OpenWhisk writes them then); ``/system/activations/ID`` shows every state. Web actions keep no
record, as on DigitalOcean; the gateway's metrics count them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, unquote

from multidict import CIMultiDict

from ...forwarding import forwarded_headers
from ...http import Request, Response, StreamResponse
from ..activations import encode_body, headers_object
from ..answers import json_response
from ..app import basic_credentials
from ..async_api import read_limited
from ..invoke import CALL_ID_HEADER, DURATION_HEADER, START_TIME_HEADER, Call, InvokeError
from ..queue.base import (
    TERMINAL,
    ActivationRecord,
    CallRequest,
    ListQuery,
    QueueError,
    QueueFull,
    QueueUnavailable,
)
from ..registry import Function, is_valid_name
from ..relay import answer_call
from .base import DoorRoute, DoorServices, RouteKind

PREFIX = "/api/v1/"
ACTIVATION_HEADER = "x-openwhisk-activation-id"
REQUEST_ID_HEADER = "X-Request-ID"
REALM = 'Basic realm="OpenWhisk secure realm"'
NOT_FOUND = "The requested resource does not exist."
MAX_TIMEOUT_MS = 60_000
MAX_LIMIT = 200
DEFAULT_LIMIT = 30
RECHECK = 1.0
"""Seconds between looks at the record while a blocking call waits: another gateway sharing
the queue may run the call, and only this gateway's worker tells its waiters."""

WEB_CONTENT_TYPES = {
    "json": "application/json",
    "text": "text/plain; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "svg": "image/svg+xml",
    "http": None,  # the function's own
}

_HEX32 = re.compile(r"[0-9a-f]{32}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_NOT_PASSED = frozenset({"authorization", "cookie", "content-type", "x-call-id"})
_NOT_IN_RESULT = frozenset(
    {CALL_ID_HEADER.lower(), START_TIME_HEADER.lower(), DURATION_HEADER.lower(), "content-length"}
)
_STATUS_CODES = {
    "success": 0,
    "application error": 1,
    "action developer error": 2,
    "whisk internal error": 3,
}


class BadParameter(ValueError):
    """A query parameter OpenWhisk would refuse: answered 400 with this message."""


class OpenWhiskDoor:
    """The OpenWhisk / DigitalOcean Functions door (setting ``openwhisk_door``)."""

    name = "openwhisk"
    setting = "openwhisk_door"

    def routes(self, services: DoorServices) -> list[DoorRoute]:
        api = OpenWhiskApi(services)
        return [DoorRoute(PREFIX, api.handle, kind_of, unauthorized, accepts=api.has_key)]


def kind_of(request: Request, rest: str) -> RouteKind:
    # Decoded as the handler decodes them: `%61ctions` must not slip past as another kind.
    return _kind(request.method, _parts(rest))


def _kind(method: str, parts: list[str]) -> RouteKind:
    if parts[:1] == ["web"]:
        return "invoke"
    if len(parts) >= 3 and parts[0] == "namespaces":
        if parts[2] == "actions" and method == "POST":
            return "invoke"
        if parts[2] == "activations":
            return "records"
    return "open"


def unauthorized(request: Request) -> StreamResponse:
    response = error(401, "The supplied authentication is invalid.", request_id(request))
    response.headers["WWW-Authenticate"] = REALM
    return response


def request_id(request: Request) -> str:
    """The caller's ``X-Request-ID`` when it is a sane one, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def error(status: int, message: str, rid: str) -> Response:
    """OpenWhisk's error body: ``{"error": message, "code": request id}``."""
    response = json_response(status, {"error": message, "code": rid})
    response.headers[REQUEST_ID_HEADER] = rid
    return response


class OpenWhiskApi:
    """The handlers of one gateway's OpenWhisk door."""

    def __init__(self, services: DoorServices) -> None:
        self.services = services
        self.config = services.config
        self.queue = services.queue
        self.worker = services.worker
        self.keys = tuple(key.encode() for key in self.config.openwhisk_api_keys)

    def has_key(self, request: Request) -> bool:
        """The request's Basic auth is one of ``openwhisk_api_keys`` (none set: False)."""
        given = basic_credentials(request) if self.keys else None
        if given is None:
            return False
        # Every key compared, in constant time: no early exit tells which came close.
        return any([hmac.compare_digest(given, key) for key in self.keys])

    def _allowed(self, request: Request, parts: list[str]) -> bool:
        """With keys set, the API's invoke and record routes take a key, or the gateway's own
        credentials; web actions stay public, as on OpenWhisk."""
        if not self.keys or parts[:1] == ["web"] or _kind(request.method, parts) == "open":
            return True
        if self.has_key(request):
            return True
        return self.config.credentials is not None and self.services.authorized(request)

    async def handle(self, request: Request, rest: str) -> StreamResponse:
        rid = request_id(request)
        parts = _parts(rest)
        if not self._allowed(request, parts):
            return unauthorized(request)
        try:
            response = await self._route(request, rest, parts, rid)
        except BadParameter as exc:
            return error(400, str(exc), rid)
        except QueueUnavailable as exc:
            response = error(503, f"The activation store is unavailable: {exc}", rid)
            response.headers["Retry-After"] = "1"
            if exc.call_id:
                response.headers[ACTIVATION_HEADER] = exc.call_id.replace("-", "")
            return response
        except QueueError as exc:  # the store failed otherwise (closing, a storage error)
            return error(500, f"The activation store failed: {exc}", rid)
        response.headers[REQUEST_ID_HEADER] = rid
        return response

    async def _route(
        self, request: Request, rest: str, parts: list[str], rid: str
    ) -> StreamResponse:
        """``parts``: the decoded segments of ``rest``'s path (read once per request)."""
        query = rest.partition("?")[2]
        if parts[:1] == ["web"]:
            return await self._web_action(request, rest, rid)
        if len(parts) < 3 or parts[0] != "namespaces":
            return error(404, NOT_FOUND, rid)
        namespace = self._namespace(parts[1])
        if parts[2] == "actions" and len(parts) in (4, 5):
            if request.method != "POST":
                return _method_not_allowed("POST", rid)
            function = None if namespace is None else self._function(namespace, parts[3:])
            if function is None:
                return error(404, NOT_FOUND, rid)
            action = "/".join(["", function.namespace, *parts[3:]])
            return await self._invoke(request, function, action, query, rid)
        if parts[2] != "activations" or len(parts) > 5:
            return error(404, NOT_FOUND, rid)
        if request.method not in ("GET", "HEAD"):
            return _method_not_allowed("GET, HEAD", rid)
        if len(parts) == 3:
            params = parse_qs(query, keep_blank_values=True)
            if namespace is None:  # no function can be in it
                return json_response(200, {"activations": 0} if _flag(params, "count") else [])
            return await self._list(namespace, params)
        activation_id = _activation_id(parts[3])
        if len(parts) == 5 and parts[4] not in ("result", "logs"):
            return error(404, NOT_FOUND, rid)
        record = await self._record(activation_id, namespace)
        if record is None:
            return error(404, NOT_FOUND, rid)
        shown = self.record_json(record, activation_id)
        if len(parts) == 4:
            return json_response(200, shown)
        if parts[4] == "logs":
            return json_response(200, {"logs": shown["logs"]})
        outcome = shown["response"]
        body = {key: outcome[key] for key in ("result", "success", "status")}
        return json_response(200, body)

    # -- names ----------------------------------------------------------------------------

    def _namespace(self, given: str) -> str | None:
        if given == "_":
            return self.config.namespace
        return given if is_valid_name(given) else None

    def _function(self, namespace: str, action: list[str]) -> Function | None:
        """``NAME`` is the function NAME; ``PKG/NAME`` the function ``PKG-NAME``
        (``default/NAME``: NAME)."""
        name = action[-1] if len(action) == 1 or action[0] == "default" else "-".join(action)
        if not is_valid_name(name):
            return None
        return self.services.registry.get(name, namespace)

    # -- web actions ----------------------------------------------------------------------

    async def _web_action(self, request: Request, rest: str, rid: str) -> StreamResponse:
        """``web/NS/PKG/NAME[.EXT][/PATH]``: the request, as it came, to the function's
        ``/PATH``; its answer streamed back (no record, as DigitalOcean keeps none)."""
        raw_path, mark, query = rest.partition("?")
        segments = raw_path.split("/")
        if len(segments) < 4:
            return error(404, NOT_FOUND, rid)
        name, content_type = _web_name(unquote(segments[3]))
        namespace = self._namespace(unquote(segments[1]))
        package = unquote(segments[2])
        found = None if namespace is None else self._function(namespace, [package, name])
        if found is None:
            return error(404, NOT_FOUND, rid)
        function = found
        if any(unquote(part) in (".", "..") for part in segments[4:]):
            # as /function/ and the other doors: a path cannot climb out of the function's own
            return error(400, "The path may not have '.' or '..' segments.", rid)
        target = "/" + "/".join(segments[4:]) + (mark + query if query else "")
        invoker = self.services.invoker
        try:
            async with asyncio.timeout(invoker.timeout_of(function)):
                call = await Call.from_request(request, target)
        except TimeoutError:
            return error(408, "The request body was not received within the timeout.", rid)
        if self.services.needs_credentials("invoke") or self.has_key(request):
            call.headers.popall("Authorization", None)  # the gateway's or the door's
        try:
            response = await answer_call(invoker, request, function, call, content_type)
        except InvokeError as exc:
            return error(exc.status, exc.message, rid)
        return response

    # -- invoke ---------------------------------------------------------------------------

    async def _invoke(
        self, request: Request, function: Function, action: str, query: str, rid: str
    ) -> StreamResponse:
        params = parse_qs(query, keep_blank_values=True)
        blocking = _flag(params, "blocking")
        wanted_result = _flag(params, "result")
        wait = self._wait(params)
        body = await read_limited(request, self.config.max_async_body)
        if body is None:
            limit = self.config.max_async_body
            return error(413, f"The request content exceeds the limit of {limit} bytes.", rid)
        body = body.strip() or b"{}"
        if not _json_object(body):
            return error(400, "The request content was malformed: expected a JSON object.", rid)
        activation_id = uuid.uuid4().hex
        call = CallRequest(
            function=function.key,
            method="POST",
            headers=self._request_headers(request, rid, action, activation_id),
            body=body,
            call_id=activation_id,
        )
        # Watched before it is queued: the worker may end it before enqueue returns.
        ended = self.worker.watch(activation_id) if blocking else asyncio.Event()
        try:
            refused = await self._enqueue(call, rid)
            if refused is not None:
                return refused
            record = await self._wait_for_end(activation_id, ended, wait) if blocking else None
        finally:
            self.worker.unwatch(activation_id)
        if record is None:
            response = json_response(202, {"activationId": activation_id})
        else:
            shown = self.record_json(record, activation_id)
            status = 200 if shown["response"]["success"] else 502
            response = json_response(
                status, shown["response"]["result"] if wanted_result else shown
            )
        response.headers[ACTIVATION_HEADER] = activation_id
        return response

    def _wait(self, params: dict[str, list[str]]) -> float:
        raw = _one(params, "timeout")
        if raw is None:
            return self.config.openwhisk_wait
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_TIMEOUT_MS:
            raise BadParameter(f"Timeout must be number of milliseconds up to {MAX_TIMEOUT_MS}.")
        return int(raw) / 1000

    def _request_headers(
        self, request: Request, rid: str, action: str, activation_id: str
    ) -> tuple[tuple[str, str], ...]:
        headers: CIMultiDict[str] = CIMultiDict(
            (name, value)
            for name, value in forwarded_headers(request).items()
            if name.lower() not in _NOT_PASSED
        )
        headers["Content-Type"] = "application/json"
        headers[REQUEST_ID_HEADER] = rid
        headers["X-OpenWhisk-Activation-Id"] = activation_id
        headers["X-OpenWhisk-Action-Name"] = action
        return tuple(headers.items())

    async def _enqueue(self, call: CallRequest, rid: str) -> Response | None:
        """Commit ``call`` to the queue; an OpenWhisk error answer if it was refused."""
        try:
            await self.queue.enqueue(call)
        except QueueFull as exc:
            response = error(429, f"Too many requests: {exc}.", rid)
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
            return response
        except QueueUnavailable as exc:  # maybe stored: say under which id, to look it up
            raise QueueUnavailable(str(exc), call_id=call.call_id) from exc
        except QueueError as exc:
            return error(500, f"The activation could not be stored: {exc}", rid)
        return None

    async def _wait_for_end(
        self, activation_id: str, ended: asyncio.Event, wait: float
    ) -> ActivationRecord | None:
        """The record once the call has ended, or None if it has not within ``wait``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            ended.clear()  # before the read: an end reported during it must still wake us
            try:
                record = await self.queue.get(activation_id)
            except QueueError:
                return None  # accepted all the same: the caller can look it up later
            if record is not None and record.status in TERMINAL:
                return record
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(min(remaining, RECHECK)):
                    await ended.wait()
            except TimeoutError:
                pass

    # -- activations ----------------------------------------------------------------------

    async def _record(self, activation_id: str, namespace: str | None) -> ActivationRecord | None:
        """The ended call ``activation_id`` of ``namespace`` (by either form of its id)."""
        if namespace is None:
            return None
        record = await self.queue.get(activation_id)
        if record is None:
            record = await self.queue.get(_dashed(activation_id))
        if record is None or record.status not in TERMINAL:
            return None
        if _namespace_of(record.function) != namespace:
            return None
        return record

    async def _list(self, namespace: str, params: dict[str, list[str]]) -> StreamResponse:
        limit = _limit(_one(params, "limit"))
        skip = _whole(_one(params, "skip"), "skip") or 0
        since = _whole(_one(params, "since"), "since")
        upto = _whole(_one(params, "upto"), "upto")
        docs, count = _flag(params, "docs"), _flag(params, "count")
        if docs and count:
            raise BadParameter("The parameters 'count' and 'docs' cannot both be true.")
        function = None
        name = _one(params, "name")
        if name is not None:
            action = [part for part in name.split("/") if part]
            if name.startswith("/"):
                action = action[1:]  # a fully qualified /NS/[PKG/]NAME: NS is the route's
            found = self._function(namespace, action) if action else None
            if found is None:
                return json_response(200, {"activations": 0} if count else [])
            function = found.key
        matching = self._scan(namespace, function, since, upto)
        if count:
            total = 0
            async for _ in matching:
                total += 1
            return json_response(200, {"activations": total})
        shown: list[dict[str, Any]] = []
        async for record in matching:
            if skip:
                skip -= 1
                continue
            if docs:
                full = await self.queue.get(record.call_id)
                record = full if full is not None else record
            shown.append(
                self.record_json(record, _shown_id(record.call_id) or "", summary=not docs)
            )
            if len(shown) == limit:
                break
        return json_response(200, shown)

    async def _scan(
        self, namespace: str, function: str | None, since: int | None, upto: int | None
    ) -> AsyncIterator[ActivationRecord]:
        """Ended calls of ``namespace`` with ids OpenWhisk can show, newest first;
        ``since``/``upto`` (epoch ms) bound the time each call was accepted."""
        cursor: str | None = None
        since_s = None if since is None else since / 1000
        while True:
            query = ListQuery(function=function, since=since_s, limit=MAX_LIMIT, cursor=cursor)
            page = await self.queue.list(query)
            for record in page.items:
                if record.status not in TERMINAL or _shown_id(record.call_id) is None:
                    continue
                if _namespace_of(record.function) != namespace:
                    continue
                if upto is not None and record.created_at * 1000 > upto:
                    continue
                yield record
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- the record -----------------------------------------------------------------------

    def record_json(
        self, record: ActivationRecord, activation_id: str, *, summary: bool = False
    ) -> dict[str, Any]:
        """``record`` in OpenWhisk's shape (``summary``: as ``activations list`` shows it)."""
        name, _, namespace = record.function.partition(".")
        start = record.started_at if record.started_at is not None else record.created_at
        shown: dict[str, Any] = {
            "namespace": namespace,
            "name": name,
            "version": "0.0.1",
            "subject": namespace,
            "activationId": activation_id,
            "start": _ms(start),
            "publish": False,
            "annotations": self._annotations(record, namespace, name),
        }
        if record.ended_at is not None:
            shown["end"] = _ms(record.ended_at)
            shown["duration"] = max(0, shown["end"] - shown["start"])
        if summary:  # a summary has no response body to make a result of
            shown["statusCode"] = _STATUS_CODES[_status(record)]
            return shown
        status, success, result = self._outcome(record)
        size = len(json.dumps(result).encode())
        shown["logs"] = []
        shown["response"] = {
            "status": status,
            "statusCode": _STATUS_CODES[status],
            "success": success,
            "result": result,
            "size": size,
        }
        return shown

    def _annotations(
        self, record: ActivationRecord, namespace: str, name: str
    ) -> list[dict[str, Any]]:
        timeout = self.config.upstream_timeout
        try:
            timeout = self.services.invoker.timeout_of(
                self.services.invoker.resolve(record.function)
            )
        except InvokeError:
            pass  # no longer registered: the gateway's default
        annotations: list[dict[str, Any]] = [
            {"key": "path", "value": f"{namespace}/{name}"},
            {"key": "kind", "value": "blackbox"},
            {"key": "limits", "value": {"timeout": _ms(timeout)}},
            {"key": "timeout", "value": _timed_out(record)},
        ]
        if record.started_at is not None:
            wait_ms = max(0, _ms(record.started_at) - _ms(record.created_at))
            annotations.append({"key": "waitTime", "value": wait_ms})
        return annotations

    def _outcome(self, record: ActivationRecord) -> tuple[str, bool, dict[str, Any]]:
        """``(response.status, response.success, response.result)`` of an ended call."""
        status = _status(record)
        answer = _answer(record)
        if status == "success":
            return status, True, answer or {}
        if status == "application error" and answer is not None:
            return status, False, answer if "error" in answer else {"error": answer}
        return status, False, {"error": record.error or f"the call was {record.status}"}


# -- helpers --------------------------------------------------------------------------------


def _parts(rest: str) -> list[str]:
    """The decoded segments of the path after ``/api/v1/`` (a trailing slash dropped)."""
    parts = [unquote(part) for part in rest.partition("?")[0].split("/")]
    if parts and parts[-1] == "":
        parts.pop()
    return parts


def _status(record: ActivationRecord) -> str:
    """OpenWhisk's ``response.status`` of an ended call: the function answered an error
    (application), ran out of time (developer, as OpenWhisk counts timeouts), or the platform
    failed (internal: unreachable, refused, cancelled, too old)."""
    if record.status == "succeeded":
        return "success"
    if record.error_kind == "function" and record.status_code is not None:
        return "application error"
    if _timed_out(record):
        return "action developer error"
    return "whisk internal error"


def _answer(record: ActivationRecord) -> dict[str, Any] | None:
    """The function's answer as a result: a JSON object as it is, anything else as
    ``{"body", "statusCode", "headers"}``; None without an answer (or in a summary)."""
    if record.status_code is None or record.response_body is None:
        return None
    body = record.response_body
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can go
        value = None
    if isinstance(value, dict):
        return value
    text, encoding = encode_body(body)
    kept = tuple((k, v) for k, v in record.response_headers if k.lower() not in _NOT_IN_RESULT)
    answer: dict[str, Any] = {
        "body": text,
        "statusCode": record.status_code,
        "headers": headers_object(kept),
    }
    if encoding != "utf-8":
        answer["bodyEncoding"] = encoding
    return answer


def _timed_out(record: ActivationRecord) -> bool:
    """The call's last attempt ran out of time (the gateway's 504 or the worker's limit)."""
    error = record.error or ""
    return record.status == "failed" and (error.startswith("504:") or "timed out" in error)


def _json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can go
        return False


def _activation_id(given: str) -> str:
    if len(given) != 32:
        raise BadParameter(f"Activation id length is {len(given)} but must be 32.")
    if _HEX32.fullmatch(given.lower()) is None:
        raise BadParameter("Activation id must be 32 hexadecimal digits.")
    return given.lower()


def _shown_id(call_id: str) -> str | None:
    """The 32-hex id OpenWhisk clients see for a call id; None when there is none (a caller
    chose an id of another form through ``X-Call-Id``)."""
    if _HEX32.fullmatch(call_id):
        return call_id
    if _UUID.fullmatch(call_id):
        return call_id.replace("-", "")
    return None


def _dashed(activation_id: str) -> str:
    """The gateway's UUID form of a 32-hex id."""
    h = activation_id
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _namespace_of(function_key: str) -> str:
    return function_key.rpartition(".")[2]


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1].strip() if values else None


def _flag(params: dict[str, list[str]], name: str) -> bool:
    return (_one(params, name) or "").lower() == "true"


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or int(raw) > MAX_LIMIT:
        raise BadParameter(
            f"The value '{raw}' is not in the range of 0 to {MAX_LIMIT} for activations."
        )
    return int(raw) or MAX_LIMIT


def _whole(raw: str | None, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise BadParameter(f"The query parameter '{name}' is malformed: expected a whole number.")
    return int(raw)


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _method_not_allowed(allow: str, rid: str) -> Response:
    response = error(405, "The requested method is not allowed.", rid)
    response.headers["Allow"] = allow
    return response


def _web_name(last: str) -> tuple[str, str | None]:
    """The action's name and the Content-Type its extension asks for (None: the function's)."""
    name, dot, extension = last.rpartition(".")
    if dot and extension in WEB_CONTENT_TYPES:
        return name, WEB_CONTENT_TYPES[extension]
    return last, None
