"""How the attempt and callback-delivery logs of a record are stored: one JSON object per
entry, the same in every backend."""

from __future__ import annotations

from typing import Any, cast

from .base import AttemptInfo, CallbackAttempt, ErrorKind


def attempt_entry(info: AttemptInfo) -> dict[str, Any]:
    return {
        "attempt": info.attempt,
        "startedAt": info.started_at,
        "endedAt": info.ended_at,
        "statusCode": info.status_code,
        "error": info.error,
        "errorKind": info.error_kind,
        "retryAt": info.retry_at,
    }


def attempt_of(entry: dict[str, Any]) -> AttemptInfo:
    return AttemptInfo(
        attempt=int(entry["attempt"]),
        started_at=float(entry["startedAt"]),
        ended_at=float(entry["endedAt"]),
        status_code=entry.get("statusCode"),
        error=entry.get("error"),
        error_kind=cast("ErrorKind | None", entry.get("errorKind")),
        retry_at=entry.get("retryAt"),
    )


def callback_entry(attempt: CallbackAttempt) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "startedAt": attempt.started_at,
        "endedAt": attempt.ended_at,
        "statusCode": attempt.status_code,
        "error": attempt.error,
    }


def callback_attempt_of(entry: dict[str, Any]) -> CallbackAttempt:
    return CallbackAttempt(
        attempt=int(entry["attempt"]),
        started_at=float(entry["startedAt"]),
        ended_at=float(entry["endedAt"]),
        status_code=entry.get("statusCode"),
        error=entry.get("error"),
    )
