"""Alibaba Cloud Function Compute's invoke and task API, over the gateway's invoke path and queue.

Routes (FC 2.0 under ``/2016-08-15/``, what the ``aliyun-fc2`` SDK sends; FC 3.0 under
``/2023-03-30/``):

================================================================  ==============================
Function Compute                                                  here
================================================================  ==============================
``POST services/S[.Q]/functions/F/invocations``,                  synchronous: the function ``F``
``POST functions/F/invocations`` (3.0)                            of namespace ``S`` gets
                                                                  ``POST /`` with the body
                                                                  through the invoke path; its
                                                                  status, headers and body are
                                                                  the answer; a status >= 400
                                                                  adds ``X-Fc-Error-Type`` (a
                                                                  body that is not JSON goes in
                                                                  FC's error shape)
``X-Fc-Invocation-Type: Async``                                   the call is queued: ``202``,
                                                                  empty body, ``X-Fc-Request-Id``
                                                                  = its call id
``X-Fc-Async-Delay: N`` (0..3600)                                 it runs N seconds later
``X-Fc-Stateful-Async-Invocation-Id`` / ``X-Fc-Async-Task-Id``    the task id is the call id
                                                                  (taken already: ``409``)
``X-Fc-Log-Type: Tail``                                           ``X-Fc-Log-Result`` (base64 of
                                                                  the log: empty, the gateway
                                                                  sees no function logs)
``GET .../stateful-async-invocations[/ID]``, ``PUT .../ID``       the function's call records
``GET functions/F/async-tasks[/ID]``, ``PUT .../ID/stop`` (3.0)   as tasks; stop = cancel
================================================================  ==============================

Names: service ``fc_default_service`` (``default``) is the gateway's namespace, any other
service ``S`` the gateway namespace ``S``; FC 3.0 has no services: its functions are the
default namespace's. The qualifier (``S.Q``, ``?qualifier=``) is ignored: the gateway has one
version of each function (tasks show ``LATEST``).

Every error is FC's JSON ``{"ErrorCode", "ErrorMessage"}``; every answer carries
``X-Fc-Request-Id`` (a sane one the caller sent is reused; it is also the task id of an
asynchronous call given none). With ``fc_access_keys`` every request must carry the SDK's
signature (``Authorization: FC ID:SIGNATURE``, see :func:`signature_problem`).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, unquote_plus

from multidict import CIMultiDict

from ...forwarding import forwarded_headers
from ...http import Request, Response, StreamResponse
from ..activations import encode_body
from ..answers import SERVED_BY, json_response
from ..async_api import read_limited
from ..invoke import CALL_ID_HEADER, Call, InvokeError
from ..proxy import UpstreamError
from ..queue.base import (
    ActivationRecord,
    CallRequest,
    ListQuery,
    QueueError,
    QueueFull,
    QueueUnavailable,
    Status,
)
from ..registry import Function, is_valid_name
from .base import DoorRoute, DoorServices, RouteKind

Version = Literal["2016-08-15", "2023-03-30"]
V2: Version = "2016-08-15"
V3: Version = "2023-03-30"
VERSIONS: tuple[Version, ...] = (V2, V3)
REQUEST_ID = "X-Fc-Request-Id"
INVOCATION_TYPE = "X-Fc-Invocation-Type"
DELAY = "X-Fc-Async-Delay"
TASK_HEADERS = ("X-Fc-Stateful-Async-Invocation-Id", "X-Fc-Async-Task-Id")
LOG_TYPE, LOG_RESULT, ERROR_TYPE = "X-Fc-Log-Type", "X-Fc-Log-Result", "X-Fc-Error-Type"
MAX_DELAY = 3600
MAX_SYNC_RESPONSE = 16 << 20  # FC's limit on a synchronous answer
MAX_SKEW = 15 * 60  # FC refuses a signed request whose Date is further off
DEFAULT_LIMIT, MAX_LIMIT, SCAN_PAGE = 20, 100, 500
EXPIRED_PREFIX = "not run: older than max_event_age"

_TASK_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,127}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_NOT_PASSED = frozenset({"authorization", "cookie", CALL_ID_HEADER.lower()})
_TASKS_WORD = {V2: "stateful-async-invocations", V3: "async-tasks"}
_TASK_STATUS: dict[str, str] = {
    "queued": "Enqueued",
    "running": "Running",
    "retrying": "Retrying",
    "succeeded": "Succeeded",
    "failed": "Failed",
    "cancelled": "Stopped",
}
_QUEUE_STATUS: dict[str, Status] = {
    "Enqueued": "queued",
    "Running": "running",
    "Retrying": "retrying",
    "Succeeded": "succeeded",
    "Failed": "failed",
    "Expired": "failed",
    "Stopped": "cancelled",
}
_KNOWN_STATUSES = frozenset({*_QUEUE_STATUS, "Stopping", "Invalid", "Dequeued"})
_METHODS: dict[str, dict[str, tuple[str, ...]]] = {
    V2: {"invoke": ("POST",), "tasks": ("GET", "HEAD"), "task": ("GET", "HEAD", "PUT")},
    V3: {"invoke": ("POST",), "tasks": ("GET", "HEAD"), "task": ("GET", "HEAD"), "stop": ("PUT",)},
}
_DESTINATION = {"delivered": "Succeeded", "failed": "Failed"}
_GATEWAY_ERRORS = {429: "ResourceExhausted", 502: "FunctionUnreachable", 504: "FunctionTimeout"}


class BadInput(ValueError):
    """A parameter or header FC would refuse: ``400 InvalidArgument`` with this message."""


class FcDoor:
    """The Function Compute door (setting ``fc_door``)."""

    name = "fc"
    setting = "fc_door"

    def routes(self, services: DoorServices) -> list[DoorRoute]:
        api = FcApi(services)
        return [
            DoorRoute(
                f"/{version}/",
                partial(api.handle, version),
                partial(kind_of, version),
                unauthorized,
                accepts=api.signed_in,
            )
            for version in VERSIONS
        ]


@dataclass(frozen=True, slots=True)
class FcPath:
    """What a path under a version's prefix names."""

    service: str  # "" in FC 3.0
    qualifier: str
    function: str
    action: Literal["invoke", "tasks", "task", "stop"]
    task_id: str = ""


def parse_path(version: Version, rest: str) -> FcPath | None:
    """The route ``rest`` (after ``/VERSION/``, decoded as it is routed) names, if any."""
    parts = [unquote(part) for part in rest.partition("?")[0].split("/")]
    if version == V2:
        if len(parts) < 5 or parts[0] != "services" or parts[2] != "functions":
            return None
        service, _, qualifier = parts[1].partition(".")
        function, tail = parts[3], parts[4:]
    else:
        if len(parts) < 3 or parts[0] != "functions":
            return None
        service, qualifier = "", ""
        function, tail = parts[1], parts[2:]
    word = _TASKS_WORD[version]
    if tail == ["invocations"]:
        return FcPath(service, qualifier, function, "invoke")
    if tail == [word]:
        return FcPath(service, qualifier, function, "tasks")
    if len(tail) == 2 and tail[0] == word and tail[1]:
        return FcPath(service, qualifier, function, "task", tail[1])
    if version == V3 and len(tail) == 3 and tail[0] == word and tail[2] == "stop":
        return FcPath(service, qualifier, function, "stop", tail[1])
    return None


def kind_of(version: Version, request: Request, rest: str) -> RouteKind:
    path = parse_path(version, rest)
    if path is None:
        return "open"
    return "invoke" if path.action == "invoke" else "records"


def error(status: int, code: str, message: str) -> Response:
    """FC's error body (the SDK raises ``FcError`` from it; it crashes on any other).
    :meth:`FcApi.handle` adds ``X-Fc-Request-Id``."""
    return json_response(status, {"ErrorCode": code, "ErrorMessage": message})


def unauthorized(request: Request) -> StreamResponse:
    response = error(401, "AccessDenied", "this route needs the gateway's basic-auth credentials")
    response.headers["WWW-Authenticate"] = 'Basic realm="Restricted"'
    response.headers[REQUEST_ID] = request_id(request)
    return response


def request_id(request: Request) -> str:
    given = request.headers.get(REQUEST_ID, "")
    return given if _REQUEST_ID.fullmatch(given) else str(uuid.uuid4())


# -- the SDK's signature ----------------------------------------------------------------------


def signature_problem(
    request: Request, keys: Mapping[str, str], now: float
) -> tuple[str, str] | None:
    """``(ErrorCode, message)`` when ``request`` is not signed by one of ``keys`` as the SDK
    signs (``fc2/auth.py``): ``FC ID:base64(HMAC-SHA256(secret, METHOD\\nContent-MD5\\n
    Content-Type\\nDate\\n`` + the ``x-fc-*`` headers lower-cased and sorted, ``name:value\\n``
    each, + the unescaped path, then for a query ``\\n`` and its sorted ``k=v`` lines))``.
    HMAC-SHA1 is accepted too (older FC signers)."""
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    key_id, sep, signature = credential.strip().partition(":")
    if scheme != "FC" or not sep:
        return "SignatureNotMatch", "the request is not signed: expected Authorization: FC ID:SIG"
    date = request.headers.get("Date", "")
    try:
        sent = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return "SignatureNotMatch", "a signed request needs a Date header (RFC 1123)"
    if abs(now - sent) > MAX_SKEW:
        return "RequestTimeTooSkewed", f"the Date {date!r} is more than 15 minutes off"
    secret = keys.get(key_id)
    wanted = signature.encode()
    matched = False
    for text in _strings_to_sign(request):
        for digest in (hashlib.sha256, hashlib.sha1):
            mac = hmac.new((secret or "").encode(), text.encode(), digest).digest()
            matched |= hmac.compare_digest(base64.b64encode(mac), wanted)
    if secret is None or not matched:
        return "SignatureNotMatch", "the request signature does not match (key id or secret)"
    return None


def _strings_to_sign(request: Request) -> list[str]:
    headers = request.headers
    fc_headers = sorted(
        (name.lower(), value) for name, value in headers.items() if name.lower().startswith("x-fc-")
    )
    canonical = "".join(f"{name}:{value}\n" for name, value in fc_headers)
    path, _, query = request.raw_path.partition("?")
    path = unquote(path)
    if query:
        params = sorted(
            "=".join(unquote_plus(part) for part in item.split("=", 1))
            for item in query.split("&")
            if item
        )
        resources = [path + "\n" + "\n".join(params)]
    else:  # the SDK signs an empty query dict as a bare newline
        resources = [path, path + "\n"]
    head = [
        request.method.upper(),
        headers.get("Content-MD5", ""),
        headers.get("Content-Type", ""),
        headers.get("Date", ""),
    ]
    return ["\n".join([*head, canonical + resource]) for resource in resources]


# -- the handlers -----------------------------------------------------------------------------


class FcApi:
    """The handlers of one gateway's Function Compute door."""

    def __init__(self, services: DoorServices) -> None:
        self.services = services
        self.config = services.config
        self.queue = services.queue
        self.invoker = services.invoker

    def signed_in(self, request: Request) -> bool:
        """The request carries a valid signature of a configured key."""
        keys = self.config.fc_keys
        return bool(keys) and signature_problem(request, keys, time.time()) is None

    async def handle(self, version: Version, request: Request, rest: str) -> StreamResponse:
        rid = request_id(request)
        if self.config.fc_keys:
            problem = signature_problem(request, self.config.fc_keys, time.time())
            if problem is not None:
                refused = error(403, *problem)
                refused.headers[REQUEST_ID] = rid
                return refused
        response: StreamResponse
        try:
            response = await self._route(version, request, rest, rid)
        except BadInput as exc:
            response = error(400, "InvalidArgument", str(exc))
        except QueueUnavailable as exc:
            response = error(503, "ServiceUnavailable", f"the task store is unavailable: {exc}")
            response.headers["Retry-After"] = "1"
        except QueueError as exc:  # the store failed otherwise (closing, a storage error)
            response = error(500, "InternalServerError", f"the task store failed: {exc}")
        if REQUEST_ID not in response.headers or response.status >= 400:
            response.headers[REQUEST_ID] = rid
        return response

    async def _route(
        self, version: Version, request: Request, rest: str, rid: str
    ) -> StreamResponse:
        path = parse_path(version, rest)
        if path is None:
            return error(404, "PathNotFound", f"no such FC {version} route: {request.path}")
        namespace = self._namespace(path.service)
        if namespace is None:
            return error(404, "ServiceNotFound", f"service {path.service!r} does not exist")
        function = self._function(path.function, namespace)
        if function is None:
            shown = f"{path.service}/{path.function}" if path.service else path.function
            return error(404, "FunctionNotFound", f"function {shown!r} does not exist")
        allowed = _METHODS[version][path.action]
        if request.method not in allowed:
            response = error(405, "MethodNotAllowed", f"{request.method} is not allowed here")
            response.headers["Allow"] = ", ".join(allowed)
            return response
        if path.action == "invoke":
            return await self._invoke(request, function, rid)
        query = parse_qs(request.query_string, keep_blank_values=True)
        if path.action == "tasks":
            return await self._list(version, path, function, query)
        record = await self._record(path.task_id, function)
        if record is None:
            return _task_not_found(version, path.task_id)
        if request.method == "PUT":  # FC 2.0's stop, or FC 3.0's .../stop
            return await self._stop(version, record)
        return json_response(200, task_json(version, record, path, payload=True))

    # -- names ----------------------------------------------------------------------------

    def _namespace(self, service: str) -> str | None:
        """``fc_default_service`` (and FC 3.0's no service) is the gateway's namespace; any
        other service the namespace of its name, if it has functions."""
        if service in ("", self.config.fc_default_service):
            return self.config.namespace
        if not is_valid_name(service) or not self.services.registry.list(service):
            return None
        return service

    def _function(self, name: str, namespace: str) -> Function | None:
        return self.services.registry.get(name, namespace) if is_valid_name(name) else None

    # -- invoke ---------------------------------------------------------------------------

    async def _invoke(self, request: Request, function: Function, rid: str) -> StreamResponse:
        mode = request.headers.get(INVOCATION_TYPE, "Sync").strip().lower()
        if mode not in ("sync", "async"):
            raise BadInput(f"{INVOCATION_TYPE} must be Sync or Async, not {mode!r}")
        delay = _delay(request.headers.get(DELAY)) if mode == "async" else 0
        task_id = _task_id(request) if mode == "async" else None
        body = await read_limited(request, self.config.max_async_body)
        if body is None:
            limit = self.config.max_async_body
            return error(413, "EntityTooLarge", f"the payload exceeds the limit of {limit} bytes")
        if mode == "async":
            return await self._enqueue(request, function, body, delay, task_id or rid)
        response = await self._call(request, function, body, rid)
        if request.headers.get(LOG_TYPE, "").strip().lower() == "tail":
            response.headers[LOG_RESULT] = base64.b64encode(b"").decode()
        return response

    def _headers(self, request: Request, rid: str) -> CIMultiDict[str]:
        """The caller's headers minus its credentials and FC's directives, plus the id."""
        headers: CIMultiDict[str] = CIMultiDict(
            (name, value)
            for name, value in forwarded_headers(request).items()
            if name.lower() not in _NOT_PASSED and not name.lower().startswith("x-fc-")
        )
        headers[REQUEST_ID] = rid
        return headers

    async def _call(self, request: Request, function: Function, body: bytes, rid: str) -> Response:
        """One synchronous call through the invoke path; the function's answer as it came."""
        call = Call("POST", "/", self._headers(request, rid), body)
        try:
            async with self.invoker.invoke(function, call) as invocation:
                try:
                    data = await invocation.upstream.read(MAX_SYNC_RESPONSE)
                except ValueError:  # longer than the limit
                    invocation.status = 502
                    limit = MAX_SYNC_RESPONSE
                    return error(502, "FunctionResponseTooLarge", f"answer over {limit} bytes")
                status, headers = invocation.upstream.status, invocation.response_headers()
        except InvokeError as exc:
            return _invoke_error(exc)
        except TimeoutError:
            return _invoke_error(InvokeError(504, f"function {function.name!r} timed out"))
        except UpstreamError as exc:
            return _invoke_error(InvokeError(502, f"function {function.name!r} broke off: {exc}"))
        # Whole, not streamed (relay.answer_call): an error answer's body may be rewritten.
        if status < 400:
            response = Response(status=status, body=data)
            response.headers.extend(headers)
        else:
            response = _function_error(status, headers, data)
        response.headers["X-Served-By"] = SERVED_BY
        return response

    async def _enqueue(
        self,
        request: Request,
        function: Function,
        body: bytes,
        delay: int,
        task_id: str,
    ) -> Response:
        """Queue the call under ``task_id``: ``202`` once it is durable."""
        if await self.queue.get(task_id) is not None:
            return _duplicate(task_id)
        call = CallRequest(
            function=function.key,
            method="POST",
            headers=tuple(self._headers(request, task_id).items()),
            body=body,
            delay=float(delay),
            call_id=task_id,
        )
        try:
            await self.queue.enqueue(call)
        except QueueFull as exc:
            response = error(429, "ResourceExhausted", f"{exc}; try again later")
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
            return response
        except QueueUnavailable:
            raise
        except QueueError as exc:
            if await self.queue.get(task_id) is not None:  # taken meanwhile by another caller
                return _duplicate(task_id)
            return error(500, "InternalServerError", f"the call could not be stored: {exc}")
        response = Response(status=202)
        response.headers[REQUEST_ID] = task_id
        response.headers[CALL_ID_HEADER] = task_id
        return response

    # -- tasks ----------------------------------------------------------------------------

    async def _record(self, task_id: str, function: Function) -> ActivationRecord | None:
        record = await self.queue.get(task_id)
        return record if record is not None and record.function == function.key else None

    async def _list(
        self, version: Version, path: FcPath, function: Function, query: dict[str, list[str]]
    ) -> StreamResponse:
        wanted = TaskQuery.parse(query)
        matches: list[ActivationRecord] = []
        cursor: str | None = None
        while True:
            status = _QUEUE_STATUS.get(wanted.status or "")
            page = await self.queue.list(
                ListQuery(function=function.key, status=status, limit=SCAN_PAGE, cursor=cursor)
            )
            matches += [record for record in page.items if wanted.matches(record)]
            enough = not wanted.ascending and len(matches) > wanted.offset + wanted.limit
            if enough or page.next_cursor is None:
                break
            cursor = page.next_cursor
        if wanted.ascending:
            matches.reverse()
        end = wanted.offset + wanted.limit
        shown = []
        for summary in matches[wanted.offset : end]:
            record = await self.queue.get(summary.call_id) or summary
            shown.append(task_json(version, record, path, payload=wanted.payload))
        key = "invocations" if version == V2 else "tasks"
        return json_response(
            200, {key: shown, "nextToken": str(end) if len(matches) > end else None}
        )

    async def _stop(self, version: Version, record: ActivationRecord) -> StreamResponse:
        outcome = await self.queue.cancel(record.call_id)
        if outcome == "cancelled":
            return json_response(200, {})
        if outcome == "not_found":
            return _task_not_found(version, record.call_id)
        now = await self.queue.get(record.call_id) or record
        state = task_status(now)
        if outcome == "running":
            message = f"task {record.call_id} is {state}: the gateway cannot stop a running call"
        else:
            message = f"task {record.call_id} has already ended: it is {state}"
        return error(400, "InvalidArgument", message)


# -- tasks ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """The list parameters of both versions (``prefix`` is 3.0's ``invocationIdPrefix``)."""

    limit: int = DEFAULT_LIMIT
    offset: int = 0
    status: str | None = None
    begin: int | None = None
    end: int | None = None
    prefix: str = ""
    ascending: bool = False
    payload: bool = False

    @classmethod
    def parse(cls, query: dict[str, list[str]]) -> TaskQuery:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1].strip() if values else None

        status = one("status") or None
        if status is not None and status not in _KNOWN_STATUSES:
            raise BadInput(f"status {status!r} is not a task status")
        order = (one("sortOrderByTime") or "desc").lower()
        if order not in ("asc", "desc"):
            raise BadInput(f"sortOrderByTime {order!r}: expected asc or desc")
        return cls(
            limit=_whole(one("limit"), "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT,
            offset=_whole(one("nextToken"), "nextToken", 0, None) or 0,
            status=status,
            begin=_whole(one("startedTimeBegin"), "startedTimeBegin", 0, None),
            end=_whole(one("startedTimeEnd"), "startedTimeEnd", 0, None),
            prefix=one("invocationIdPrefix") or one("prefix") or "",
            ascending=order == "asc",
            payload=(one("includePayload") or "").lower() == "true",
        )

    def matches(self, record: ActivationRecord) -> bool:
        started = _ms(_started(record))
        return (
            record.call_id.startswith(self.prefix)
            and (self.status is None or task_status(record) == self.status)
            and (self.begin is None or started >= self.begin)
            and (self.end is None or started <= self.end)
        )


def task_status(record: ActivationRecord) -> str:
    if record.status == "failed" and (record.error or "").startswith(EXPIRED_PREFIX):
        return "Expired"
    return _TASK_STATUS[record.status]


def task_json(
    version: Version, record: ActivationRecord, path: FcPath, *, payload: bool
) -> dict[str, Any]:
    """``record`` as FC 2.0's ``StatefulAsyncInvocation`` or FC 3.0's ``AsyncTask``."""
    name = record.function.rpartition(".")[0]
    ended = record.status in _ENDED
    error_message = "" if record.status == "succeeded" else (record.error or "")
    task: dict[str, Any] = {
        "functionName": name,
        "qualifier": path.qualifier or "LATEST",
        "status": task_status(record),
        "startedTime": _ms(_started(record)),
        "alreadyRetriedTimes": max(0, record.attempts - 1),
        "requestId": record.call_id,
        "destinationStatus": _DESTINATION.get(record.callback_status or "", ""),
        "events": events(record),
    }
    if ended and record.ended_at is not None:
        task["endTime"] = _ms(record.ended_at)
        task["durationMs"] = max(0, task["endTime"] - task["startedTime"])
    if payload and record.response_body is not None:
        task["returnPayload"] = encode_body(record.response_body)[0]
    if version == V2:
        task.update(serviceName=path.service, invocationId=record.call_id)
        task["invocationErrorMessage"] = error_message
    else:
        task.update(functionArn=f"acs:fc:local:gateway:functions/{name}", taskId=record.call_id)
        task["taskErrorMessage"] = error_message
    return task


_ENDED = frozenset({"succeeded", "failed", "cancelled"})


def events(record: ActivationRecord) -> list[dict[str, Any]]:
    """The attempt history: ``Enqueued``, then per attempt ``Running`` and how it ended
    (``Succeeded``, ``Retrying`` or ``Failed``), then ``Stopped``/``Expired`` if so."""
    seen: list[tuple[str, float, dict[str, Any]]] = [("Enqueued", record.created_at, {})]
    for info in record.attempt_log:
        seen.append(("Running", info.started_at, {"attempt": info.attempt}))
        detail = {
            key: value
            for key, value in (("statusCode", info.status_code), ("error", info.error))
            if value is not None
        }
        outcome = "Succeeded" if info.error is None else "Retrying" if info.retry_at else "Failed"
        seen.append((outcome, info.ended_at, detail))
    if record.status == "running" and not record.attempt_log:
        seen.append(("Running", record.started_at or record.created_at, {}))
    status = task_status(record)
    if status in ("Stopped", "Expired"):
        seen.append((status, record.ended_at or record.created_at, {"error": record.error}))
    return [
        {
            "eventId": number,
            "status": status,
            "timestamp": _ms(moment),
            "eventDetail": json.dumps(detail) if detail else "",
        }
        for number, (status, moment, detail) in enumerate(seen, start=1)
    ]


# -- helpers ----------------------------------------------------------------------------------


def _started(record: ActivationRecord) -> float:
    return record.started_at if record.started_at is not None else record.created_at


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _delay(raw: str | None) -> int:
    if raw is None:
        return 0
    value = raw.strip()
    if not value.isascii() or not value.isdigit() or int(value) > MAX_DELAY:
        raise BadInput(f"{DELAY} {raw!r}: expected whole seconds from 0 to {MAX_DELAY}")
    return int(value)


def _task_id(request: Request) -> str | None:
    for name in TASK_HEADERS:
        given = request.headers.get(name)
        if given is None:
            continue
        if not _TASK_ID.fullmatch(given.strip()):
            raise BadInput(
                f"{name} {given!r}: expected at most 128 letters, digits, _ and -, starting "
                "with a letter or _"
            )
        return given.strip()
    return None


def _whole(raw: str | None, name: str, low: int, high: int | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) < low or (high and int(raw) > high):
        shown = f"from {low} to {high}" if high else f"of at least {low}"
        raise BadInput(f"{name} {raw!r}: expected a whole number {shown}")
    return int(raw)


def _function_error(status: int, headers: CIMultiDict[str], body: bytes) -> Response:
    """A function's error answer: its status and headers with ``X-Fc-Error-Type``
    (``HandledInvocationError`` for a 4xx, ``UnhandledInvocationError`` for a 5xx); its body
    as it is when it is JSON, else in FC's error shape (``ErrorMessage``: the body as text),
    because the SDK parses an error status's body as JSON and crashes on any other."""
    kind = "HandledInvocationError" if status < 500 else "UnhandledInvocationError"
    try:
        json.loads(body)
        response = Response(status=status, body=body)
        response.headers.extend(headers)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can go
        response = json_response(status, {"ErrorCode": kind, "ErrorMessage": encode_body(body)[0]})
        for name, value in headers.items():
            if name.lower() != "content-type":
                response.headers.add(name, value)
    response.headers[ERROR_TYPE] = kind
    return response


def _invoke_error(exc: InvokeError) -> Response:
    """The gateway answered for the function: FC's shape; 502/504 are the function's failure
    to answer (``X-Fc-Error-Type``), 404/400 cannot happen (the name was resolved)."""
    response = error(
        exc.status, _GATEWAY_ERRORS.get(exc.status, "InternalServerError"), exc.message
    )
    if exc.status in (502, 504):
        response.headers[ERROR_TYPE] = "UnhandledInvocationError"
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _duplicate(task_id: str) -> Response:
    message = f"a task with id {task_id!r} exists already: task ids are unique in the gateway"
    return error(409, "StatefulAsyncInvocationAlreadyExists", message)


def _task_not_found(version: str, task_id: str) -> Response:
    code = "StatefulAsyncInvocationNotFound" if version == V2 else "AsyncTaskNotFound"
    return error(404, code, f"no task {task_id!r} of this function (unknown, or expired)")
