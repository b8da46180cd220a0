"""Accepting calls into the NATS backend (:class:`~.base.CallIntake`): the record, its first
job, the idempotency key, and the depth limit."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import cast

from . import transitions
from .base import (
    CallRequest,
    EnqueueResult,
    LeasedCall,
    QueueError,
    QueueFull,
    QueueUnavailable,
    Status,
)
from .clock import Clock
from .nats_idempotency import Claim, IdempotencyKeys
from .nats_jobs import JobStream
from .nats_link import NatsLink, as_queue_errors, on_request_path
from .nats_record import Record, b64, creation_stamp, header_pairs, plain_state
from .nats_store import RecordStore
from .transitions import CallState

HeldCalls = dict[str, tuple[int, str, str]]
"""Calls leased by this process and not ended: call id to attempt, owner and function."""


class DepthHint:
    """The last queue depth read, kept current with this process's own changes, so an
    enqueue far below the limit need not ask (the job stream's message count is the depth)."""

    def __init__(self) -> None:
        self._seen: tuple[int, float] | None = None  # depth, monotonic time read

    def count(self, change: int) -> None:
        if self._seen is not None:
            self._seen = (max(0, self._seen[0] + change), self._seen[1])

    def read(self, depth: int) -> None:
        self._seen = (depth, time.monotonic())

    def clearly_below(self, limit: int) -> bool:
        """Far below the limit a depth read in the last second is good enough."""
        seen = self._seen
        fresh = seen is not None and time.monotonic() - seen[1] < 1.0
        return fresh and seen is not None and seen[0] < limit * 0.9


class NatsIntake:
    def __init__(
        self,
        link: NatsLink,
        *,
        records: RecordStore,
        jobs: JobStream,
        keys: IdempotencyKeys,
        depth: DepthHint,
        held: HeldCalls,
        clock: Clock,
        max_depth: int,
        retry_after: float,
    ) -> None:
        self.link = link
        self.records = records
        self.jobs = jobs
        self.keys = keys
        self.depth_hint = depth
        self.held = held
        self.clock = clock
        self.max_depth = max_depth
        self.retry_after = retry_after

    @on_request_path
    @as_queue_errors
    async def enqueue(self, request: CallRequest) -> EnqueueResult:
        self.link.parts()
        claimed: Claim | None = None
        if request.idempotency_key is not None:
            existing, claimed = await self.keys.claim(request)
            if existing is not None:
                loaded = await self.records.load(existing)
                status = cast(Status, loaded[0].status) if loaded else "queued"
                return EnqueueResult(existing, False, status)
        try:
            await self._check_depth()
            has_callback = request.callback_url is not None
            state = transitions.enqueue(
                self.clock.now(), delay=request.delay, has_callback=has_callback
            )
            # Both writes at once, except under an idempotency key: a record whose job
            # failed and could not be removed would hold the key for a call never run.
            await self._store_new(new_record(request, state), at_once=claimed is None)
        except QueueUnavailable:
            raise  # releasing would wait on NATS too: the claim lapses after its grace
        except QueueError:  # nothing stored (a NATS failure may have stored it: key kept)
            if claimed is not None:
                await self.keys.release(claimed)
            raise
        if state.delay and state.due_at is not None:
            # A hint for this gateway's worker, known now: a pull right after may not see the
            # new job yet (a no_wait pull gets what the consumer has taken in so far).
            self.jobs.timers.add(state.due_at)
        self.jobs.wake()
        return EnqueueResult(request.call_id, True, "queued")

    @on_request_path
    @as_queue_errors
    async def adopt(self, request: CallRequest, *, owner: str, lease_for: float) -> LeasedCall:
        self.link.parts()
        await self._check_depth()
        has_callback = request.callback_url is not None
        state = transitions.adopt(
            self.clock.now(), has_callback=has_callback, owner=owner, lease_for=lease_for
        )
        rec = new_record(request, state)
        await self._store_new(rec, keep=True)
        self.held[rec.call_id] = (1, owner, rec.function)
        return transitions.leased_call(replace(request, delay=0.0), state, state)

    async def _store_new(self, rec: Record, *, keep: bool = False, at_once: bool = False) -> None:
        if at_once:
            await self.records.create_at_once(rec, self.jobs)
        else:
            await self.records.create(rec, self.jobs, keep=keep)
        self.depth_hint.count(+1)

    @on_request_path
    @as_queue_errors
    async def find_idempotent(self, function: str, key: str) -> str | None:
        return await self.keys.find(function, key)

    async def _check_depth(self) -> None:
        if not self.max_depth or self.depth_hint.clearly_below(self.max_depth):
            return
        depth = await self.depth()
        self.depth_hint.read(depth)
        if depth >= self.max_depth:
            raise QueueFull(depth, self.retry_after)

    @on_request_path
    @as_queue_errors
    async def depth(self) -> int:
        info = await self.link.parts().js.stream_info(self.jobs.stream)
        return int(info.state.messages)


def new_record(request: CallRequest, state: CallState) -> Record:
    """The record of a call just accepted, in ``state`` (a new call's: no response or log
    yet); its job is filled in when stored."""
    return Record(
        call_id=request.call_id,
        function=request.function,
        method=request.method,
        path=request.path,
        query=request.query,
        headers=header_pairs(request.headers),
        body=b64(request.body),
        callback_url=request.callback_url,
        idempotency_key=request.idempotency_key,
        created_at=state.created_at,
        delay=state.delay,
        seq=creation_stamp(),
        **plain_state(state),
    )
