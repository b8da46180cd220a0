"""The web console: static files under ``/ui/`` (``GET /`` redirects there) and the one JSON
endpoint its live figures need, ``GET /system/stats``.

The files are package data (``watchdog/gateway/ui/``), read once at start: no build step, no
request leaves the machine. Every file is served with a Content-Security-Policy that allows
only the gateway's own origin, so even a hostile function name that slipped into the page as
markup could not run. The console renders data with ``textContent`` only.
"""

from __future__ import annotations

import time
from importlib.resources import files
from urllib.parse import urlsplit

from ..http import Request, Response, StreamResponse
from .answers import SERVED_BY, json_response, method_not_allowed, refusal, text, unavailable
from .metrics import GatewayMetrics, function_figures
from .queue.base import ListQuery, QueueBackend, QueueUnavailable
from .registry import Function, FunctionRegistry
from .retry import RetryPolicy
from .worker import AsyncWorker

UI_PATH = "/ui/"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Counting retrying and delayed calls reads at most this many records of each.
COUNT_CAP = 1000


def load_assets() -> dict[str, tuple[bytes, str]]:
    """``{file name: (bytes, content type)}`` of the console's files."""
    assets: dict[str, tuple[bytes, str]] = {}
    for entry in files(__package__ or "").joinpath("ui").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            assets[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return assets


def cross_site(request: Request) -> bool:
    """True for a request a page of another site made (Sec-Fetch-Site, else Origin vs Host);
    requests without either header (curl, servers) are not cross-site."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    return urlsplit(origin).netloc.lower() != request.headers.get("Host", "").lower()


def refuse_cross_site() -> Response:
    return refusal(
        403,
        "cross-site request refused: state-changing calls must come from the"
        " gateway's own pages or from non-browser clients",
    )


class Console:
    """Serves the console's files and ``/system/stats``."""

    def __init__(
        self,
        registry: FunctionRegistry,
        metrics: GatewayMetrics,
        queue: QueueBackend,
        worker: AsyncWorker,
        *,
        default_timeout: float,
        default_retry: RetryPolicy,
        default_convert_after: float,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.queue = queue
        self.worker = worker
        self.default_timeout = default_timeout
        self.default_retry = default_retry
        self.default_convert_after = default_convert_after
        self.assets = load_assets()

    async def root(self, request: Request, rest: str) -> StreamResponse:
        """``GET /`` only (this route's prefix matches every path no other route takes)."""
        if rest.partition("?")[0] not in ("", "ui"):
            return text(404, "Not Found")
        response = text(302, "Found")
        response.headers["Location"] = UI_PATH
        return response

    async def static(self, request: Request, rest: str) -> StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed("GET, HEAD")
        name = rest.partition("?")[0] or "index.html"
        asset = self.assets.get(name)
        if asset is None:
            return text(404, "Not Found")
        body, content_type = asset
        response = Response(body=body)
        response.headers["Content-Type"] = content_type
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Served-By"] = SERVED_BY
        return response

    async def stats(self, request: Request, rest: str) -> StreamResponse:
        if rest.partition("?")[0]:
            return text(404, "Not Found")
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed("GET, HEAD")
        figures = function_figures(self.metrics)
        functions = self.registry.list(None)
        try:
            queue = await self._queue()
        except QueueUnavailable as exc:
            return unavailable(exc, None)
        body = {
            "namespaces": sorted({fn.namespace for fn in functions}),
            "functions": [self._function(fn, figures.get(fn.key)) for fn in functions],
            "queue": queue,
        }
        return json_response(200, body)

    def _function(self, fn: Function, figures: dict[str, float | None] | None) -> dict[str, object]:
        retry = fn.retry or self.default_retry
        convert_after = fn.convert_after
        if convert_after is None:
            convert_after = self.default_convert_after
        return {
            "name": fn.name,
            "namespace": fn.namespace,
            "key": fn.key,
            "timeout": fn.timeout if fn.timeout is not None else self.default_timeout,
            "maxConcurrency": fn.max_concurrency,
            "convertAfter": convert_after or None,
            "retry": {
                "maxAttempts": retry.max_attempts,
                "initialBackoff": retry.initial_backoff,
                "maxBackoff": retry.max_backoff,
                "maxEventAge": retry.max_event_age,
                "retryCodes": sorted(retry.retry_codes),
            },
            "figures": figures
            or {
                "invocations": 0,
                "errors": 0,
                "errorRate": None,
                "p50Ms": None,
                "p99Ms": None,
                "inflight": 0,
            },
        }

    async def _queue(self) -> dict[str, object]:
        now = time.time()
        retrying = await self.queue.list(ListQuery(status="retrying", limit=COUNT_CAP))
        queued = await self.queue.list(ListQuery(status="queued", limit=COUNT_CAP))
        delayed = sum(1 for record in queued.items if (record.due_at or 0) > now)
        return {
            "depth": await self.queue.depth(),
            "running": sum(self.worker.running.values()),
            "retrying": len(retrying.items),
            "delayed": delayed,
            "countCap": COUNT_CAP,
            "concurrency": self.worker.settings.concurrency,
        }
