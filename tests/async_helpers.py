"""Helpers for the asynchronous-call tests: a real HTTP receiver on loopback, queue factories."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from watchdog.forwarding import HOP_BY_HOP
from watchdog.gateway.config import GatewayConfig, default_retry_policy
from watchdog.gateway.invoke import InvokeError, function_url
from watchdog.gateway.queue.base import LeasedCall, QueueBackend
from watchdog.gateway.queue.nats import NatsQueue
from watchdog.gateway.queue.sqlite import SqliteQueue
from watchdog.gateway.retry import RetryPolicy
from watchdog.gateway.worker import (
    DEFAULT_RESULT_LIMIT,
    InvokeResult,
    WorkerSettings,
    classify,
    platform_failure,
    read_capped,
    replay_headers,
)

T = TypeVar("T")

# Every backend behind QueueBackend; the contract tests run once per entry. Each factory takes
# the test's BackendPlace and the backend's options.


@dataclass(frozen=True)
class BackendPlace:
    """Where a test's queue lives: a directory (SQLite), or a NATS server and a name prefix
    of its own (so tests sharing the server never see each other's calls)."""

    path: Path
    nats_url: str = ""
    prefix: str = ""


BACKENDS: dict[str, Callable[..., QueueBackend]] = {
    "sqlite": lambda place, **opts: SqliteQueue(place.path / "queue.db", **opts),
    "nats": lambda place, **opts: NatsQueue(place.nats_url, prefix=place.prefix, **opts),
}


class ManualClock:
    """A queue's clock that moves only when a test says so (from the real time at its start,
    so records look as usual): lease expiry is tested by moving it, not by sleeping."""

    def __init__(self) -> None:
        self._now = time.time()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def run(coro: Awaitable[T], timeout: float = 30) -> T:
    """Run ``coro`` on a fresh event loop, bounded in time."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@dataclass
class Received:
    method: str
    path: str
    headers: Message
    body: bytes
    at: float


class Receiver:
    """A real HTTP server on 127.0.0.1 that records every request.

    ``answers`` scripts the replies in order, each ``(status, headers)``; once they run out
    every request gets 200.
    """

    def __init__(self, answers: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.answers = list(answers or [])
        self.requests: list[Received] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._cond:
                    receiver.requests.append(
                        Received(self.command, self.path, self.headers, body, time.time())
                    )
                    status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
                    receiver._cond.notify_all()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 15) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"receiver got {len(self.requests)} request(s), expected {count}"
                    )
                self._cond.wait(left)
            return list(self.requests)

    def wait_for_calls(self, call_ids: list[str], timeout: float = 15) -> list[Received]:
        """Wait until a request with ``X-Call-Id`` came for each of ``call_ids`` (callbacks
        are at-least-once: a call may have more than one)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not set(call_ids) <= {r.headers["X-Call-Id"] for r in self.requests}:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"callbacks missing after {timeout}s")
                self._cond.wait(left)
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class HttpAttemptRunner:
    """Runs a call by sending its request straight to the function's URL (its watchdog): the
    worker's tests run it without a gateway in front.

    Args:
        session: the client session to use.
        url_for: the base URL of a function, None if it is not registered.
        timeout_for: the limit on one attempt of a function, in seconds.
        result_limit: the most response bytes kept (the rest is read and dropped).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url_for: Callable[[str], str | None],
        timeout_for: Callable[[str], float],
        result_limit: int = DEFAULT_RESULT_LIMIT,
    ) -> None:
        self.session = session
        self.url_for = url_for
        self.timeout_for = timeout_for
        self.result_limit = result_limit

    async def invoke(self, call: LeasedCall) -> InvokeResult:
        request = call.request
        started = time.time()
        base = self.url_for(request.function)
        if base is None:
            error = f"function {request.function} is not registered"
            return InvokeResult(platform_failure(started, error), retryable=False)
        target = (request.path or "/") + (f"?{request.query}" if request.query else "")
        try:
            url = function_url(base.rstrip("/"), target)
        except InvokeError as exc:
            return InvokeResult(platform_failure(started, exc.message), retryable=False)
        timeout = self.timeout_for(request.function)
        try:
            async with asyncio.timeout(timeout or None):
                async with self.session.request(
                    request.method,
                    url,
                    headers=replay_headers(call),
                    data=request.body,
                    allow_redirects=False,
                    auto_decompress=False,
                ) as response:
                    body, truncated = await read_capped(response, self.result_limit)
                    headers = tuple(
                        (k, v) for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP
                    )
                    return InvokeResult(
                        classify(response.status, headers, body, truncated, started)
                    )
        except TimeoutError:
            return InvokeResult(platform_failure(started, f"timed out after {timeout:g}s"))
        except aiohttp.ClientConnectorError as exc:
            return InvokeResult(platform_failure(started, f"function unreachable: {exc}"))
        except (aiohttp.ClientError, OSError) as exc:
            error = f"connection to the function failed: {exc.__class__.__name__}: {exc}"
            return InvokeResult(platform_failure(started, error))


def retry_policy(**changes: Any) -> RetryPolicy:
    """The gateway's default retry policy (from its declarations) with ``changes``."""
    return replace(default_retry_policy(), **changes)


def worker_settings(**changes: Any) -> WorkerSettings:
    """Worker settings with the gateway's defaults (from its declarations), then ``changes``."""
    defaults = GatewayConfig.from_args([], {"HOME": "/nonexistent"})
    base = WorkerSettings(concurrency=defaults.async_concurrency, lease_for=defaults.async_lease)
    return replace(base, **changes)
