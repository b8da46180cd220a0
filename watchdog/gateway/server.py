"""The gateway process: listener, the pooled client session, signals and shutdown.

Shutdown, on SIGTERM or SIGINT: ``/healthz`` answers 503, the listener closes, calls in flight
get up to ``write_timeout`` to finish, then the client session closes.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from .. import __version__
from ..server import _signals_set
from .app import GatewayApp
from .config import GatewayConfig
from .invoke import Invoker
from .metrics import GatewayMetrics
from .registry import FunctionRegistry, InMemoryRegistry

log = logging.getLogger("watchdog.gateway")

# Long query strings: Go's servers (the OpenFaaS gateway's) accept request lines and headers up
# to 1 MiB in all; aiohttp's default stops a request line at 8 KiB.
_MAX_LINE = 1024 * 1024
_MAX_FIELD = 64 * 1024


class Gateway:
    """One gateway: the routes of :class:`GatewayApp` served over one pooled client session.

    ``registry`` defaults to an in-memory one holding the configured functions; pass your own
    (e.g. the local runner's) to fill it at run time.
    """

    def __init__(self, config: GatewayConfig, registry: FunctionRegistry | None = None) -> None:
        self.config = config
        self.registry: FunctionRegistry = registry or InMemoryRegistry(config.functions)
        self.metrics = GatewayMetrics()
        self._session: aiohttp.ClientSession | None = None
        self._http: web.ServerRunner | None = None
        self.app: GatewayApp | None = None
        self.port: int | None = None

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Start, serve until ``stop`` is set or a termination signal arrives, then drain."""
        stop = stop or asyncio.Event()
        log.info("Version: %s (gateway)", __version__)
        log.info("Effective configuration: %s", self.config.summary())
        for function in self.registry.list(None):
            log.info("Function %s -> %s", function.key, function.url)
        try:
            await self.start()
            with _signals_set(stop):
                await stop.wait()
                await self.shutdown()
        finally:
            await self.close()

    async def start(self) -> None:
        # One pool for every function: no cap on connections (the per-function limits are the
        # gateway's own), idle connections kept for reuse. Timeouts are the invoker's.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=15)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            max_line_size=_MAX_FIELD,
            max_field_size=_MAX_FIELD,
        )
        invoker = Invoker(
            self.registry,
            self._session,
            self.metrics,
            namespace=self.config.namespace,
            default_timeout=self.config.upstream_timeout,
        )
        self.app = GatewayApp(self.config, self.registry, invoker, self.metrics)
        server = web.Server(
            self.app.dispatch,
            handler_cancellation=True,
            access_log=None,
            auto_decompress=False,
            keepalive_timeout=self.config.read_timeout,
            max_line_size=_MAX_LINE,
            max_field_size=_MAX_FIELD,
        )
        self._http = web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=self.config.write_timeout
        )
        await self._http.setup()
        await web.TCPSite(self._http, port=self.config.port, reuse_address=True).start()
        self.port = int(self._http.addresses[0][1])
        log.info("Gateway listening on port: %s", self.port)

    async def shutdown(self) -> None:
        if self.app is not None:
            self.app.healthy = False
        log.info("Shutting down: draining calls in flight for up to %ss", self.config.write_timeout)
        if self._http is not None:
            await self._http.cleanup()  # waits up to write_timeout, then cancels the rest
            self._http = None
        log.info("Exiting")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        if self._session is not None:
            await self._session.close()
            self._session = None
