"""The NATS backend's connection, and whether NATS is reachable now.

The queue knows whether NATS is reachable, from the client's connection callbacks and from
requests that time out, so a request to the gateway is not the one that finds out by waiting.
While NATS is down every method raises :class:`QueueUnavailable` at once; a probe asks
JetStream every PROBE_EVERY seconds and marks it up when it answers. The methods a client
waits on (accept, read, list, cancel) give each NATS answer DEADLINE seconds, the workers'
the usual TIMEOUT.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Concatenate, NamedTuple, ParamSpec, Protocol, TypeVar, cast

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamInfo
from nats.js.kv import KeyValue

from .base import QueueClosed, QueueError, QueueUnavailable
from .nats_writes import JetStreamWrites

log = logging.getLogger("watchdog.gateway.queue")

UNREACHABLE = (
    TimeoutError,  # nats.errors.TimeoutError is one
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    # A stream (or bucket) has no leader: a JetStream node died and its replicas have not
    # elected a new one yet (seconds). Nothing else works meanwhile either.
    nats.js.errors.NoStreamResponseError,
)
"""Failures that say NATS (or its JetStream) cannot be reached now: the queue is marked down."""
_NOT_READY = (*UNREACHABLE, nats.errors.NoServersError)
"""Failures while setting up that mean JetStream is not ready yet (a cluster still forming,
its meta leader not elected; a node lost meanwhile): :meth:`NatsLink.open` waits and tries
again, unless the server has no JetStream at all (:func:`_no_jetstream`)."""
_START_LOG_EVERY = 5.0
_PING_INTERVAL = 1
_MAX_PINGS_OUT = 2
"""A NATS node that stops answering (frozen, cut off) is given up after this many
unanswered pings, _PING_INTERVAL seconds apart (2-3 s), and the client moves to another node
(nats-py's defaults take four minutes; a stream's replicas elect a new leader in seconds)."""

TIMEOUT = 5.0
"""Seconds the workers' operations wait for each NATS answer."""
DEADLINE = 0.9
"""Seconds the request-path operations wait for each NATS answer: a client waiting on the
gateway gets its 503 within about a second when NATS stops answering."""
PROBE_EVERY = 0.25
_PROBE_TIMEOUT = 0.5
_request_path: ContextVar[bool] = ContextVar("nats_request_path", default=False)
"""Set while a request-path operation runs (the deadline applies to everything it calls)."""


class Handles(NamedTuple):
    """JetStream and the two buckets, with one answer timeout."""

    js: JetStreamContext
    records: KeyValue
    idempotency: KeyValue


SetUp = Callable[[Client, float], Awaitable[tuple[Handles, Handles]]]
"""Makes (or finds) the streams and buckets, each NATS answer given the seconds passed, and
returns the handles for the workers (TIMEOUT) and for the request path (DEADLINE)."""


class Parts(NamedTuple):
    nc: Client
    writes: JetStreamWrites
    js: JetStreamContext
    records: KeyValue
    idempotency: KeyValue


def reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def timeout() -> float:
    """Seconds to wait for one NATS answer (on the request path, DEADLINE)."""
    return DEADLINE if _request_path.get() else TIMEOUT


class NatsLink:
    """One connection to NATS (any of the servers ``url`` names), watched.

    Args:
        url: the NATS server(s), comma-separated (``nats://host:4222``).
        connect_timeout: how long one attempt to connect to a NATS server may take.
        start_timeout: how long :meth:`open` waits for NATS to accept connections and for
            its JetStream to set up the streams and buckets (a cluster still forming).
        layout: what :meth:`open` sets up (named in messages), and the JetStream streams the
            probe asks about.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        start_timeout: float,
        layout: str,
        streams: tuple[str, ...],
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.start_timeout = start_timeout
        self.layout = layout
        self.streams = streams
        self._nc: Client | None = None
        self._writes: JetStreamWrites | None = None
        self._handles: Handles | None = None
        # The same, with DEADLINE on every answer, for the request path.
        self._fast: Handles | None = None
        self.up = False
        self.ups = 0
        """How many times NATS was marked up: an operation notes it when it starts, and its
        failure marks NATS down only if NATS has not come back since (see :meth:`mark_down`)."""
        self._down_reason = "not connected"
        self._down = asyncio.Event()  # set when marked down: the probe starts asking
        self._probe: asyncio.Task[None] | None = None
        self._connect_error: Exception | None = None
        self._waiting_for = ""
        self._errors_seen: set[str] = set()
        self.is_open = False

    # -- opening and closing --------------------------------------------------------------

    async def open(self, set_up: SetUp) -> None:
        """Connect and ``set_up``, waiting up to ``start_timeout`` for NATS to accept
        connections and for JetStream to be ready (logging while it waits)."""
        self._connect_error = None
        self._waiting_for = "connecting"
        deadline = time.monotonic() + self.start_timeout
        waiting = asyncio.create_task(self._log_waiting(), name="nats-start-log")
        try:
            nc = await self._connect(deadline)
            self._nc = nc
            try:
                self._writes = JetStreamWrites(nc)
                await self._writes.start()
                self._handles, self._fast = await self._set_up(nc, set_up, deadline)
            except BaseException:
                await nc.close()
                self._nc = self._writes = None
                raise
        finally:
            waiting.cancel()
        self.is_open = True
        self._mark_up()
        self._down = asyncio.Event()
        self._probe = asyncio.create_task(self._watch(), name="nats-probe")

    async def _log_waiting(self) -> None:
        """While :meth:`open` waits, say so now and then (after a first moment: a ready NATS
        takes milliseconds), naming what it waits for."""
        await asyncio.sleep(1.0)
        while True:
            log.warning(
                "waiting for NATS at %s (%s), up to nats_start_timeout=%gs",
                self.url,
                self._waiting_for,
                self.start_timeout,
            )
            await asyncio.sleep(_START_LOG_EVERY)

    def _gave_up(self, what: str) -> QueueUnavailable:
        return QueueUnavailable(
            f"{what} within nats_start_timeout={self.start_timeout:g}s ({self._waiting_for})"
        )

    async def _connect(self, deadline: float) -> Client:
        try:
            # nats-py retries the first connection forever when reconnects are unlimited.
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await nats.connect(
                    [server.strip() for server in self.url.split(",") if server.strip()],
                    connect_timeout=self.connect_timeout,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    ping_interval=_PING_INTERVAL,
                    max_outstanding_pings=_MAX_PINGS_OUT,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                    name="fwatchdog-gateway",
                )
        except Exception as exc:  # noqa: BLE001 - nats-py raises several kinds
            cause = self._connect_error if isinstance(exc, TimeoutError) else exc
            self._waiting_for = reason(cause) if cause is not None else "timed out"
            raise self._gave_up(f"cannot reach NATS at {self.url}") from None

    async def _set_up(self, nc: Client, set_up: SetUp, deadline: float) -> tuple[Handles, Handles]:
        """``set_up``; while JetStream is not ready (a cluster without a meta leader, or too
        few nodes for the replicas), try again until ``deadline``."""
        self._waiting_for = "JetStream to set up the streams and buckets"
        while True:
            left = deadline - time.monotonic()
            try:
                return await set_up(nc, max(0.5, min(TIMEOUT, left)))
            except _NOT_READY as exc:
                if _no_jetstream(exc):
                    raise QueueUnavailable(
                        f"NATS at {self.url} has no JetStream (start nats-server with -js)"
                    ) from None
                self._waiting_for = f"JetStream not ready: {reason(exc)}"
                if time.monotonic() + PROBE_EVERY >= deadline:
                    raise self._gave_up(
                        f"NATS at {self.url}: cannot set up {self.layout}"
                    ) from None
                await asyncio.sleep(PROBE_EVERY)
            except nats.errors.Error as exc:
                raise QueueUnavailable(
                    f"NATS at {self.url}: cannot set up {self.layout}: {reason(exc)}"
                ) from None

    def stop_watching(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None

    async def close(self) -> None:
        self.stop_watching()
        self.is_open = False
        nc = self._nc
        self._nc = self._writes = self._handles = self._fast = None
        self.up = False
        if nc is not None:
            try:
                await nc.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                await nc.close()

    # -- what the client says -------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        if not self.is_open and self._nc is None:
            self._connect_error = exc  # reported once, if connecting fails
            return
        text = reason(exc)
        if text not in self._errors_seen:  # not once per reconnect attempt
            self._errors_seen.add(text)
            log.warning("NATS %s: %s", self.url, text)

    async def _on_disconnected(self) -> None:
        if self.is_open:
            log.warning("NATS %s: disconnected, reconnecting", self.url)
        self.mark_down("disconnected")

    async def _on_reconnected(self) -> None:
        self._errors_seen.clear()
        url = self._nc.connected_url if self._nc is not None else None
        log.warning("NATS: reconnected to %s", url.geturl() if url is not None else self.url)
        # Up once JetStream answers too (after a restart it may need a moment): the probe.

    async def _on_closed(self) -> None:
        self.mark_down("connection closed")

    # -- reachability ---------------------------------------------------------------------

    def _mark_up(self) -> None:
        self.up = True
        self.ups += 1

    def mark_down(self, why: str, *, begun: int | None = None) -> None:
        """NATS is unreachable, as a failure says. ``begun`` is :attr:`ups` when the failed
        operation started: one that began before NATS last came back (sent to a node that
        died meanwhile, given up after its timeout) says nothing about now, and is ignored."""
        if begun is not None and begun != self.ups:
            return
        if self.up and self.is_open:
            log.warning(
                "NATS %s unreachable (%s): the queue answers 503 until it is back", self.url, why
            )
        self.up = False
        self._down_reason = why
        self._down.set()

    def check_up(self) -> None:
        """Fail at once while NATS is known to be unreachable, rather than wait for it."""
        nc = self.parts().nc
        if self.up and not nc.is_connected:
            self.mark_down("disconnected")  # before the callback says so
        if not self.up:
            raise QueueUnavailable(f"NATS at {self.url} is unreachable ({self._down_reason})")

    async def _watch(self) -> None:
        """While NATS is marked down, ask JetStream every PROBE_EVERY seconds; mark it up
        when it answers."""
        while True:
            await self._down.wait()
            await asyncio.sleep(PROBE_EVERY)
            if not self.up and await self._answers():
                self._down.clear()
                self._mark_up()
                log.warning("NATS %s reachable again: the queue is available", self.url)

    async def _answers(self) -> bool:
        """JetStream answers for every stream and bucket, and each has a leader (after a
        node's death its replicas take seconds to elect one; until then writes fail). The
        server this connection is on is pinged meanwhile: if it is silent (frozen, cut off)
        the client moves to another now, not after its missed pings (2-3 s)."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            return False
        js = nc.jetstream(timeout=_PROBE_TIMEOUT)
        # Only when there is another server to go to (named or discovered): reconnecting to
        # the same one would cost a slow server more.
        ping = _pinged(nc) if len(nc.servers) > 1 else _answered()
        pinged, *infos = await asyncio.gather(
            ping, *(js.stream_info(name) for name in self.streams), return_exceptions=True
        )
        failure = next((info for info in infos if isinstance(info, BaseException)), None)
        if pinged is False and isinstance(failure, UNREACHABLE):  # silent, not only slow
            url = nc.connected_url
            log.warning(
                "NATS: %s does not answer pings: moving to another server",
                url.geturl() if url is not None else self.url,
            )
            await nc.force_reconnect()
            return False
        if isinstance(failure, UNREACHABLE):
            return False
        if isinstance(failure, nats.errors.Error):
            return True  # JetStream answered, if with an error: it is reachable
        if failure is not None:
            log.debug("NATS probe: %s", reason(failure))  # the probe must keep running
            return False
        return all(
            isinstance(info, StreamInfo) and (info.cluster is None or info.cluster.leader)
            for info in infos
        )

    # -- using it -------------------------------------------------------------------------

    def parts(self) -> Parts:
        """The connection, its lean writes, JetStream and the two buckets; on the request
        path, the ones that give each answer DEADLINE seconds."""
        nc, writes, handles, fast = self._nc, self._writes, self._handles, self._fast
        if not self.is_open or nc is None or writes is None or handles is None or fast is None:
            raise QueueClosed("queue is not open")
        return Parts(nc, writes, *(fast if _request_path.get() else handles))

    @property
    def connection(self) -> Client | None:
        """The connection while there is one (open or not), for what may go unanswered."""
        return self._nc


class Linked(Protocol):
    @property
    def link(self) -> NatsLink: ...


L = TypeVar("L", bound=Linked)
P = ParamSpec("P")
R = TypeVar("R")


def as_queue_errors(
    method: Callable[Concatenate[L, P], Awaitable[R]],
) -> Callable[Concatenate[L, P], Awaitable[R]]:
    """Report NATS failures as :class:`QueueError`, the error every caller of a backend
    handles: :class:`QueueUnavailable` when NATS is away or slow (try again later). While
    NATS is known to be down, fail at once; a failure that says it is down marks it so."""

    @functools.wraps(method)
    async def translated(self: L, /, *args: P.args, **kwargs: P.kwargs) -> R:
        link = self.link
        link.check_up()
        begun = link.ups
        try:
            return await method(self, *args, **kwargs)
        except (nats.errors.MaxPayloadError, nats.js.errors.BadRequestError) as exc:
            raise QueueError(f"NATS refused the write: {reason(exc)}") from exc
        except UNREACHABLE as exc:
            link.mark_down(reason(exc), begun=begun)
            raise QueueUnavailable(f"NATS: {reason(exc)}") from exc
        except nats.errors.Error as exc:
            raise QueueUnavailable(f"NATS: {reason(exc)}") from exc

    return translated


def on_request_path(
    method: Callable[Concatenate[L, P], Awaitable[R]],
) -> Callable[Concatenate[L, P], Awaitable[R]]:
    """A method a client of the gateway waits on: every NATS answer it needs gets DEADLINE
    seconds (the contextvar reaches the helpers it calls, and tasks they start)."""

    @functools.wraps(method)
    async def bounded(self: L, /, *args: P.args, **kwargs: P.kwargs) -> R:
        token = _request_path.set(True)
        try:
            return await method(self, *args, **kwargs)
        finally:
            _request_path.reset(token)

    return bounded


def _no_jetstream(exc: BaseException) -> bool:
    """No JetStream API answers at this server (nats-py reports its 503 "no responders" as
    a ServiceUnavailableError without a JetStream error code): not enabled, not "not ready",
    which JetStream says itself."""
    no_code = isinstance(exc, nats.js.errors.ServiceUnavailableError) and exc.err_code is None
    return no_code or isinstance(exc, nats.errors.NoRespondersError)


async def _answered() -> bool:
    return True


async def _pinged(nc: Client) -> bool:
    """The server ``nc`` is on answers a ping within _PROBE_TIMEOUT (a live one takes
    milliseconds)."""
    try:
        # nats-py annotates the timeout as int; it is handed to asyncio.wait_for.
        await nc.flush(timeout=cast(int, _PROBE_TIMEOUT))
    except (nats.errors.Error, TimeoutError):
        return False
    return True
