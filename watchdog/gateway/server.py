"""The gateway process: listener, the pools of connections to the functions, the queue of
asynchronous calls with its worker, callback dispatcher and retention purge, signals and
shutdown.

Shutdown, on SIGTERM or SIGINT: ``/healthz`` answers 503, the listener closes, calls in flight
get up to ``write_timeout`` to finish; then the worker stops leasing and lets its running calls
finish for up to ``write_timeout`` too (what remains runs again after a restart: leases), the
queue closes, then the connection pools.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .. import __version__
from ..http import HttpServer, Limits
from ..logs import bad_request_log
from ..signals import stop_on_signals
from .app import FUNCTION_PREFIX, BasicAuth, Converter, GatewayApp, Route
from .async_api import AsyncCalls
from .callbacks import CallbackDispatcher, CallbackSettings
from .config import GatewayConfig
from .console import UI_PATH, Console
from .doors import DoorServices, mount
from .express import GatewayExpress
from .invoke import InvokeError, Invoker
from .metrics import GatewayMetrics
from .proxy import FunctionUpstreams
from .queue import QueueBackend
from .queue.factory import build_queue
from .registry import FunctionRegistry, InMemoryRegistry
from .retry import RetryPolicy
from .worker import AsyncWorker, InvokePathRunner, WorkerSettings

log = logging.getLogger("watchdog.gateway")

# Long query strings: Go's servers (the OpenFaaS gateway's) accept request lines and headers up
# to 1 MiB in all.
_MAX_LINE = 1024 * 1024
_MAX_FIELD = 64 * 1024
_MAX_HEAD = 1024 * 1024
_IDLE_UPSTREAM = 15.0
"""Seconds an idle connection to a function is kept for reuse."""


class Gateway:
    """One gateway: the routes of :class:`GatewayApp`, calling functions through keep-alive
    connection pools (:class:`FunctionUpstreams`).

    ``registry`` defaults to an in-memory one holding the configured functions; pass your own
    (e.g. the local runner's) to fill it at run time.
    """

    def __init__(self, config: GatewayConfig, registry: FunctionRegistry | None = None) -> None:
        self.config = config
        self.registry: FunctionRegistry = registry or InMemoryRegistry(config.functions)
        self.metrics = GatewayMetrics()
        self._upstreams: FunctionUpstreams | None = None
        self._http: HttpServer | None = None
        self.app: GatewayApp | None = None
        self.port: int | None = None
        self.queue: QueueBackend | None = None
        self._background: list[asyncio.Task[None]] = []
        self._stop_background = asyncio.Event()

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Start, serve until ``stop`` is set or a termination signal arrives, then drain."""
        stop = stop or asyncio.Event()
        log.info("Version: %s (gateway)", __version__)
        log.info("Effective configuration: %s", self.config.summary())
        for function in self.registry.list(None):
            log.info("Function %s -> %s", function.key, function.url)
        try:
            await self.start()
            with stop_on_signals(stop):
                await stop.wait()
                await self.shutdown()
        finally:
            await self.close()

    async def start(self) -> None:
        # A pool per watchdog address: no cap on connections (the per-function limits are the
        # gateway's own), idle ones kept for reuse. Timeouts are the invoker's.
        self._upstreams = FunctionUpstreams(idle_timeout=_IDLE_UPSTREAM)
        invoker = Invoker(
            self.registry,
            self._upstreams,
            self.metrics,
            namespace=self.config.namespace,
            default_timeout=self.config.upstream_timeout,
        )
        auth = BasicAuth(self.config.credentials)
        routes, converter = await self._start_async(invoker, auth)
        self.app = GatewayApp(
            self.config, self.registry, invoker, self.metrics, auth, routes, converter
        )
        limits = Limits(
            # How long a client may take to send a head, and stay idle between requests.
            head_timeout=self.config.read_timeout,
            max_line=_MAX_LINE,
            max_field=_MAX_FIELD,
            max_head=_MAX_HEAD,
            # As the gateway has always answered a longer target (aiohttp's server did).
            line_status=400,
        )
        express = self._express(invoker, auth, converter)
        self._http = HttpServer(self.app.dispatch, limits, bad_request_log(), express)
        await self._http.listen(self.config.port, reuse_address=True)
        self.port = self._http.port
        log.info("Gateway listening on port: %s", self.port)

    def _express(
        self, invoker: Invoker, auth: BasicAuth, converter: Converter | None
    ) -> GatewayExpress | None:
        """The hot path of ``/function/`` calls, unless basic auth guards them (checked on the
        ordinary path only)."""
        if self.config.basic_auth_invoke and auth.enabled:
            return None
        assert self.app is not None
        others = tuple(
            route.prefix
            for route in self.app.routes
            if route.prefix.startswith(FUNCTION_PREFIX) and route.prefix != FUNCTION_PREFIX
        )
        return GatewayExpress(invoker, converter, others)

    async def _start_async(
        self, invoker: Invoker, auth: BasicAuth
    ) -> tuple[list[Route], AsyncCalls]:
        """Open the queue; start the worker, the callback dispatcher and the purge. Returns
        the routes that need the queue (the asynchronous API, the console, the front doors)
        and the converter of slow synchronous calls."""
        config = self.config
        queue, where = build_queue(config)
        await queue.open()
        self.queue = queue
        runner = InvokePathRunner(invoker, result_limit=config.max_result_body)

        def policy_for(ref: str) -> RetryPolicy:
            try:
                return invoker.resolve(ref).retry or config.retry
            except InvokeError:
                return config.retry

        worker = AsyncWorker(
            queue,
            runner,
            policy_for=policy_for,
            limit_for=runner.limit_for,
            settings=WorkerSettings(
                concurrency=config.async_concurrency, lease_for=config.async_lease
            ),
        )
        secret = config.callback_secret.encode() or None
        dispatcher = CallbackDispatcher(
            queue, CallbackSettings(secret=secret, policy=config.callback_policy)
        )
        calls = AsyncCalls(config, queue, invoker, worker, runner)
        console = Console(
            self.registry,
            self.metrics,
            queue,
            worker,
            default_timeout=config.upstream_timeout,
            default_retry=config.retry,
            default_convert_after=config.convert_after,
        )
        services = DoorServices(config, self.registry, invoker, queue, worker, auth.authorized)
        door_routes, doors = mount(services)
        for door in doors:
            log.info("Front door: %s", door)
        routes = [*_queue_routes(config, calls, console), *door_routes]
        stop = self._stop_background
        self._background = [
            asyncio.create_task(worker.run(stop, drain_timeout=config.write_timeout)),
            asyncio.create_task(dispatcher.run(stop)),
            asyncio.create_task(self._purge_loop(queue, stop)),
        ]
        log.info(
            "Queue: %s at %s, %d calls unfinished", config.queue_backend, where, await queue.depth()
        )
        return routes, calls

    async def _purge_loop(self, queue: QueueBackend, stop: asyncio.Event) -> None:
        """Delete records of calls that ended more than ``activation_retention`` ago."""
        retention = self.config.activation_retention
        period = min(60.0, max(0.05, retention / 10))
        # The first pass one period after the start, not at it: with the NATS queue a pass
        # reads the whole record bucket, which is no work for a gateway's first seconds
        # (taking over a backlog, several gateways starting together).
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), period)
                return
            except TimeoutError:
                pass
            try:
                purged = await queue.purge(time.time() - retention)
            except Exception:  # noqa: BLE001 - try again next period
                log.exception("purging activation records failed")
            else:
                if purged:
                    log.info("Purged %d activation records older than %ss", purged, retention)

    async def shutdown(self) -> None:
        if self.app is not None:
            self.app.healthy = False
        log.info("Shutting down: draining calls in flight for up to %ss", self.config.write_timeout)
        if self._http is not None:
            await self._http.shutdown(self.config.write_timeout)  # then cancels the rest
            self._http = None
        await self._stop_async()
        log.info("Exiting")

    async def _stop_async(self) -> None:
        self._stop_background.set()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
            self._background = []
        if self.queue is not None:
            await self.queue.close()
            self.queue = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.shutdown(0)
            self._http = None
        await self._stop_async()
        if self._upstreams is not None:
            self._upstreams.close()
            self._upstreams = None


def _queue_routes(config: GatewayConfig, calls: AsyncCalls, console: Console) -> list[Route]:
    """The asynchronous API and the console. DELETE /async-function/ID cancels and returns a
    record: guarded like /system/*."""
    records = frozenset({"DELETE"}) if config.basic_auth else frozenset()
    return [
        Route(
            "/async-function/",
            calls.accept,
            protected=config.basic_auth_invoke,
            protected_methods=records,
            same_site=True,
        ),
        Route(
            "/system/activations", calls.activations, protected=config.basic_auth, same_site=True
        ),
        Route("/", console.root, protected=False),
        Route(UI_PATH, console.static, protected=config.basic_auth),
        Route("/system/stats", console.stats, protected=config.basic_auth),
    ]
