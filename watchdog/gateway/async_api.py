"""Asynchronous calls over HTTP: accepting them, their activation records, and turning slow
synchronous calls into asynchronous ones.

Routes:

- ``POST /async-function/NAME[.NAMESPACE][/sub/path][?query]``: the request is committed to
  the queue, then answered ``202`` with ``X-Call-Id``, ``Location`` and
  ``{"callId", "status", "statusUrl"}``. Directives: ``X-Callback-Url``, ``X-Async-Delay``
  (ASCII seconds or a Go duration, 0..3600 s), ``Idempotency-Key``. ``DELETE
  /async-function/CALL_ID`` cancels (the OpenFaaS Pro form).
- ``GET /system/activations[?function=&status=&limit=&since=&cursor=]``, ``GET
  /system/activations/ID``, ``GET /system/activations/ID/result``, ``DELETE
  /system/activations/ID``.

Conversion: a ``/function/NAME`` call with ``Prefer: wait=N`` (RFC 7240), or for which the
gateway or the function sets ``convert_after``, has its body buffered and runs as the first
attempt of a call that is not stored yet. If it ends within N seconds its answer is returned
as usual (no record); otherwise the call is stored as running (leased to this gateway's
worker), the caller gets the ``202`` above, and the worker settles it like any queued call.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from multidict import MultiMapping

from ..config import parse_duration
from ..forwarding import forwarded_headers
from ..http import Request, Response, StreamResponse
from ..limits import BodyTooLarge, read_stream
from .activations import accepted_body, not_found_body, record_json, status_path
from .answers import json_response, method_not_allowed, refusal, text, unavailable
from .callbacks import CallbackPolicy
from .config import GatewayConfig
from .invoke import CALL_ID_HEADER, DURATION_HEADER, START_TIME_HEADER, InvokeError, Invoker
from .queue.base import (
    STATUSES,
    TERMINAL,
    CallRequest,
    LeasedCall,
    ListQuery,
    QueueBackend,
    QueueError,
    QueueFull,
    QueueUnavailable,
    Status,
    new_call_id,
)
from .registry import Function, InvalidName, split_ref
from .worker import AsyncWorker, InvokePathRunner, InvokeResult

CALLBACK_HEADER = "X-Callback-Url"
DELAY_HEADER = "X-Async-Delay"
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_DELAY = 3600.0
MAX_IDEMPOTENCY_KEY = 256
MAX_PAGE = 1000
# A caller's X-Call-Id becomes a record key and part of a URL: keep it to URL-safe characters.
CALL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_MICRO = str.maketrans({"\u00b5": "u", "\u03bc": "u"})  # Go's two spellings of µs
_NOT_RETURNED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class BadRequest(ValueError):
    """A directive of the request is malformed: answered 400 with this message."""


class RefusedCallback(BadRequest):
    """``X-Callback-Url`` names a destination the callback policy refuses."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"{CALLBACK_HEADER} {url!r} is not accepted: {problem}")
        self.url = url
        self.problem = problem


def callback_url(request: Request, policy: CallbackPolicy) -> str | None:
    """The request's ``X-Callback-Url``, checked when the call is accepted (None: none given;
    the front doors that take one use this too).

    Raises:
        RefusedCallback: the policy refuses its destination.
    """
    url = request.headers.get(CALLBACK_HEADER)
    if url is None:
        return None
    problem = policy.check_url(url.strip())
    if problem is not None:
        raise RefusedCallback(url, problem)
    return url.strip()


@dataclass(frozen=True, slots=True)
class Directives:
    """What a caller asks of an asynchronous call besides the request itself."""

    callback_url: str | None
    delay: float
    idempotency_key: str | None


class AsyncCalls:
    """The asynchronous routes of one gateway, over its queue and its worker."""

    def __init__(
        self,
        config: GatewayConfig,
        queue: QueueBackend,
        invoker: Invoker,
        worker: AsyncWorker,
        runner: InvokePathRunner,
    ) -> None:
        self.config = config
        self.queue = queue
        self.invoker = invoker
        self.worker = worker
        self.runner = runner

    # -- /async-function/ -----------------------------------------------------------------

    async def accept(self, request: Request, rest: str) -> StreamResponse:
        path, _, query = rest.partition("?")
        segment, slash, sub_path = path.partition("/")
        if request.method == "DELETE" and not slash:
            try:
                return await self._cancel(unquote(segment))
            except QueueUnavailable as exc:
                return unavailable(exc, None)
        if request.method != "POST":
            return method_not_allowed("POST")
        try:
            function = self.invoker.resolve(unquote(segment))
            directives = self._directives(request)
            call_id = client_call_id(request)
        except InvokeError as exc:
            return refusal(exc.status, exc.message)
        except BadRequest as exc:
            return refusal(400, str(exc))
        body = await read_limited(request, self.config.max_async_body)
        if body is None:
            return _too_large(self.config.max_async_body)
        call = CallRequest(
            function=function.key,
            method=request.method,
            path="/" + sub_path if slash else "",
            query=query,
            headers=tuple(forwarded_headers(request).items()),
            body=body,
            callback_url=directives.callback_url,
            idempotency_key=directives.idempotency_key,
            delay=directives.delay,
            call_id=call_id,
        )
        try:
            result = await self.queue.enqueue(call)
        except QueueFull as exc:
            return _queue_full(exc)
        except QueueUnavailable as exc:
            # The write may have landed: the caller gets the id to look it up or retry with
            # (the id of an earlier call holding the same Idempotency-Key, if that is it).
            return unavailable(exc, exc.call_id or call.call_id)
        except QueueError as exc:
            return refusal(409, str(exc))
        return accepted(result.call_id, result.status)

    def _directives(self, request: Request) -> Directives:
        return Directives(
            callback_url=self._callback_url(request),
            delay=_delay(request.headers.get(DELAY_HEADER)),
            idempotency_key=_idempotency_key(request.headers.get(IDEMPOTENCY_HEADER)),
        )

    def _callback_url(self, request: Request) -> str | None:
        return callback_url(request, self.config.callback_policy)

    # -- /system/activations --------------------------------------------------------------

    async def activations(self, request: Request, rest: str) -> StreamResponse:
        try:
            return await self._activations(request, rest)
        except QueueUnavailable as exc:
            return unavailable(exc, None)

    async def _activations(self, request: Request, rest: str) -> StreamResponse:
        path, _, query = rest.partition("?")
        if path and not path.startswith("/"):
            return text(404, "Not Found")
        parts = [unquote(part) for part in path.split("/") if part]
        method = request.method
        if not parts and method in ("GET", "HEAD"):
            return await self._list(query)
        if len(parts) == 1 and method in ("GET", "HEAD"):
            return await self._get(parts[0])
        if len(parts) == 1 and method == "DELETE":
            return await self._cancel(parts[0])
        if len(parts) == 2 and parts[1] == "result" and method in ("GET", "HEAD"):
            return await self._result(parts[0])
        if len(parts) <= 2:
            return method_not_allowed(
                "GET, HEAD" if not parts or len(parts) == 2 else "GET, DELETE"
            )
        return text(404, "Not Found")

    async def _list(self, query: str) -> StreamResponse:
        try:
            wanted = self._list_query(parse_qs(query))
        except BadRequest as exc:
            return json_response(400, {"error": "bad_request", "message": str(exc)})
        try:
            page = await self.queue.list(wanted)
        except ValueError as exc:
            return json_response(400, {"error": "bad_request", "message": str(exc)})
        items = [record_json(record) for record in page.items]
        return json_response(200, {"items": items, "nextCursor": page.next_cursor})

    def _list_query(self, params: dict[str, list[str]]) -> ListQuery:
        def one(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values else None

        function = one("function")
        if function is not None:
            try:
                name, namespace = split_ref(function, self.config.namespace)
            except InvalidName as exc:
                raise BadRequest(str(exc)) from None
            function = f"{name}.{namespace}"
        status = one("status")
        if status is not None and status not in STATUSES:
            raise BadRequest(f"status {status!r} is not one of {', '.join(STATUSES)}")
        limit = _whole(one("limit") or "30", "limit", 1, MAX_PAGE)
        since_text = one("since")
        since = None if since_text is None else _moment(since_text)
        return ListQuery(
            function=function,
            status=_as_status(status),
            since=since,
            limit=limit,
            cursor=one("cursor"),
        )

    async def _get(self, call_id: str) -> StreamResponse:
        record = await self.queue.get(call_id)
        if record is None:
            return self._not_found(call_id)
        return json_response(200, record_json(record))

    async def _result(self, call_id: str) -> StreamResponse:
        record = await self.queue.get(call_id)
        if record is None:
            return self._not_found(call_id)
        if record.status not in TERMINAL:
            message = f"call {call_id} has not ended yet: it is {record.status}"
            return _conflict("not_finished", call_id, record.status, message)
        if record.status_code is None:
            message = f"call {call_id} {record.status} without a response: {record.error}"
            return _conflict("no_response", call_id, record.status, message)
        response = Response(status=record.status_code, body=record.response_body or b"")
        for name, value in record.response_headers:
            if name.lower() not in _NOT_RETURNED:
                response.headers.add(name, value)
        response.headers[CALL_ID_HEADER] = call_id
        if record.response_truncated:
            response.headers["X-Result-Truncated"] = "true"
        return response

    async def _cancel(self, call_id: str) -> StreamResponse:
        outcome = await self.queue.cancel(call_id)
        if outcome == "not_found":
            return self._not_found(call_id)
        if outcome != "cancelled":
            message = f"call {call_id} cannot be cancelled: it is {outcome}"
            return _conflict(f"call_{outcome}", call_id, outcome, message)
        record = await self.queue.get(call_id)
        return json_response(200, record_json(record) if record else {"callId": call_id})

    def _not_found(self, call_id: str) -> Response:
        return json_response(404, not_found_body(call_id, self.config.activation_retention))

    # -- conversion of slow synchronous calls ---------------------------------------------

    def conversion_wait(self, headers: MultiMapping[str], function: Function) -> float | None:
        """Seconds after which a synchronous call with these request headers turns
        asynchronous; None: never."""
        preferred = prefer_wait(headers.getall("Prefer", []))
        if preferred is not None:
            return preferred
        configured = function.convert_after
        if configured is None:
            configured = self.config.convert_after
        return configured or None

    async def call_converting(
        self, request: Request, function: Function, target: str, wait: float
    ) -> StreamResponse:
        """Run the call; answer it if it ends within ``wait`` seconds, else answer 202 and
        hand it to the worker."""
        try:
            callback_url = self._callback_url(request)
            call_id = client_call_id(request)
        except BadRequest as exc:
            return refusal(400, str(exc))
        body = await read_limited(request, self.config.max_async_body)
        if body is None:
            return _too_large(self.config.max_async_body)
        path, _, query = target.partition("?")
        call = CallRequest(
            function=function.key,
            method=request.method,
            path="" if path == "/" else path,
            query=query,
            headers=tuple(forwarded_headers(request).items()),
            body=body,
            callback_url=callback_url,
            call_id=call_id,
        )
        now = time.time()
        lease_for = self.worker.settings.lease_for
        first = LeasedCall(call, 1, now, now + lease_for, self.worker.owner)
        attempt = asyncio.create_task(self.runner.invoke(first), name=f"call-{call.call_id}")
        try:
            await asyncio.wait({attempt}, timeout=wait)
        except BaseException:
            attempt.cancel()  # the caller went away before the call was converted
            raise
        if attempt.done():
            return _sync_answer(call, attempt.result())
        try:
            lease = await self.queue.adopt(call, owner=self.worker.owner, lease_for=lease_for)
        except QueueError:
            # Cannot store it (queue full): stay a synchronous call.
            return _sync_answer(call, await attempt)
        self.worker.adopt(lease, attempt)
        return accepted(call.call_id, "running")


# -- helpers --------------------------------------------------------------------------------


def accepted(call_id: str, status: str) -> Response:
    response = json_response(202, accepted_body(call_id, status))
    response.headers[CALL_ID_HEADER] = call_id
    response.headers["Location"] = status_path(call_id)
    response.headers[START_TIME_HEADER] = str(time.time_ns())
    return response


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    try:
        return bytes(await read_stream(request.content, limit))
    except BodyTooLarge:
        return None


def prefer_wait(values: list[str]) -> float | None:
    """``N`` from ``Prefer: wait=N`` (RFC 7240); malformed preferences are ignored."""
    for value in values:
        for preference in value.split(","):
            name, _, raw = preference.strip().partition("=")
            if name.strip().lower() == "wait" and raw.strip().isdigit():
                return float(raw.strip())
    return None


def client_call_id(request: Request) -> str:
    """The caller's ``X-Call-Id`` if it is a safe one, else a new id (the front doors that
    take one use this too).

    Raises:
        BadRequest: the caller's id is not a safe one.
    """
    given = request.headers.get(CALL_ID_HEADER)
    if given is None:
        return new_call_id()
    if CALL_ID.fullmatch(given) is None:
        raise BadRequest(
            f"{CALL_ID_HEADER} {given!r}: expected at most 128 letters, digits and . _ : -"
        )
    return given


def _delay(raw: str | None) -> float:
    """``X-Async-Delay``: seconds in ASCII digits (``30``, ``1.5``) or a Go duration (``90s``,
    ``1m30s``, ``500ms``), at most :data:`MAX_DELAY`. Not ``float()``: it also takes ``1_0``,
    ``+5``, ``1e3``, ``inf`` and digits of other scripts."""
    if raw is None:
        return 0.0
    value = _delay_seconds(raw.strip())
    if value is None or not 0.0 <= value <= MAX_DELAY:
        raise BadRequest(
            f"{DELAY_HEADER} {raw!r}: expected seconds (ASCII digits, e.g. 30 or 1.5) or a "
            f"duration such as 90s, 1m30s or 500ms, from 0 to {MAX_DELAY:g} seconds"
        )
    return value


def _delay_seconds(text: str) -> float | None:
    if not text.translate(_MICRO).isascii() or text[:1] in ("+", "-"):
        return None
    if _SECONDS.fullmatch(text):
        return float(text)
    try:
        return parse_duration(text)  # ASCII digits only here, so its \d and isdigit() are too
    except ValueError:
        return None


def _idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise BadRequest(f"{IDEMPOTENCY_HEADER}: expected 1 to {MAX_IDEMPOTENCY_KEY} characters")
    return key


def _whole(raw: str, name: str, low: int, high: int) -> int:
    if not raw.strip().isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name} {raw!r}: expected a whole number from {low} to {high}")
    return int(raw)


def _moment(raw: str) -> float:
    """Unix seconds or an RFC 3339 time."""
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(raw.strip())
    except ValueError:
        raise BadRequest(f"since {raw!r}: expected Unix seconds or an RFC 3339 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _as_status(status: str | None) -> Status | None:
    for known in STATUSES:
        if known == status:
            return known
    return None


def _too_large(limit: int) -> Response:
    return refusal(413, f"request body exceeds the limit of {limit} bytes")


def _queue_full(exc: QueueFull) -> Response:
    response = refusal(429, f"{exc}; try again later")
    response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return response


def _conflict(error: str, call_id: str, status: str, message: str) -> Response:
    body = {"error": error, "callId": call_id, "status": status, "message": message}
    return json_response(409, body)


def _sync_answer(call: CallRequest, outcome: InvokeResult) -> Response:
    """The answer of a call that ended before it was converted: the function's response,
    or the gateway's own error when there was none."""
    result = outcome.result
    if result.status_code is None:
        status = outcome.gateway_status or 502
        response = refusal(status, result.error or "the function did not answer")
    else:
        response = Response(status=result.status_code, body=result.body)
        for name, value in result.headers:
            if name.lower() not in _NOT_RETURNED:
                response.headers.add(name, value)
        if result.truncated:
            response.headers["X-Result-Truncated"] = "true"
    response.headers[CALL_ID_HEADER] = call.call_id
    response.headers[START_TIME_HEADER] = str(int(result.started_at * 1e9))
    response.headers[DURATION_HEADER] = f"{max(0.0, result.ended_at - result.started_at):.6f}"
    return response
