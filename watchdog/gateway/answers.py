"""Responses the gateway writes itself (not relayed from a function)."""

from __future__ import annotations

import json

from .. import __version__
from ..http import Response
from ..responses import INTERNAL_HEADER
from .invoke import CALL_ID_HEADER
from .queue.base import QueueUnavailable

SERVED_BY = f"fwatchdog-gateway/{__version__}"


def text(status: int, body: str) -> Response:
    response = Response(status=status, text=body + "\n", content_type="text/plain")
    response.headers["X-Served-By"] = SERVED_BY
    return response


def json_response(status: int, body: object) -> Response:
    response = Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )
    response.headers["X-Served-By"] = SERVED_BY
    return response


def method_not_allowed(allow: str) -> Response:
    response = text(405, "Method Not Allowed")
    response.headers["Allow"] = allow
    return response


def refusal(status: int, body: str) -> Response:
    """A plain-text answer of the gateway instead of the function, marked
    ``X-OpenFaaS-Internal: gateway`` (retry policies tell platform failures apart by it)."""
    response = text(status, body)
    response.headers[INTERNAL_HEADER] = "gateway"
    return response


def unavailable(exc: QueueUnavailable, call_id: str | None) -> Response:
    """503 while the queue cannot be reached: a JSON reason, ``Retry-After``, and for a
    submission the call id it was written under (its outcome is unknown)."""
    body: dict[str, object] = {
        "error": "queue_unavailable",
        "message": f"the queue is unavailable: {exc}; try again later",
    }
    if call_id is not None:
        body["callId"] = call_id
    response = json_response(503, body)
    response.headers["Retry-After"] = "1"
    response.headers[INTERNAL_HEADER] = "gateway"
    if call_id is not None:
        response.headers[CALL_ID_HEADER] = call_id
    return response
