"""The activation record of the NATS backend: one JSON value per call in the records bucket,
and its conversions to what :mod:`.base` hands out."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass, field, fields
from typing import Any, cast

from .base import (
    ActivationRecord,
    CallbackJob,
    CallbackStatus,
    CallRequest,
    ErrorKind,
    Headers,
    Status,
)
from .entries import attempt_of, callback_attempt_of

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
    seq: int  # creation order for listing: the stream sequence of the first job
    job: int = 0  # the call job this record expects (0: none, the call ended)
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
        return json.dumps(values, separators=(",", ":")).encode()

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


_FIELDS = tuple(item.name for item in fields(Record))


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


def claim_value(call_id: str) -> bytes:
    """An idempotency key's value: the call holding it and when it was claimed."""
    return f"{call_id} {time.time()}".encode()


def claim_holder(value: bytes | None) -> tuple[str, float]:
    call_id, _, at = (value or b"").decode().partition(" ")
    try:
        return call_id, float(at)
    except ValueError:
        return call_id, 0.0


def activation(rec: Record, with_body: bool) -> ActivationRecord:
    return ActivationRecord(
        call_id=rec.call_id,
        function=rec.function,
        status=cast(Status, rec.status),
        attempts=rec.attempts,
        created_at=rec.created_at,
        method=rec.method,
        path=rec.path,
        query=rec.query,
        due_at=rec.due_at,
        started_at=rec.started_at,
        ended_at=rec.ended_at,
        status_code=rec.status_code,
        response_headers=headers_of(rec.response_headers),
        response_body=unb64(rec.response_body) if with_body else None,
        response_truncated=rec.response_truncated,
        error=rec.error,
        error_kind=cast("ErrorKind | None", rec.error_kind),
        idempotency_key=rec.idempotency_key,
        callback_url=rec.callback_url,
        callback_status=cast("CallbackStatus | None", rec.callback_status),
        callback_attempts=rec.callback_attempts,
        attempt_log=tuple(attempt_of(entry) for entry in rec.attempt_log),
        callback_log=tuple(callback_attempt_of(entry) for entry in rec.callback_log),
    )


def callback_job(rec: Record) -> CallbackJob:
    assert rec.callback_url is not None and rec.callback_due is not None
    return CallbackJob(
        call_id=rec.call_id,
        function=rec.function,
        url=rec.callback_url,
        attempt=rec.callback_attempts,
        expires=rec.callback_due,
        owner=rec.callback_owner or "",
        status=cast(Status, rec.status),
        status_code=rec.status_code,
        headers=headers_of(rec.response_headers),
        body=unb64(rec.response_body),
        truncated=rec.response_truncated,
        error=rec.error,
        error_kind=cast("ErrorKind | None", rec.error_kind),
        started_at=rec.attempt_started_at,
        ended_at=rec.ended_at,
        call_attempts=rec.attempts,
        created_at=rec.created_at,
    )
