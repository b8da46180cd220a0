"""The watchdog's HTTP server: listening, limits, health, metrics and the shutdown choreography.

Shutdown, on SIGTERM or SIGINT:

1. report unhealthy (``/_/health`` and ``/_/ready`` answer 503) and remove the lock file;
2. keep serving for at most ``healthcheck_interval`` so a load balancer can notice, finishing
   early as soon as nothing is in flight;
3. stop accepting and let in-flight requests finish for up to ``write_timeout``;
4. kill whatever still runs (whole process trees) and exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import time

from . import __version__
from .config import WatchdogConfig
from .health import Health
from .http import HttpServer, Limits, Request, Response, StreamResponse
from .http.express import NOTE
from .limits import (
    Admission,
    Admitted,
    ClientStalled,
    InflightLimiter,
    log_stalled,
    seconds_or_none,
    send_whole,
)
from .logs import FunctionLog, bad_request_log
from .metrics import WatchdogMetrics
from .modes import Runner, build_runner
from .process import ProcessTable
from .responses import sent_status, text_response
from .signals import stop_on_signals
from .targets import refuse_target

log = logging.getLogger("watchdog.server")

_MAX_LINE = 64 * 1024  # request line; long query strings are common behind gateways
_MAX_FIELD = 64 * 1024
_MAX_HEAD = 1024 * 1024  # all header lines together


class Watchdog:
    """One watchdog: a run mode behind limits, health and metrics."""

    def __init__(self, config: WatchdogConfig) -> None:
        self.config = config
        self.processes = ProcessTable()
        self.metrics = WatchdogMetrics(self.processes)
        self.health = Health(None if config.suppress_lock else config.lock_path)
        self.limiter = InflightLimiter(config.max_inflight)
        self.admission = Admission(self.limiter, self.metrics)
        function_log = FunctionLog(
            prefix=config.prefix_logs,
            json_format=config.log_format == "json",
            max_line=config.log_buffer_size,
        )
        self.runner: Runner = build_runner(config, self.processes, self.metrics, function_log)
        self._http: HttpServer | None = None
        self._metrics_http: HttpServer | None = None

    async def serve(self, stop: asyncio.Event | None = None) -> int:
        """Start, serve until ``stop`` is set or a termination signal arrives, then drain.

        Returns the exit status: 0, or the upstream's when the run mode ends the watchdog.
        """
        stop = stop or asyncio.Event()
        self._log_start()
        self.processes.start()
        try:
            await self.runner.start()
            await self._listen()
            self.health.mark_serving()
            with stop_on_signals(stop):
                status = await self._until_stopped(stop)
                await self._shutdown()
            return status
        finally:
            await self._close()

    async def _until_stopped(self, stop: asyncio.Event) -> int:
        waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(stop.wait())]
        runner_exit = self.runner.exit_status()
        if runner_exit is not None:
            waiters.append(runner_exit)  # type: ignore[arg-type]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        waiters[0].cancel()
        if runner_exit is not None and runner_exit.done():
            status = runner_exit.result()
            log.error("The upstream exited (status %d) and upstream_restart is off", status)
            return status if status > 0 else 1 if status < 0 else 0
        return 0

    async def _listen(self) -> None:
        limits = Limits(
            # Bounds how long a client may take to send its head, and stay idle between
            # requests; Go's IdleTimeout defaults to ReadTimeout too.
            head_timeout=seconds_or_none(self.config.read_timeout),
            max_line=_MAX_LINE,
            max_field=_MAX_FIELD,
            max_head=_MAX_HEAD,
        )
        express = self.runner.express(self.admission)
        self._http = HttpServer(self._dispatch, limits, bad_request_log(), express)
        await self._http.listen(self.config.port, reuse_address=True)
        log.info("Listening on port: %s", self._http.port)
        self._metrics_http = HttpServer(self.metrics.serve, limits, bad_request_log())
        await self._metrics_http.listen(self.config.metrics_port)
        log.info("Metrics listening on port: %s", self._metrics_http.port)

    async def _shutdown(self) -> None:
        self.health.start_draining()
        interval = self.config.healthcheck_interval
        log.info("Shutting down: unhealthy now, in flight: %d", self.limiter.inflight)
        try:
            await asyncio.wait_for(self.limiter.idle.wait(), interval)
        except TimeoutError:
            pass
        log.info("No new connections allowed, draining: %d requests", self.limiter.inflight)
        if self._http is not None:
            # Waits up to write_timeout, then cancels the rest.
            await self._http.shutdown(seconds_or_none(self.config.write_timeout))
            self._http = None
        log.info("Exiting. In flight when stopped: %d", self.limiter.inflight)

    async def _close(self) -> None:
        for http in (self._http, self._metrics_http):
            if http is not None:
                await http.shutdown(0)
        await self.runner.stop(self.config.kill_grace)
        self.processes.close()
        self.health.remove_lock()

    # -- requests ---------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> StreamResponse:
        refusal = _refuse_target(request)
        if refusal is not None:
            return refusal
        path = request.path
        if path == "/_/health":
            return await self._probe(request, readiness=False)
        if path == "/_/ready":
            return await self._probe(request, readiness=True)
        return await self._invoke(request)

    async def _invoke(self, request: Request) -> StreamResponse:
        admitted = request.state.get(NOTE)
        if isinstance(admitted, Admitted):  # by the express, which handed it over
            started = admitted.started
        else:
            started = time.monotonic()
            if not self.admission.admit():
                return self._refuse_inflight(request, started)
        status = 500
        try:
            response = await self.runner.handle(request, started)
            status = response.status
            if not response.prepared:
                await self._send(request, response)
            return response
        except asyncio.CancelledError:
            # The client went away (nginx's convention), unless an answer had gone out.
            status = sent_status(request) or 499
            raise
        finally:
            self.admission.discharge(status, request.method, started)

    def _refuse_inflight(self, request: Request, started: float) -> Response:
        self.metrics.rejected.labels(reason="max_inflight").inc()
        self.metrics.observe(429, request.method, time.monotonic() - started)
        refusal = text_response(429, self.limiter.refusal_text(), started)
        refusal.headers["Retry-After"] = "1"
        return refusal

    async def _send(self, request: Request, response: StreamResponse) -> None:
        """Write a response the mode returned unsent, within write_timeout, while the request
        still holds its in-flight slot; a client that does not take it is cut off."""
        try:
            await send_whole(request, response, seconds_or_none(self.config.write_timeout))
        except ClientStalled:
            log_stalled(request.method, request.path)
            request.transport.abort()
        except ConnectionError:
            pass  # the client went away: nothing to tell anyone

    async def _probe(self, request: Request, *, readiness: bool) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(status=405, headers={"Allow": "GET, HEAD"})
        if not (self.health.live and self.runner.healthy()):
            return Response(status=503, text="Service Unavailable\n")
        if readiness and self.limiter.saturated:
            return Response(status=429, text="Too Many Requests\n")
        if readiness and not await self.runner.ready():
            return Response(status=503, text="Service Unavailable\n")
        return Response(text="OK")

    def _log_start(self) -> None:
        log.info("Version: %s", __version__)
        summary = " ".join(f"{k}={v!r}" for k, v in self.config.summary().items())
        log.info("Effective configuration: %s", summary)


def _refuse_target(request: Request) -> Response | None:
    """Only origin-form targets are served, in every mode (:mod:`.targets`), so no request can
    steer http mode's upstream address."""
    refused = refuse_target(request.method, request.raw_path, request.version)
    if refused is None:
        return None
    return refused.apply(text_response(refused.status, refused.message + "\n", time.monotonic()))
