"""mode=http: run ``fprocess`` once as a long-lived HTTP upstream and proxy every request to it.

Beyond the of-watchdog: the watchdog is only ready once the upstream accepts connections (and
``ready_path`` answers 2xx); a crashed upstream is restarted with backoff while requests get a
quick 503; an upstream that keeps timing out is declared hung and restarted; a known
Content-Length is kept; responses are relayed write by write; WebSockets pass under the same
limits.

The proxying is the watchdog's own (:mod:`..http.upstream`, :mod:`..http.tunnel`): one
upstream, reached over pooled keep-alive connections, needs none of a general HTTP client.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from ..config import WatchdogConfig, parse_duration
from ..forwarding import forwarded_pairs, returned_pairs
from ..http import RelayedResponse, Request, StreamResponse
from ..http.express import NOTE
from ..http.request import small_body
from ..http.tunnel import Tunnel
from ..http.upstream import UpstreamError, UpstreamPool, UpstreamResponse, encode
from ..limits import (
    Admission,
    BodyTimeout,
    BodyTooLarge,
    ClientStalled,
    Deadlines,
    TaskTimeout,
    read_body,
    seconds_or_none,
    time_left,
    within_write_timeout,
)
from ..logs import FunctionLog
from ..process import ProcessTable, resolve_program
from ..responses import (
    DURATION_HEADER,
    duration_value,
    format_seconds,
    note_sent,
    text_response,
)
from ..supervisor import Supervisor
from .http_express import (
    BODYLESS_METHODS,
    ExpressNote,
    HttpExpress,
    relayed_lines,
    small_answer,
)

log = logging.getLogger("watchdog.http")

_PROBE_INTERVAL = 0.02
_PROBE_TIMEOUT = 2.0
_PROBE_BODY_LIMIT = 64 * 1024


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
        self._port = parts.port or 80  # http:// only: the configuration refuses https
        self._probe_host = parts.netloc or f"{self._host}:{self._port}"
        self._pool = UpstreamPool(self._host, self._port)
        self._write_timeout = seconds_or_none(config.write_timeout)
        self._exec_timeout = seconds_or_none(config.exec_timeout)
        self._deadlines: Deadlines | None = None
        self._supervisor: Supervisor | None = None
        self._available = False  # the upstream runs and has accepted a connection
        self._consecutive_timeouts = 0
        self._watcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._exec_timeout is not None:
            self._deadlines = Deadlines(self._loop, self._exec_timeout)
        env = dict(self.config.environ)
        program = resolve_program(self.config.fprocess, env.get("PATH"))
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

    def answered(self) -> None:
        self._consecutive_timeouts = 0

    def express(self, admission: Admission) -> HttpExpress | None:
        if self.config.buffer_http:
            return None  # every body is read whole first, and bounded: the ordinary path's
        return HttpExpress(self, self._pool, admission, self._deadlines, self._write_timeout)

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
        self._pool.close()

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
        response: UpstreamResponse | None = None
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                response = await self._pool.request(
                    "GET", self.config.ready_path, [("Host", self._probe_host)]
                )
                await response.read(_PROBE_BODY_LIMIT)
                return 200 <= response.status < 300
        except (UpstreamError, TimeoutError, ValueError):
            return False
        finally:
            if response is not None:
                response.release()

    # -- requests -------------------------------------------------------------------------

    async def handle(self, request: Request, started: float) -> StreamResponse:
        if not self._available:
            return text_response(503, "Upstream is not running; it is being restarted\n", started)
        read_timeout = self.config.read_timeout
        # (Monotonic time is the loop's time; asking the loop would cost a getpid() on 3.11.)
        exchange = _Exchange(started + read_timeout if read_timeout else None)
        timeout = self._exec_timeout
        note = request.state.get(NOTE)
        try:
            if isinstance(note, ExpressNote):
                return await self._after_express(request, started, exchange, note)
            timeout = self._deadline(request)
            if timeout is None:
                return await self._route(request, started, exchange)
            assert self._loop is not None  # set by start(), before any request
            async with TaskTimeout(self._loop, timeout):
                return await self._route(request, started, exchange)
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
            log.error("Upstream request failed: %s", exc)
            if self._cut(request, exchange):  # the answer had begun: cut it short
                return exchange.response  # type: ignore[return-value]
            return text_response(
                502, f"Upstream refused or dropped the connection: {exc}\n", started
            )
        finally:
            exchange.release()

    async def _after_express(
        self, request: Request, started: float, exchange: _Exchange, note: ExpressNote
    ) -> StreamResponse:
        """Go on from where the express handed the request over (:mod:`.http_express`)."""
        exchange.body.complete = True  # the express sent it whole
        if note.timed_out:
            raise TimeoutError
        if note.error is not None:
            raise note.error
        assert note.upstream is not None
        exchange.upstream = note.upstream
        assert self._loop is not None
        async with TaskTimeout(self._loop, time_left(self._exec_timeout, started)):
            return await self._answer(request, started, exchange, note.upstream)

    async def _route(self, request: Request, started: float, exchange: _Exchange) -> StreamResponse:
        if _is_websocket(request):
            return await self._proxy_upgrade(request, started, exchange)
        return await self._proxy(request, started, exchange)

    def _deadline(self, request: Request) -> float | None:
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

    async def _proxy(self, request: Request, started: float, exchange: _Exchange) -> StreamResponse:
        headers = forwarded_pairs(request, request.host)
        method = request.method
        body = exchange.body
        if self.config.buffer_http or small_body(request):
            # A small body goes with the request head in one write; buffer_http asks for it.
            limit = self.config.max_body_size if self.config.buffer_http else None
            whole = await _read_whole(request, body, limit)
            upstream = await self._pool.request(method, request.raw_path, headers, whole)
        elif not request.body_exists:
            body.complete = True
            empty = None if method in BODYLESS_METHODS else b""
            upstream = await self._pool.request(method, request.raw_path, headers, empty)
        else:
            upstream = await self._pool.request(
                method,
                request.raw_path,
                headers,
                stream=_ClientBody(request, body),
                content_length=request.content_length,
            )
        return await self._answer(request, started, exchange, upstream)

    async def _answer(
        self, request: Request, started: float, exchange: _Exchange, upstream: UpstreamResponse
    ) -> StreamResponse:
        """Relay the upstream's answer: whole in one write when small, else write by write."""
        exchange.upstream = upstream
        exchange.answered = True
        self._consecutive_timeouts = 0
        length = upstream.content_length
        if small_answer(request, upstream):
            lines = relayed_lines(upstream, started)
            body = await upstream.read()
            return RelayedResponse(
                upstream.status, upstream.raw_reason, lines, body, dated=upstream.dated, typed=True
            )
        headers = _returned_headers(upstream)
        headers.append((DURATION_HEADER, duration_value(started)))
        response = StreamResponse(upstream.status, upstream.reason)
        response.headers.extend(headers)
        response.content_length = length
        exchange.response = response
        write_timeout = self._write_timeout
        await within_write_timeout(response.prepare(request), write_timeout)
        if request.method != "HEAD":
            while chunk := await upstream.read_chunk():
                await within_write_timeout(response.write(chunk), write_timeout)
        await within_write_timeout(response.write_eof(), write_timeout)
        return response

    async def _proxy_upgrade(
        self, request: Request, started: float, exchange: _Exchange
    ) -> StreamResponse:
        """A WebSocket: the handshake goes to the upstream; on its 101 the two connections are
        joined byte for byte (frames pass untouched) until either side closes."""
        exchange.body.complete = True  # an upgrade request has no body: the handshake is all
        headers = forwarded_pairs(request, request.host)
        headers += [("Connection", "Upgrade"), ("Upgrade", request.headers.get("Upgrade", ""))]
        upstream = await self._pool.open(request.method, request.raw_path, headers)
        if not upstream.upgraded:
            return await self._answer(request, started, exchange, upstream)
        exchange.answered = True
        self._consecutive_timeouts = 0
        connection, after_head = upstream.detach()
        tunnel = Tunnel(request.transport, connection, self._write_timeout)
        exchange.tunnel = tunnel
        from_client = request.detach(tunnel.client)
        note_sent(request, 101)
        await tunnel.run(_switching_head(upstream) + after_head, from_client)
        return _Tunnelled(101)

    def _timed_out(
        self, request: Request, started: float, timeout: float | None, exchange: _Exchange
    ) -> StreamResponse:
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
        self, request: Request, started: float, exchange: _Exchange
    ) -> StreamResponse:
        limit = format_seconds(self.config.read_timeout)
        log.warning(
            "Request body of %s %s not received within %s", request.method, request.path, limit
        )
        return self._cut(request, exchange) or text_response(
            408, f"Request body not received within read_timeout of {limit}\n", started
        )

    @staticmethod
    def _cut(request: Request, exchange: _Exchange) -> StreamResponse | None:
        """Once the status is out only a cut connection can tell the client something failed."""
        if exchange.tunnel is not None:
            request.transport.abort()
            return _Tunnelled(101)
        if exchange.response is not None and exchange.response.prepared:
            request.transport.abort()
            return exchange.response
        return None


def _is_websocket(request: Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


async def _read_whole(request: Request, body: _BodyState, limit: int | None) -> bytes | bytearray:
    """The whole body, before ``body``'s deadline, at most ``limit`` bytes.

    Raises:
        BodyTimeout: the deadline passed first.
        BodyTooLarge: the body is longer than ``limit``.
    """
    content = request.content
    if limit is None and content.complete:  # all here already (a small body usually is)
        whole: bytes | bytearray = content.read_nowait()
    else:
        try:
            whole = await read_body(request, body.deadline, limit)
        except BodyTimeout:
            body.timed_out = True
            raise
    body.complete = True
    return whole


def _returned_headers(upstream: UpstreamResponse) -> list[tuple[str, str]]:
    return returned_pairs(upstream.headers, upstream.connection_tokens)


def _switching_head(upstream: UpstreamResponse) -> bytes:
    """The upstream's 101 head as it came (its Upgrade and Connection included)."""
    lines = [f"HTTP/1.1 101 {upstream.reason or 'Switching Protocols'}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in upstream.headers]
    lines.append("\r\n")
    return encode("".join(lines))


class _Tunnelled(StreamResponse):
    """What a tunnelled WebSocket returns: its status for the metrics. Its head went out with
    the tunnel (the upstream's own 101), so the server must not send one."""

    __slots__ = ()

    @property
    def prepared(self) -> bool:
        return True


class _BodyState:
    """How far the client's request body has got, against its ``deadline`` (loop time)."""

    __slots__ = ("deadline", "complete", "timed_out")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.complete = False
        """All of it has been read from the client (and handed on to the upstream)."""
        self.timed_out = False
        """The client did not deliver it before the deadline."""


class _ClientBody:
    """The client's body as the upstream client streams it, each read within the deadline."""

    __slots__ = ("content", "state")

    def __init__(self, request: Request, state: _BodyState) -> None:
        self.content = request.content
        self.state = state

    async def next_chunk(self) -> bytes:
        state = self.state
        try:
            async with asyncio.timeout_at(state.deadline):
                chunk = await self.content.readany()
        except TimeoutError:
            state.timed_out = True
            raise BodyTimeout from None
        if not chunk:
            state.complete = True
        return chunk


class _Exchange:
    """How far one proxied request has got, for the deadline handlers to look at."""

    __slots__ = ("body", "answered", "response", "upstream", "tunnel")

    def __init__(self, read_deadline: float | None) -> None:
        self.body = _BodyState(read_deadline)
        self.answered = False
        """The upstream's response head has arrived."""
        self.response: StreamResponse | None = None
        """The response being streamed to the client, once there is one."""
        self.upstream: UpstreamResponse | None = None
        self.tunnel: Tunnel | None = None

    @property
    def awaiting_upstream(self) -> bool:
        """The whole request is with the upstream, which has not answered yet."""
        return self.body.complete and not self.answered

    def release(self) -> None:
        if self.upstream is not None:
            self.upstream.release()
