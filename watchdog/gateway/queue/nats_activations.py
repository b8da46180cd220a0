"""The NATS backend's activation records (:class:`~.base.ActivationStore`): read, list,
cancel, purge. Listing and purging scan the records bucket."""

from __future__ import annotations

import asyncio
import builtins
import time
from typing import cast

from . import transitions
from .base import ActivationPage, ActivationRecord, CancelOutcome, ListQuery
from .clock import Clock
from .nats_idempotency import IdempotencyKeys
from .nats_intake import DepthHint
from .nats_jobs import JobStream
from .nats_link import NatsLink, as_queue_errors, on_request_path
from .nats_record import Record, activation
from .nats_store import RecordStore
from .transitions import Refused


class NatsActivations:
    def __init__(
        self,
        link: NatsLink,
        *,
        records: RecordStore,
        jobs: JobStream,
        keys: IdempotencyKeys,
        depth: DepthHint,
        clock: Clock,
    ) -> None:
        self.link = link
        self.records = records
        self.jobs = jobs
        self.keys = keys
        self.depth_hint = depth
        self.clock = clock
        self._last_purge: float | None = None  # monotonic

    @on_request_path
    @as_queue_errors
    async def cancel(self, call_id: str) -> CancelOutcome:
        outcome: CancelOutcome = "not_found"

        def cancel(rec: Record, now: float) -> Record | None:
            nonlocal outcome
            before = rec.state()
            after = transitions.cancel(before, now)
            if isinstance(after, Refused):
                outcome = cast(CancelOutcome, after.reason)
                return None
            outcome = "cancelled"
            cancelled = rec.with_state(before, after)
            # A first job accepted elsewhere and not leased yet cannot be dropped here: the
            # record keeps naming it, so it is acked as ended when it comes up (a delayed
            # call's, once its delay is over: until then the depth counts it).
            if self.records.job_of(rec):
                cancelled.job = 0  # a new record: nothing else sees this
            return cancelled

        written = await self.records.update(call_id, cancel)
        if written is not None:
            await self.jobs.drop(self.records.job_of(written[0]))
            self.depth_hint.count(-1)
        return outcome

    @on_request_path
    @as_queue_errors
    async def get(self, call_id: str) -> ActivationRecord | None:
        loaded = await self.records.load(call_id)
        return None if loaded is None else activation(loaded[0], with_body=True)

    @as_queue_errors
    async def purge(self, ended_before: float) -> int:
        """Delete the records past retention. Finding them costs a pass over the bucket, so
        it is done at most every tenth of the retention (and at least hourly): a record
        may outlive the retention by that much."""
        self.link.parts()
        retention = max(0.0, self.clock.now() - ended_before)
        last = self._last_purge
        if last is not None and time.monotonic() - last < min(retention / 10, 3600.0):
            return 0
        self._last_purge = time.monotonic()
        doomed = [
            rec
            for rec in await self.records.scan()
            if rec.ended_at is not None and transitions.purgeable(rec.state(), ended_before)
        ]

        async def remove(rec: Record) -> None:
            if rec.idempotency_key is not None:
                await self.keys.forget(rec.function, rec.idempotency_key, rec.call_id)
            await self.records.remove(rec.call_id)

        for start in range(0, len(doomed), 64):
            await asyncio.gather(*(remove(rec) for rec in doomed[start : start + 64]))
        return len(doomed)

    # Defined last: inside the class body the name ``list`` is this method from here on.
    @on_request_path
    @as_queue_errors
    async def list(self, query: ListQuery) -> ActivationPage:
        before: int | None = None
        if query.cursor is not None:
            try:
                before = int(query.cursor)
            except ValueError:
                raise ValueError(f"invalid cursor {query.cursor!r}") from None
        limit = max(1, query.limit)
        matching: builtins.list[Record] = sorted(
            (
                rec
                for rec in await self.records.scan()
                if (query.function is None or rec.function == query.function)
                and (query.status is None or rec.status == query.status)
                and (query.since is None or rec.created_at >= query.since)
                and (before is None or rec.seq < before)
            ),
            key=lambda rec: rec.seq,
            reverse=True,
        )
        items = [activation(rec, with_body=False) for rec in matching[:limit]]
        cursor = str(matching[limit - 1].seq) if len(matching) > limit else None
        return ActivationPage(items, cursor)
