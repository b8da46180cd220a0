"""How a call's :class:`~.transitions.CallState` is stored in a row of the SQLite ``calls``
table: the columns to select it by, and the columns a transition changed (only those are
written, so a lease extension never rewrites a response body)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

from .base import AttemptInfo, CallbackAttempt, CallbackStatus, ErrorKind, Headers, Status
from .entries import attempt_entry, attempt_of, callback_attempt_of, callback_entry
from .transitions import CallState

STATE_COLUMNS = (
    "created_at, delay, callback_url IS NOT NULL, status, due_at, lease_owner, attempts,"
    " started_at, attempt_started_at, ended_at, status_code, response_headers, response_body,"
    " response_truncated, error, error_kind, attempt_log, body IS NOT NULL, callback_status,"
    " callback_attempts, callback_due, callback_owner, callback_log"
)
STATE_WIDTH = STATE_COLUMNS.count(",") + 1


def headers_json(headers: Headers) -> str:
    return json.dumps([[name, value] for name, value in headers], separators=(",", ":"))


def headers_from(text: str | None) -> Headers:
    if not text:
        return ()
    return tuple((str(name), str(value)) for name, value in json.loads(text))


def attempt_log_json(log: tuple[AttemptInfo, ...]) -> str:
    return json.dumps([attempt_entry(info) for info in log], separators=(",", ":"))


def callback_log_json(log: tuple[CallbackAttempt, ...]) -> str:
    return json.dumps([callback_entry(item) for item in log], separators=(",", ":"))


def attempt_log(text: str) -> tuple[AttemptInfo, ...]:
    return tuple(attempt_of(entry) for entry in json.loads(text))


def callback_log(text: str) -> tuple[CallbackAttempt, ...]:
    return tuple(callback_attempt_of(entry) for entry in json.loads(text))


def state_of(row: Sequence[Any]) -> CallState:
    """The state from the :data:`STATE_COLUMNS` of a row, in that order."""
    (created_at, delay, has_callback, status, due_at, owner, attempts, started_at) = row[:8]
    (attempt_started_at, ended_at, status_code, headers, body, truncated, error) = row[8:15]
    (error_kind, log, body_stored, callback_status, callback_attempts) = row[15:20]
    (callback_due, callback_owner, callbacks) = row[20:]
    return CallState(
        created_at=created_at,
        delay=delay,
        has_callback=bool(has_callback),
        status=cast(Status, status),
        due_at=due_at,
        owner=owner,
        attempts=attempts,
        started_at=started_at,
        attempt_started_at=attempt_started_at,
        ended_at=ended_at,
        status_code=status_code,
        response_headers=headers_from(headers),
        response_body=None if body is None else bytes(body),
        response_truncated=bool(truncated),
        error=error,
        error_kind=cast("ErrorKind | None", error_kind),
        attempt_log=attempt_log(log),
        body_stored=bool(body_stored),
        callback_status=cast("CallbackStatus | None", callback_status),
        callback_attempts=callback_attempts,
        callback_due=callback_due,
        callback_owner=callback_owner,
        callback_log=callback_log(callbacks),
    )


def _same(value: Any) -> Any:
    return value


_STORED: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("status", "status", _same),
    ("due_at", "due_at", _same),
    ("owner", "lease_owner", _same),
    ("attempts", "attempts", _same),
    ("started_at", "started_at", _same),
    ("attempt_started_at", "attempt_started_at", _same),
    ("ended_at", "ended_at", _same),
    ("status_code", "status_code", _same),
    ("response_headers", "response_headers", headers_json),
    ("response_body", "response_body", _same),
    ("response_truncated", "response_truncated", int),
    ("error", "error", _same),
    ("error_kind", "error_kind", _same),
    ("attempt_log", "attempt_log", attempt_log_json),
    ("callback_status", "callback_status", _same),
    ("callback_attempts", "callback_attempts", _same),
    ("callback_due", "callback_due", _same),
    ("callback_owner", "callback_owner", _same),
    ("callback_log", "callback_log", callback_log_json),
)
"""State field, its column, and how the column holds it (``body_stored`` is ``body``)."""


def changed_columns(before: CallState | None, after: CallState) -> dict[str, Any]:
    """The columns to write for ``after`` (all of them for a new call, ``before`` None)."""
    columns = {
        column: encode(getattr(after, name))
        for name, column, encode in _STORED
        if before is None or getattr(before, name) != getattr(after, name)
    }
    if not after.body_stored and (before is None or before.body_stored):
        columns["body"] = None
    return columns
