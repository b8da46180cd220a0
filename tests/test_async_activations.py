"""How activation records are shown: JSON names, times, text or base64 bodies."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from async_helpers import run

from watchdog.gateway.activations import accepted_body, not_found_body, record_json
from watchdog.gateway.queue.base import ActivationRecord, AttemptResult, CallRequest
from watchdog.gateway.queue.sqlite import SqliteQueue


def _records(tmp_path: Path) -> list[ActivationRecord]:
    async def body() -> list[ActivationRecord]:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:
            text = CallRequest("f", method="PUT", path="/x", query="a=1", callback_url="http://h/")
            binary = CallRequest("f", idempotency_key="k")
            failed = CallRequest("f")
            queued = CallRequest("f", delay=60)
            for request in (text, binary, failed, queued):
                await queue.enqueue(request)
            t = time.time()
            headers = (("content-type", "text/plain"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2"))
            for body, request in ((b"h\xc3\xa9llo", text), (b"\xff\x00", binary)):
                leased = (await queue.lease(owner="w", limit=1, lease_for=30)).calls[0]
                assert leased.call_id == request.call_id
                await queue.complete(leased, AttemptResult(t, t + 0.5, 200, headers, body))
            leased = (await queue.lease(owner="w", limit=1, lease_for=30)).calls[0]
            result = AttemptResult(t, t, None, error="timed out after 1s", error_kind="platform")
            await queue.fail(leased, result)
            found = [await queue.get(r.call_id) for r in (text, binary, failed, queued)]
            return [r for r in found if r is not None]
        finally:
            await queue.close()

    return run(body())


def test_record_json(tmp_path: Path) -> None:
    text, binary, failed, queued = (record_json(r) for r in _records(tmp_path))
    assert text["status"] == "succeeded" and text["attempts"] == 1
    assert text["request"] == {"method": "PUT", "path": "/x", "query": "a=1"}
    assert text["response"]["body"] == "héllo" and text["response"]["bodyEncoding"] == "utf-8"
    assert text["response"]["headers"] == {"Content-Type": "text/plain", "Set-Cookie": "a=1\nb=2"}
    assert text["response"]["truncated"] is False
    assert text["createdAt"].endswith("Z") and text["error"] is None and text["dueAt"] is None
    assert text["callback"]["url"] == "http://h/" and text["callback"]["status"] == "pending"
    assert text["attemptLog"][0]["durationMs"] == 500.0
    assert binary["response"]["bodyEncoding"] == "base64"
    assert base64.b64decode(binary["response"]["body"]) == b"\xff\x00"
    assert binary["idempotencyKey"] == "k" and binary["callback"] is None
    assert failed["status"] == "failed" and failed["response"] is None
    assert failed["error"] == {"kind": "platform", "message": "timed out after 1s"}
    assert queued["status"] == "queued" and queued["dueAt"] is not None
    assert queued["startedAt"] is None and queued["durationMs"] is None


def test_accepted_and_not_found_bodies() -> None:
    assert accepted_body("abc") == {
        "callId": "abc",
        "status": "queued",
        "statusUrl": "/system/activations/abc",
    }
    missing = not_found_body("abc", 72 * 3600)
    assert missing["error"] == "not_found" and "72h" in missing["message"]
