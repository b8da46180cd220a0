"""Delivering the result of an asynchronous call to its ``X-Callback-Url``.

Delivery is its own at-least-once job, apart from the call: once a call ends (success, or
failure after its last attempt) the store marks its callback due; a :class:`CallbackDispatcher`
leases due deliveries, POSTs them, and records every attempt. A delivery that fails (the
receiver unreachable, or any non-2xx answer) is retried with backoff, honouring the receiver's
``Retry-After``, until ``max_attempts``; one the destination policy refuses fails at once.

What the receiver gets: ``POST`` with the function's response body and headers, plus
``X-Call-Id``, ``X-Function-Name``, ``X-Function-Status`` (the function's status code; ``503``
with an empty body when no response came back, as OpenFaaS), ``X-Duration-Seconds`` and
``X-Start-Time`` (Unix nanoseconds) of the attempt that produced the response,
``X-Call-Status`` (``succeeded`` or ``failed``), ``X-Call-Attempts``, ``X-Callback-Attempt``,
``X-Function-Error`` on a failure, and ``X-Result-Truncated: true`` when the stored response
was cut. The same call may be delivered more than once: receivers deduplicate on ``X-Call-Id``.

Signature. With a secret configured, every delivery carries
``X-Callback-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``
(Stripe's scheme). A receiver recomputes it with :func:`verify_signature` and rejects old
timestamps, so a captured delivery cannot be replayed later.

Destination policy (server-side request forgery). A callback URL comes from the caller, so
the gateway would otherwise POST wherever it is told, including to addresses only it can
reach. :class:`CallbackPolicy`:

- only ``http`` and ``https``;
- link-local addresses (``169.254.0.0/16``, ``fe80::/10``: cloud metadata services),
  unspecified and multicast addresses are always refused unless an allow rule names them;
- ``deny_private`` also refuses loopback and private ranges (RFC 1918, ``fc00::/7``...);
- a non-empty ``allow`` list admits only destinations it matches: host names (``hooks.example``),
  wildcard domains (``*.example.com``) or addresses and networks (``10.1.2.0/24``).

The check runs when the call is accepted (a refused URL is a 400) and again at delivery,
against every address the name resolves to, through the resolver of the connection that is
then used, so a name that resolves differently later (DNS rebinding) cannot slip through.
The URL is read by the delivery client's own parser (yarl: ``127。0。0。1`` is ``127.0.0.1``)
and a numeric host as the C resolver reads it (``inet_aton``: ``127.1``, ``0x7f000001``,
``2130706433``, ``0177.0.0.1``; a trailing dot ignored), so every spelling of an address
meets the address rules at acceptance. A delivery the policy refuses, or whose URL the client
cannot use, fails at once: that cannot clear by waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from .. import __version__
from ..forwarding import HOP_BY_HOP
from ..settings import ConfigError
from ._aio import first_of, keep_renewing, record_outcome
from .queue.base import CallbackAttempt, CallbackJob, CallbackOutbox, QueueError
from .retry import RetryPolicy, parse_retry_after

log = logging.getLogger("watchdog.gateway.callbacks")

SIGNATURE_HEADER = "X-Callback-Signature"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALWAYS_DENIED: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("::/128"),
    ipaddress.ip_network("224.0.0.0/4"),
    ipaddress.ip_network("ff00::/8"),
    ipaddress.ip_network("255.255.255.255/32"),
)
_NOT_RELAYED = HOP_BY_HOP | {"content-length", "host"}


# -- signatures ---------------------------------------------------------------------------


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Callback-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: bytes,
    value: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = 300.0,
) -> bool:
    """Whether ``value`` (an ``X-Callback-Signature``) signs ``body`` with ``secret`` and its
    timestamp lies within ``tolerance`` seconds of ``now``."""
    if not value:
        return False
    parts: dict[str, list[str]] = {}
    for item in value.split(","):
        key, _, val = item.strip().partition("=")
        parts.setdefault(key, []).append(val)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, given) for given in parts.get("v1", []))


# -- destination policy -------------------------------------------------------------------


class CallbackBlocked(OSError):
    """The destination policy refuses this callback address."""


@dataclass(frozen=True, slots=True)
class CallbackPolicy:
    """Which callback destinations the gateway may reach (see the module doc).

    Args:
        allow: rules; empty admits any destination not otherwise refused.
        deny_private: also refuse loopback and private addresses not allowed by a rule.
    """

    allow: tuple[str, ...] = ()
    deny_private: bool = False
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: list[str] = []
        networks: list[IPNetwork] = []
        problems: list[str] = []
        for rule in self.allow:
            text = rule.strip().lower()
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            bare = text.removeprefix("*.")
            if not bare or any(not _label_ok(label) for label in bare.split(".")):
                problems.append(f"callback_allow: {rule!r} is not a host name, *.domain or network")
            names.append(text)
        if problems:
            raise ConfigError(problems)
        object.__setattr__(self, "_names", tuple(names))
        object.__setattr__(self, "_networks", tuple(networks))

    def check_url(self, url: str) -> str | None:
        """Why ``url`` may not be used as a callback (None when it may, so far as can be
        told without resolving its host name)."""
        try:
            # The delivery client's parser, so the host checked is the host it connects to.
            parts = URL(url)
            port = parts.port
        except (ValueError, TypeError) as exc:
            return f"unparsable URL ({exc})"
        del port
        if parts.scheme not in ("http", "https"):
            return "the scheme must be http or https"
        host = parts.raw_host
        if not host:
            return "the URL names no host"
        address = _address(host)
        if address is not None:
            canonical = host.strip("[]").rstrip(".") == str(address)
            if self.address_allowed(host, address):
                # The delivery client refuses 127.1, 0x7f000001 ...: say so now, not at delivery.
                if canonical or isinstance(address, ipaddress.IPv6Address):
                    return None
                return f"address {host} is refused: write it as {address}"
            shown = host if canonical else f"{host} (that is {address})"
            return f"address {shown} is refused"
        if self._names and not self._networks and not self._name_allowed(host):
            return f"host {host} is not in callback_allow"
        return None

    def _name_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for rule in self._names:
            if rule.startswith("*."):
                if host.endswith(rule[1:]):
                    return True
            elif host == rule:
                return True
        return False

    def address_allowed(self, host: str, address: IPAddress) -> bool:
        """Whether ``host`` may be reached at ``address``."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in net for net in self._networks):
            return True
        if any(address in net for net in _ALWAYS_DENIED):
            return False
        if self.deny_private and (address.is_private or address.is_loopback):
            return False
        if self._names or self._networks:
            return self._name_allowed(host)
        return True


def _label_ok(label: str) -> bool:
    return 0 < len(label) <= 63 and all(c.isalnum() or c == "-" for c in label)


# What the C resolver may read as an IPv4 address: 1 to 4 parts, decimal, octal or hex.
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)


def _address(host: str) -> IPAddress | None:
    """The address ``host`` stands for without a name lookup, read as ``getaddrinfo`` reads
    it: IPv6 (its zone dropped) or IPv4 in any form ``inet_aton`` takes, so ``127.1``,
    ``0x7f000001``, ``2130706433``, ``0177.0.0.1`` and ``127.0.0.1.`` are all loopback."""
    bare = host.strip("[]")
    if ":" in bare:
        try:
            return ipaddress.ip_address(bare.split("%", 1)[0])
        except ValueError:
            return None
    bare = bare.rstrip(".")
    if _NUMERIC_HOST.fullmatch(bare) is None:
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except OSError:
        return None


class PolicyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then drops addresses the policy refuses.

    Because the connection is made to the addresses returned here, the check and the
    connection cannot disagree (no DNS rebinding between them).
    """

    def __init__(self, policy: CallbackPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        allowed = [r for r in results if self.policy.address_allowed(host, _must(r["host"]))]
        if not allowed:
            raise CallbackBlocked(f"callback destination {host} is refused by the policy")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


def _must(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])


# -- delivery -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallbackSettings:
    """How callbacks are delivered.

    Attributes:
        secret: HMAC key for :data:`SIGNATURE_HEADER`; None sends no signature.
        retry: attempts and backoff of deliveries (statuses are not consulted: any
            non-2xx answer is retried).
        timeout: limit on one delivery attempt (connect, send, answer).
        concurrency: deliveries in flight at once.
        lease_for: how long a delivery is leased; longer than ``timeout``, so a live
            delivery never loses its lease and only a dead gateway's are taken over.
    """

    secret: bytes | None = None
    policy: CallbackPolicy = field(default_factory=CallbackPolicy)
    # Deliveries' own policy (not a setting): any non-2xx answer is retried, codes unused.
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(
            max_attempts=10,
            initial_backoff=1.0,
            max_backoff=60.0,
            max_event_age=86400.0,
            retry_codes=frozenset(),
        )
    )
    timeout: float = 10.0
    concurrency: int = 16
    lease_for: float = 30.0
    poll_interval: float = 1.0


def callback_headers(job: CallbackJob, secret: bytes | None, now: float) -> list[tuple[str, str]]:
    """The headers of one delivery of ``job`` (the body is ``job.body`` or empty)."""
    # The body is the function's bytes as they came (never decompressed), so its
    # Content-Encoding goes with it, unless the record kept only a cut of the body.
    dropped = _NOT_RELAYED | {"content-encoding"} if job.truncated else _NOT_RELAYED
    headers = [(k, v) for k, v in job.headers if k.lower() not in dropped]
    failed_without_response = job.status_code is None
    started = job.started_at or job.created_at
    ended = job.ended_at or started
    headers += [
        ("X-Call-Id", job.call_id),
        ("X-Function-Name", job.function),
        ("X-Function-Status", str(503 if failed_without_response else job.status_code)),
        ("X-Duration-Seconds", f"{max(0.0, ended - started):f}"),
        ("X-Start-Time", str(int(started * 1e9))),
        ("X-Call-Status", job.status),
        ("X-Call-Attempts", str(job.call_attempts)),
        ("X-Callback-Attempt", str(job.attempt)),
        ("User-Agent", f"fwatchdog-gateway/{__version__}"),
    ]
    if job.status == "failed" and job.error:
        headers.append(("X-Function-Error", job.error.replace("\r", " ").replace("\n", " ")))
    if job.truncated:
        headers.append(("X-Result-Truncated", "true"))
    if secret is not None:
        body = b"" if failed_without_response else job.body
        headers.append((SIGNATURE_HEADER, sign(secret, body, int(now))))
    if failed_without_response:
        headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
    return headers


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    attempt: CallbackAttempt
    delivered: bool
    permanent: bool = False
    retry_after: float | None = None


async def deliver(
    session: aiohttp.ClientSession, job: CallbackJob, settings: CallbackSettings
) -> DeliveryResult:
    """POST ``job`` once; never raises for network or HTTP failures."""
    started = time.time()
    problem = settings.policy.check_url(job.url)
    if problem is not None:
        attempt = CallbackAttempt(job.attempt, started, time.time(), None, f"refused: {problem}")
        return DeliveryResult(attempt, False, permanent=True)
    body = b"" if job.status_code is None else job.body
    headers = callback_headers(job, settings.secret, started)
    try:
        async with asyncio.timeout(settings.timeout):
            async with session.post(
                job.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
    except aiohttp.ClientConnectorError as exc:
        blocked = isinstance(exc.os_error, CallbackBlocked)
        error = str(exc.os_error) if blocked else f"receiver unreachable: {exc.os_error}"
        attempt = CallbackAttempt(job.attempt, started, time.time(), None, error)
        return DeliveryResult(attempt, False, permanent=blocked)
    except aiohttp.InvalidURL as exc:
        # The client refuses the URL itself (e.g. a host such as 127.1 that is not a
        # canonical address): the same refusal every time, so no retry.
        error = f"refused: the URL cannot be used ({exc})"
        return DeliveryResult(_failed_attempt(job, started, error), False, permanent=True)
    except TimeoutError:
        error = f"no answer within {settings.timeout:g}s"
        return DeliveryResult(_failed_attempt(job, started, error), False)
    except (aiohttp.ClientError, OSError) as exc:
        error = f"delivery failed: {exc.__class__.__name__}: {exc}"
        return DeliveryResult(_failed_attempt(job, started, error), False)
    ok = 200 <= status < 300
    answer = None if ok else f"receiver answered {status}"
    attempt = CallbackAttempt(job.attempt, started, time.time(), status, answer)
    return DeliveryResult(attempt, ok, retry_after=retry_after)


def _failed_attempt(job: CallbackJob, started: float, error: str) -> CallbackAttempt:
    return CallbackAttempt(job.attempt, started, time.time(), None, error)


def make_session(settings: CallbackSettings) -> aiohttp.ClientSession:
    """A client session whose connections obey ``settings.policy``."""
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(settings.policy), limit=0)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False)


class CallbackDispatcher:
    """Leases due callback deliveries from ``queue`` and delivers them until stopped."""

    def __init__(
        self,
        queue: CallbackOutbox,
        settings: CallbackSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        owner: str | None = None,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.owner = owner or f"callbacks-{uuid.uuid4().hex[:12]}"
        self._session = session
        self._own_session = session is None
        self._inflight: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self.delivered = 0
        self.failed = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then let in-flight deliveries finish."""
        session = self._session or make_session(self.settings)
        try:
            while not stop.is_set():
                free = self.settings.concurrency - len(self._inflight)
                if free <= 0:
                    await first_of(stop.wait(), self._slot_freed.wait())
                    self._slot_freed.clear()
                    continue
                try:
                    batch = await self.queue.lease_callbacks(
                        owner=self.owner, limit=free, lease_for=self.settings.lease_for
                    )
                except QueueError as exc:  # a networked store may be away for a while
                    log.warning("leasing callback deliveries failed, trying again: %s", exc)
                    await first_of(stop.wait(), asyncio.sleep(self.settings.poll_interval))
                    continue
                for job in batch.jobs:
                    task = asyncio.create_task(self._deliver(session, job))
                    self._inflight.add(task)
                    task.add_done_callback(self._done)
                if len(batch.jobs) == free:
                    continue
                wait = self.settings.poll_interval
                if batch.next_due is not None:
                    wait = min(wait, max(0.0, batch.next_due - time.time()))
                await first_of(stop.wait(), self.queue.wait_for_callbacks(wait))
            if self._inflight:
                await asyncio.wait(set(self._inflight), timeout=self.settings.timeout + 1)
        finally:
            for task in self._inflight:
                task.cancel()
            if self._own_session:
                await session.close()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("callback delivery crashed", exc_info=task.exception())

    @staticmethod
    async def _report(job: CallbackJob, report: Callable[[], Awaitable[bool]]) -> None:
        await record_outcome(report, log, f"callback of call {job.call_id}")

    async def _deliver(self, session: aiohttp.ClientSession, job: CallbackJob) -> None:
        """Deliver, then record the outcome, renewing the lease until it is recorded (an
        outage of the store must not have the delivery made again)."""
        lease_for = self.settings.lease_for
        heartbeat = asyncio.create_task(
            keep_renewing(
                lambda: self.queue.extend_callback(job, lease_for),
                lease_for / 3,
                log,
                f"callback of call {job.call_id}",
            )
        )
        try:
            await self._deliver_and_record(session, job)
        finally:
            heartbeat.cancel()

    async def _deliver_and_record(self, session: aiohttp.ClientSession, job: CallbackJob) -> None:
        outcome = await deliver(session, job, self.settings)
        policy = self.settings.retry
        now = time.time()
        if outcome.delivered:
            self.delivered += 1
            await self._report(job, lambda: self.queue.callback_delivered(job, outcome.attempt))
            return
        base = job.ended_at or job.created_at
        if outcome.permanent or job.attempt >= policy.max_attempts:
            log.warning("callback %s to %s failed: %s", job.call_id, job.url, outcome.attempt.error)
            self.failed += 1
            await self._report(job, lambda: self.queue.callback_failed(job, outcome.attempt))
            return
        delay = policy.backoff(job.attempt)
        if outcome.retry_after is not None:
            delay = max(outcome.retry_after, policy.initial_backoff)
        if policy.expired(base, now + delay):
            self.failed += 1
            await self._report(job, lambda: self.queue.callback_failed(job, outcome.attempt))
            return
        await self._report(
            job, lambda: self.queue.callback_retry(job, outcome.attempt, now + delay)
        )


def parse_allow(values: Iterable[str] | str) -> tuple[str, ...]:
    """``callback_allow`` from a comma-separated string or a list."""
    items: Sequence[str] = values.split(",") if isinstance(values, str) else list(values)
    return tuple(item.strip() for item in items if item.strip())


__all__ = [
    "SIGNATURE_HEADER",
    "CallbackBlocked",
    "CallbackDispatcher",
    "CallbackPolicy",
    "CallbackSettings",
    "PolicyResolver",
    "callback_headers",
    "deliver",
    "make_session",
    "parse_allow",
    "sign",
    "verify_signature",
]
