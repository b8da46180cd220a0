"""Where the NATS backend keeps things (``P`` is the name prefix, ``fwatchdog`` by default),
and setting them up:

* ``KV P_records``: one activation record per call, keyed by call id, JSON (:mod:`.nats_store`).
* ``stream P_calls`` (work-queue retention) holds one *job* per unfinished call, consumed by
  the durable pull consumer ``workers`` that all gateways share; ``stream P_callbacks`` the
  same for callback deliveries (:mod:`.nats_jobs`).
* ``KV P_idempotency``: ``sha256(function, key) -> call id`` (:mod:`.nats_idempotency`).
* subjects ``P.wake.calls`` and ``P.wake.callbacks``: "something may be due" for every
  gateway's workers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from .nats_link import DEADLINE, TIMEOUT, Handles

DEFAULT_PREFIX = "fwatchdog"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
CONSUMER = "workers"
ACK_WAIT = 10.0
"""Seconds a pulled job may stay unanswered before JetStream hands it out again (only matters
when a gateway dies between pulling a job and acking or re-arming it)."""


@dataclass(frozen=True, slots=True)
class StreamNames:
    """A job stream: its name, the subject its jobs go to, and its wake-up subject."""

    stream: str
    subject: str
    wake: str


@dataclass(frozen=True, slots=True)
class Layout:
    """The names of everything under one prefix, so several gateway groups (or tests) can
    share one NATS."""

    prefix: str
    replicas: int = 1

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(
                f"NATS name prefix {self.prefix!r} is invalid:"
                " expected 1-32 letters, digits, - or _"
            )

    @property
    def calls(self) -> StreamNames:
        p = self.prefix
        return StreamNames(f"{p}_calls", f"{p}.calls", f"{p}.wake.calls")

    @property
    def callbacks(self) -> StreamNames:
        p = self.prefix
        return StreamNames(f"{p}_callbacks", f"{p}.callbacks", f"{p}.wake.callbacks")

    @property
    def records_bucket(self) -> str:
        return f"{self.prefix}_records"

    @property
    def idempotency_bucket(self) -> str:
        return f"{self.prefix}_idempotency"

    @property
    def described(self) -> str:
        return f"the streams and buckets {self.prefix}_*"

    @property
    def all_streams(self) -> tuple[str, ...]:
        """Every JetStream stream behind the layout (a bucket is one, ``KV_`` its name)."""
        return (
            self.calls.stream,
            self.callbacks.stream,
            f"KV_{self.records_bucket}",
            f"KV_{self.idempotency_bucket}",
        )

    async def set_up(self, nc: Client, timeout: float) -> tuple[Handles, Handles]:
        """Make (or find) the streams and buckets, each answer given ``timeout`` seconds;
        returns the handles for the workers and for the request path."""
        await self._ensure(nc.jetstream(timeout=timeout))
        return await self._handles(nc, TIMEOUT), await self._handles(nc, DEADLINE)

    async def _handles(self, nc: Client, timeout: float) -> Handles:
        js = nc.jetstream(timeout=timeout)
        return Handles(
            js,
            await js.key_value(self.records_bucket),
            await js.key_value(self.idempotency_bucket),
        )

    async def _ensure(self, js: JetStreamContext) -> None:
        for names in (self.calls, self.callbacks):
            await js.add_stream(
                StreamConfig(
                    name=names.stream,
                    subjects=[names.subject],
                    retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE,
                    num_replicas=self.replicas,
                )
            )
            await js.add_consumer(
                names.stream,
                ConsumerConfig(
                    durable_name=CONSUMER,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=ACK_WAIT,
                    max_ack_pending=-1,
                    max_deliver=-1,
                    filter_subject=names.subject,
                ),
            )
        for bucket in (self.records_bucket, self.idempotency_bucket):
            await self._bucket(js, bucket)

    async def _bucket(self, js: JetStreamContext, name: str) -> KeyValue:
        try:
            return await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            # One copy: reads are direct gets (served by the stream itself, not the
            # JetStream API: far cheaper for the server). With replicas a direct get may be
            # answered by a follower a write behind, so a read there goes to the leader.
            return await js.create_key_value(
                bucket=name,
                history=1,
                storage=StorageType.FILE,
                replicas=self.replicas,
                direct=self.replicas == 1,
            )
