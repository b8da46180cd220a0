"""The activation record of the NATS backend: one JSON value per call in the records bucket,
and its conversions to what :mod:`.base` hands out."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, cast

from . import transitions
from .base import (
    ActivationRecord,
    CallbackStatus,
    CallRequest,
    ErrorKind,
    Headers,
    Status,
)
from .entries import attempt_entry, attempt_of, callback_attempt_of, callback_entry
from .transitions import CallState

_PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


@dataclass(slots=True)
class Record:
    """The stored activation record (JSON in the records bucket)."""

    call_id: str
    function: str
    status: str
    method: str
    path: str
    query: str
    headers: list[list[str]]
    body: str | None  # base64; dropped once the call ended
    callback_url: str | None
    idempotency_key: str | None
    created_at: float
    delay: float
    seq: int  # creation order for listing: see creation_stamp
    job: int = 0  # the call job this record expects (0: none, the call ended; < 0: a token)
    due_at: float | None = None  # queued/retrying: may run from; running: lease expiry
    owner: str | None = None
    attempts: int = 0
    started_at: float | None = None
    attempt_started_at: float | None = None
    ended_at: float | None = None
    status_code: int | None = None
    response_headers: list[list[str]] = field(default_factory=list)
    response_body: str | None = None  # base64
    response_truncated: bool = False
    error: str | None = None
    error_kind: str | None = None
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    callback_status: str | None = None
    callback_attempts: int = 0
    callback_due: float | None = None  # pending: next try, or the running delivery's expiry
    callback_owner: str | None = None
    callback_job: int = 0
    callback_log: list[dict[str, Any]] = field(default_factory=list)

    def encode(self) -> bytes:
        # Not dataclasses.asdict: its deep copy was most of an enqueue's CPU time.
        values = {name: getattr(self, name) for name in _FIELDS}
        return _ENCODER.encode(values).encode()

    @classmethod
    def decode(cls, data: bytes) -> Record:
        return cls(**json.loads(data))

    def request(self) -> CallRequest:
        return CallRequest(
            function=self.function,
            method=self.method,
            path=self.path,
            query=self.query,
            headers=headers_of(self.headers),
            body=unb64(self.body),
            callback_url=self.callback_url,
            idempotency_key=self.idempotency_key,
            delay=self.delay,
            call_id=self.call_id,
        )

    def state(self) -> CallState:
        """The call's state, for :mod:`.transitions` to decide on."""
        return CallState(
            created_at=self.created_at,
            delay=self.delay,
            has_callback=self.callback_url is not None,
            status=cast(Status, self.status),
            due_at=self.due_at,
            owner=self.owner,
            attempts=self.attempts,
            started_at=self.started_at,
            attempt_started_at=self.attempt_started_at,
            ended_at=self.ended_at,
            status_code=self.status_code,
            response_headers=headers_of(self.response_headers),
            response_body=None if self.response_body is None else unb64(self.response_body),
            response_truncated=self.response_truncated,
            error=self.error,
            error_kind=cast("ErrorKind | None", self.error_kind),
            attempt_log=tuple(attempt_of(entry) for entry in self.attempt_log),
            body_stored=self.body is not None,
            callback_status=cast("CallbackStatus | None", self.callback_status),
            callback_attempts=self.callback_attempts,
            callback_due=self.callback_due,
            callback_owner=self.callback_owner,
            callback_log=tuple(callback_attempt_of(entry) for entry in self.callback_log),
        )

    def with_state(self, before: CallState, after: CallState) -> Record:
        """A copy of this record (whose state is ``before``) in state ``after``: only what
        changed is converted, so a lease extension never re-encodes a response body."""
        changes: dict[str, Any] = {
            name: getattr(after, name)
            for name in _PLAIN_STATE
            if getattr(before, name) != getattr(after, name)
        }
        if before.response_headers != after.response_headers:
            changes["response_headers"] = header_pairs(after.response_headers)
        if before.response_body is not after.response_body:
            body = after.response_body
            changes["response_body"] = None if body is None else b64(body)
        if before.attempt_log != after.attempt_log:
            changes["attempt_log"] = [attempt_entry(info) for info in after.attempt_log]
        if before.callback_log != after.callback_log:
            changes["callback_log"] = [callback_entry(item) for item in after.callback_log]
        if not after.body_stored:
            changes["body"] = None
        return replace(self, **changes)


_PLAIN_STATE = (
    "status",
    "due_at",
    "owner",
    "attempts",
    "started_at",
    "attempt_started_at",
    "ended_at",
    "status_code",
    "response_truncated",
    "error",
    "error_kind",
    "callback_status",
    "callback_attempts",
    "callback_due",
    "callback_owner",
)
"""State fields a record holds as they are."""


def plain_state(state: CallState) -> dict[str, Any]:
    """The fields of ``state`` a record holds as they are."""
    return {name: getattr(state, name) for name in _PLAIN_STATE}


_FIELDS = tuple(item.name for item in fields(Record))
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps makes one a call


_last_stamp = 0


def creation_stamp() -> int:
    """A new record's place in listings, newest first: the wall clock's nanoseconds, strictly
    increasing in this process. (Records of earlier versions carry their first job's stream
    sequence, far smaller: they are listed as older, which they are.)"""
    global _last_stamp
    _last_stamp = max(_last_stamp + 1, time.time_ns())
    return _last_stamp


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def headers_of(pairs: list[list[str]]) -> Headers:
    return tuple((str(name), str(value)) for name, value in pairs)


def header_pairs(headers: Headers) -> list[list[str]]:
    return [[name, value] for name, value in headers]


def record_key(call_id: str) -> str:
    """The KV key of a call: the id itself when it is made of safe characters (UUIDs are),
    else ``=`` and its URL-safe base64, which no plain key starts with."""
    if _PLAIN_KEY_RE.match(call_id):
        return call_id
    return "=" + base64.urlsafe_b64encode(call_id.encode()).decode().rstrip("=")


def idempotency_key(function: str, key: str) -> str:
    return hashlib.sha256(f"{function}\0{key}".encode()).hexdigest()


def claim_value(call_id: str, now: float) -> bytes:
    """An idempotency key's value: the call holding it and when (``now``) it was claimed."""
    return f"{call_id} {now}".encode()


def claim_holder(value: bytes | None) -> tuple[str, float]:
    call_id, _, at = (value or b"").decode().partition(" ")
    try:
        return call_id, float(at)
    except ValueError:
        return call_id, 0.0


def activation(rec: Record, with_body: bool) -> ActivationRecord:
    state = rec.state()
    return transitions.activation(
        state,
        call_id=rec.call_id,
        function=rec.function,
        method=rec.method,
        path=rec.path,
        query=rec.query,
        idempotency_key=rec.idempotency_key,
        callback_url=rec.callback_url,
        response_body=(state.response_body or b"") if with_body else None,
    )
