"""mode=http: run ``fprocess`` once as a long-lived HTTP upstream and proxy every request to it.

Beyond the of-watchdog: the watchdog is only ready once the upstream accepts connections (and
``ready_path`` answers 2xx); a crashed upstream is restarted with backoff while requests get a
quick 503; an upstream that keeps timing out is declared hung and restarted; a known
Content-Length is kept; responses are relayed write by write; WebSockets pass under the same
limits.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from ..config import WatchdogConfig, parse_duration
from ..limits import (
    BodyTimeout,
    BodyTooLarge,
    ClientStalled,
    seconds_or_none,
    within_write_timeout,
)
from ..logs import FunctionLog
from ..process import ProcessTable, resolve_program
from ..proxy import (
    CLIENT_AUTO_HEADERS,
    RequestBody,
    UpstreamError,
    abort_connection,
    forwarded_headers,
    open_upstream,
    relay,
    response_for,
    response_headers,
)
from ..responses import (
    DURATION_HEADER,
    duration_value,
    format_seconds,
    note_sent,
    text_response,
)
from ..supervisor import Supervisor

log = logging.getLogger("watchdog.http")

_PROBE_INTERVAL = 0.02
_PROBE_TIMEOUT = 2.0


class UpstreamStartError(Exception):
    """The upstream never became ready within upstream_start_timeout."""


class HttpRunner:
    """Supervises the upstream and proxies requests to it."""

    def __init__(
        self, config: WatchdogConfig, processes: ProcessTable, function_log: FunctionLog
    ) -> None:
        self.config = config
        self.processes = processes
        self.function_log = function_log
        self.base_url = config.upstream_url
        parts = urlsplit(config.upstream_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._session: aiohttp.ClientSession | None = None
        self._supervisor: Supervisor | None = None
        self._available = False  # the upstream runs and has accepted a connection
        self._consecutive_timeouts = 0
        self._watcher: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        env = dict(self.config.environ)
        program = resolve_program(self.config.fprocess, env.get("PATH"))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
            skip_auto_headers=CLIENT_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._supervisor = Supervisor(
            self.processes,
            program,
            self.config.fprocess,
            env,
            self.function_log,
            restart=self.config.upstream_restart,
            grace=self.config.kill_grace,
        )
        self._supervisor.start()
        try:
            async with asyncio.timeout(self.config.upstream_start_timeout or None):
                await self._wait_until_usable()
        except TimeoutError:
            limit = format_seconds(self.config.upstream_start_timeout)
            raise UpstreamStartError(
                f"the upstream did not accept connections at {self.base_url} within "
                f"upstream_start_timeout={limit}"
            ) from None
        self._watcher = asyncio.ensure_future(self._watch_restarts())
        log.info("Upstream ready at %s", self.base_url)

    def healthy(self) -> bool:
        return self._available

    async def ready(self) -> bool:
        if not self._available:
            return False
        return not self.config.ready_path or await self._ready_path_answers()

    def exit_status(self) -> asyncio.Future[int] | None:
        return self._supervisor.final_status if self._supervisor else None

    async def stop(self, grace: float) -> None:
        self._available = False
        if self._watcher is not None:
            self._watcher.cancel()
        if self._supervisor is not None:
            await self._supervisor.stop()
        if self._session is not None:
            await self._session.close()

    async def _wait_until_usable(self) -> None:
        assert self._supervisor is not None
        while True:
            await self._supervisor.started.wait()
            if await self._accepts_connections() and (
                not self.config.ready_path or await self._ready_path_answers()
            ):
                self._available = True
                return
            await asyncio.sleep(_PROBE_INTERVAL)

    async def _watch_restarts(self) -> None:
        """Track the upstream: unavailable from its exit until a new one accepts connections."""
        assert self._supervisor is not None
        while True:
            child = self._supervisor.child
            assert child is not None
            await asyncio.shield(child.exited)
            self._available = False
            await self._wait_until_usable()
            self._consecutive_timeouts = 0
            log.info("Upstream available again")

    async def _accepts_connections(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port), _PROBE_TIMEOUT
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    async def _ready_path_answers(self) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(
                self.base_url + self.config.ready_path,
                timeout=aiohttp.ClientTimeout(total=_PROBE_TIMEOUT),
            ) as probe:
                return 200 <= probe.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False

    # -- requests -------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest, started: float) -> web.StreamResponse:
        if not self._available:
            return text_response(503, "Upstream is not running; it is being restarted\n", started)
        timeout = self._deadline(request)
        exchange = _Exchange(self._read_deadline())
        try:
            async with asyncio.timeout(timeout):
                if _is_websocket(request):
                    return await self._proxy_websocket(request, exchange)
                return await self._proxy(request, started, exchange)
        except TimeoutError:
            return self._timed_out(request, started, timeout, exchange)
        except BodyTimeout:
            return self._body_timed_out(request, started, exchange)
        except BodyTooLarge as exc:
            return text_response(413, exc.text, started)
        except ClientStalled:
            log.warning(
                "Client did not read %s %s within write_timeout", request.method, request.path
            )
            return self._cut(request, exchange) or text_response(
                504, "Client did not read the response within write_timeout\n", started
            )
        except UpstreamError as exc:
            if exchange.body.timed_out:
                return self._body_timed_out(request, started, exchange)
            log.error("Upstream request failed: %s", exc)
            return text_response(
                502, f"Upstream refused or dropped the connection: {exc}\n", started
            )

    def _read_deadline(self) -> float | None:
        read_timeout = self.config.read_timeout
        return asyncio.get_running_loop().time() + read_timeout if read_timeout else None

    def _deadline(self, request: web.BaseRequest) -> float | None:
        """exec_timeout, shortened (never lengthened) by a valid X-Timeout header."""
        limit = self.config.exec_timeout or None
        asked = request.headers.get("X-Timeout")
        if asked:
            try:
                wanted = parse_duration(asked)
            except ValueError:
                return limit
            if wanted > 0 and (limit is None or wanted < limit):
                return wanted
        return limit

    async def _proxy(
        self, request: web.BaseRequest, started: float, exchange: _Exchange
    ) -> web.StreamResponse:
        assert self._session is not None
        upstream = await open_upstream(
            self._session,
            request,
            self.base_url + request.raw_path,
            buffer_body=self.config.buffer_http,
            body_limit=self.config.max_body_size,
            extra_headers={"Host": request.host},
            body=exchange.body,
        )
        self._consecutive_timeouts = 0
        headers = response_headers(upstream)
        headers[DURATION_HEADER] = duration_value(started)
        exchange.response = response_for(upstream, headers)
        write_timeout = seconds_or_none(self.config.write_timeout)
        return await relay(request, upstream, exchange.response, write_timeout)

    def _timed_out(
        self, request: web.BaseRequest, started: float, timeout: float | None, exchange: _Exchange
    ) -> web.StreamResponse:
        limit = format_seconds(timeout or 0)
        if exchange.body.complete:
            what = f"Upstream did not answer within {limit}"
        else:
            what = f"Request body not received within the request's limit of {limit}"
        log.warning("%s: %s %s", what, request.method, request.path)
        if exchange.awaiting_upstream:
            self._count_upstream_timeout()
        return self._cut(request, exchange) or text_response(504, what + "\n", started)

    def _count_upstream_timeout(self) -> None:
        """Only the upstream's own silence counts towards hung: not a slow client's body, nor
        a stream (SSE, WebSocket) that outlived the deadline after the upstream answered."""
        self._consecutive_timeouts += 1
        hung_after = self.config.upstream_hung_after
        if hung_after and self._consecutive_timeouts >= hung_after and self._supervisor:
            self._available = False
            self._consecutive_timeouts = 0
            asyncio.ensure_future(
                self._supervisor.restart(f"{hung_after} consecutive requests timed out")
            )

    def _body_timed_out(
        self, request: web.BaseRequest, started: float, exchange: _Exchange
    ) -> web.StreamResponse:
        limit = format_seconds(self.config.read_timeout)
        log.warning(
            "Request body of %s %s not received within %s", request.method, request.path, limit
        )
        return self._cut(request, exchange) or text_response(
            408, f"Request body not received within read_timeout of {limit}\n", started
        )

    @staticmethod
    def _cut(request: web.BaseRequest, exchange: _Exchange) -> web.StreamResponse | None:
        """Once the status is out only a cut connection can tell the client something failed."""
        if exchange.response is not None and exchange.response.prepared:
            abort_connection(request)
            return exchange.response
        return None

    async def _proxy_websocket(
        self, request: web.BaseRequest, exchange: _Exchange
    ) -> web.StreamResponse:
        assert self._session is not None
        exchange.body.complete = True  # an upgrade request has no body: the handshake is all
        headers = forwarded_headers(request)
        for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions"):
            headers.popall(name, None)
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p
        ]
        try:
            upstream = await self._session.ws_connect(
                self.base_url + request.raw_path, headers=headers, protocols=protocols
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(str(exc)) from exc
        client = web.WebSocketResponse(protocols=protocols)
        exchange.response = client
        await client.prepare(request)
        note_sent(request, 101)
        async with upstream:
            await _pump_both_ways(client, upstream, seconds_or_none(self.config.write_timeout))
        return client


def _is_websocket(request: web.BaseRequest) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


class _Exchange:
    """How far one proxied request has got, for the deadline handlers to look at."""

    __slots__ = ("body", "response")

    def __init__(self, read_deadline: float | None) -> None:
        self.body = RequestBody(read_deadline)
        self.response: web.StreamResponse | None = None

    @property
    def awaiting_upstream(self) -> bool:
        """The whole request is with the upstream, which has not answered yet."""
        return self.body.complete and self.response is None


async def _pump_both_ways(
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    write_timeout: float | None,
) -> None:
    """Relay messages both ways until either side closes.

    Raises:
        ClientStalled: the client did not take a message within ``write_timeout``.
    """

    async def client_to_upstream() -> None:
        async for message in client:
            await _forward(message, upstream)
        await upstream.close()

    async def upstream_to_client() -> None:
        async for message in upstream:
            await within_write_timeout(_forward(message, client), write_timeout)
        await client.close()

    tasks = [
        asyncio.ensure_future(client_to_upstream()),
        asyncio.ensure_future(upstream_to_client()),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if any(not t.cancelled() and isinstance(t.exception(), ClientStalled) for t in done):
        raise ClientStalled


async def _forward(
    message: aiohttp.WSMessage, to: web.WebSocketResponse | aiohttp.ClientWebSocketResponse
) -> None:
    if message.type == aiohttp.WSMsgType.TEXT:
        await to.send_str(message.data)
    elif message.type == aiohttp.WSMsgType.BINARY:
        await to.send_bytes(message.data)
