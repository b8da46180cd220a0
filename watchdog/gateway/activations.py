"""Activation records as the HTTP API shows them (``/system/activations/...``) and the 202 body.

A record is JSON with camelCase names. Times are RFC 3339 UTC strings with milliseconds;
``durationMs`` spans the first attempt's start to the end. A response body that is valid
UTF-8 is shown as text (``bodyEncoding: "utf-8"``), any other as base64; ``truncated`` says
the stored body was cut to the gateway's result limit. ``error.kind`` tells a failure of the
platform (unreachable, timed out, interrupted by a restart, too old) from one the function
returned.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

from .queue.base import ActivationRecord, AttemptInfo, CallbackAttempt, Headers

ACTIVATIONS_PATH = "/system/activations"


def status_path(call_id: str) -> str:
    """Where the record of ``call_id`` is served (the 202's ``Location``)."""
    return f"{ACTIVATIONS_PATH}/{call_id}"


def accepted_body(call_id: str, status: str = "queued") -> dict[str, Any]:
    """The JSON body of a ``202 Accepted``."""
    return {"callId": call_id, "status": status, "statusUrl": status_path(call_id)}


def timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_body(body: bytes) -> tuple[str, str]:
    """``(text, encoding)``: the body as UTF-8 text when it is, else base64."""
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"


def headers_object(headers: Headers) -> dict[str, str]:
    """Headers as a JSON object; repeated names joined with ``, `` (``Set-Cookie`` with
    newlines, since its values may contain commas)."""
    merged: dict[str, str] = {}
    for name, value in headers:
        key = name.title() if name.islower() else name
        if key in merged:
            sep = "\n" if key.lower() == "set-cookie" else ", "
            merged[key] = merged[key] + sep + value
        else:
            merged[key] = value
    return merged


def _attempt(info: AttemptInfo) -> dict[str, Any]:
    return {
        "attempt": info.attempt,
        "startedAt": timestamp(info.started_at),
        "endedAt": timestamp(info.ended_at),
        "durationMs": round(max(0.0, info.ended_at - info.started_at) * 1000, 3),
        "statusCode": info.status_code,
        "error": None if info.error is None else {"kind": info.error_kind, "message": info.error},
        "retryAt": timestamp(info.retry_at),
    }


def _callback_attempt(attempt: CallbackAttempt) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "startedAt": timestamp(attempt.started_at),
        "durationMs": round(max(0.0, attempt.ended_at - attempt.started_at) * 1000, 3),
        "statusCode": attempt.status_code,
        "error": attempt.error,
    }


def record_json(record: ActivationRecord) -> dict[str, Any]:
    """The full record of ``GET /system/activations/ID`` (``response.body`` only when the
    record was read with its body, not in list summaries)."""
    duration = record.duration
    response: dict[str, Any] | None = None
    if record.status_code is not None:
        response = {
            "statusCode": record.status_code,
            "headers": headers_object(record.response_headers),
            "truncated": record.response_truncated,
        }
        if record.response_body is not None:
            text, encoding = encode_body(record.response_body)
            response["body"] = text
            response["bodyEncoding"] = encoding
    return {
        "callId": record.call_id,
        "function": record.function,
        "status": record.status,
        "attempts": record.attempts,
        "createdAt": timestamp(record.created_at),
        "dueAt": timestamp(record.due_at) if record.status in ("queued", "retrying") else None,
        "startedAt": timestamp(record.started_at),
        "endedAt": timestamp(record.ended_at),
        "durationMs": None if duration is None else round(duration * 1000, 3),
        "statusCode": record.status_code,
        "request": {"method": record.method, "path": record.path or "/", "query": record.query},
        "response": response,
        "error": (
            None
            if record.error is None or record.status == "succeeded"
            else {"kind": record.error_kind, "message": record.error}
        ),
        "idempotencyKey": record.idempotency_key,
        "callback": (
            None
            if record.callback_url is None
            else {
                "url": record.callback_url,
                "status": record.callback_status,
                "attempts": record.callback_attempts,
                "log": [_callback_attempt(a) for a in record.callback_log],
            }
        ),
        "attemptLog": [_attempt(a) for a in record.attempt_log],
        "statusUrl": status_path(record.call_id),
    }


def not_found_body(call_id: str, retention: float) -> dict[str, Any]:
    """The 404 body: the record may never have existed, or may have been purged."""
    hours = retention / 3600
    return {
        "error": "not_found",
        "callId": call_id,
        "message": (
            f"no activation record {call_id}: the id is unknown, or the call ended more"
            f" than {hours:g}h ago and its record was purged (activation_retention)"
        ),
    }
