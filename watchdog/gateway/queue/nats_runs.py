"""Running calls from the NATS backend (:class:`~.base.CallRunQueue`): leases of pulled
jobs, their extensions, and how attempts end; every state change is :mod:`.transitions`'."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Collection

from . import transitions
from .base import AttemptResult, LeaseBatch, LeasedCall
from .clock import Clock
from .nats_intake import DepthHint, HeldCalls
from .nats_jobs import Job, JobStream
from .nats_link import NatsLink, as_queue_errors
from .nats_record import Record
from .nats_store import Decide, RecordStore, deciding
from .nats_take import take
from .transitions import CallState, Refused

_PULL_ROUNDS = 8
_SKIP_DEPTH = 1024


class NatsRunQueue:
    def __init__(
        self,
        link: NatsLink,
        *,
        records: RecordStore,
        jobs: JobStream,
        callback_jobs: JobStream,
        depth: DepthHint,
        held: HeldCalls,
        clock: Clock,
    ) -> None:
        self.link = link
        self.records = records
        self.jobs = jobs
        self.callback_jobs = callback_jobs
        self.depth_hint = depth
        self.held = held
        self.clock = clock
        # The pulled job of each call this process leased, kept to be acked when the call
        # ends (cheaper than deleting the job by its sequence).
        self.pulled: dict[str, Job] = {}

    @as_queue_errors
    async def lease(
        self,
        *,
        owner: str,
        limit: int,
        lease_for: float,
        skip_functions: Collection[str] = (),
    ) -> LeaseBatch:
        self.link.parts()
        # Cleared before asking, so a wake racing with this lease wakes the next wait.
        self.jobs.event.clear()
        if limit <= 0:
            return LeaseBatch([], None)
        skip = frozenset(skip_functions)
        leased: list[LeasedCall] = []
        skipped: list[Job] = []
        # Jobs of functions at their limit are held until the end of this lease (so the next
        # pulls reach past them, to other functions' calls), up to _SKIP_DEPTH of them.
        failure: BaseException | None = None
        rounds = 0
        while rounds < _PULL_ROUNDS:
            jobs = await self.jobs.pull(limit - len(leased))
            if not jobs:
                break
            runnable = [job for job in jobs if job.function not in skip]
            skipped += [job for job in jobs if job.function in skip]
            rounds += 1 if runnable else 0
            outcomes = await asyncio.gather(
                *(self._lease_job(job, owner, lease_for, skip) for job in runnable),
                return_exceptions=True,
            )
            for job, outcome in zip(runnable, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failure = failure or outcome
                elif isinstance(outcome, LeasedCall):
                    leased.append(outcome)
                elif outcome == "skip":
                    skipped.append(job)
            if len(leased) >= limit or len(skipped) >= _SKIP_DEPTH or failure:
                break
        await self.jobs.put_back(skipped)
        # Calls leased before a failure are handed out; the failure is raised when nothing
        # was (the jobs it left come back after ack_wait, the leases after they expire).
        if failure is not None and not leased:
            raise failure
        return LeaseBatch(leased, self.jobs.timers.next_due(self.clock.now()))

    async def _lease_job(
        self, job: Job, owner: str, lease_for: float, skip: frozenset[str]
    ) -> LeasedCall | str | None:
        def make(rec: Record, before: CallState, after: CallState) -> LeasedCall:
            return transitions.leased_call(rec.request(), before, after)

        leased = await take(
            self.records,
            self.jobs,
            job,
            job_field="job",
            lease=functools.partial(transitions.lease, owner=owner, lease_for=lease_for),
            make=make,
            skip=lambda rec: rec.function in skip,
        )
        if isinstance(leased, LeasedCall):
            self.held[job.call_id] = (leased.attempt, owner, leased.request.function)
            self.pulled[job.call_id] = job
        return leased

    async def wait_for_calls(self, timeout: float) -> None:
        await self.jobs.wait(timeout)

    @as_queue_errors
    async def extend(self, lease: LeasedCall, lease_for: float) -> bool:
        push = deciding(
            functools.partial(
                transitions.extend, attempt=lease.attempt, owner=lease.owner, lease_for=lease_for
            )
        )
        written = await self.records.update(lease.call_id, push, keep=True)
        if written is None:
            self.forget(lease.call_id)
        return written is not None

    @as_queue_errors
    async def release(self, lease: LeasedCall) -> bool:
        hand_back = deciding(
            functools.partial(transitions.release, attempt=lease.attempt, owner=lease.owner)
        )
        written = await self.records.rearm(
            self.jobs, lease.call_id, hand_back, "job", lease.request.function
        )
        self.forget(lease.call_id)
        if written is not None:
            self.jobs.wake()
        return written is not None

    @as_queue_errors
    async def complete(self, lease: LeasedCall, result: AttemptResult) -> bool:
        succeed = functools.partial(
            transitions.succeed, attempt=lease.attempt, owner=lease.owner, result=result
        )
        return await self._finish(lease, succeed, result.body, terminal=True)

    @as_queue_errors
    async def retry(self, lease: LeasedCall, result: AttemptResult, at: float) -> bool:
        retry = functools.partial(
            transitions.retry, attempt=lease.attempt, owner=lease.owner, result=result, at=at
        )
        return await self._finish(lease, retry, result.body, terminal=False)

    @as_queue_errors
    async def fail(self, lease: LeasedCall, result: AttemptResult) -> bool:
        fail = functools.partial(
            transitions.fail, attempt=lease.attempt, owner=lease.owner, result=result
        )
        return await self._finish(lease, fail, result.body, terminal=True)

    async def _finish(
        self, lease: LeasedCall, decide: Decide, body: bytes, *, terminal: bool
    ) -> bool:
        """Record how an attempt ended (``decide``: the transition), with its jobs: a retry's
        timer, or the end of the call's job and the start of its callback's."""
        callback_seq = 0
        if terminal and lease.request.callback_url:
            callback_seq = await self.callback_jobs.publish(lease.call_id)

        def record(rec: Record, now: float) -> Record | None:
            before = rec.state()
            after = decide(before, now)
            if isinstance(after, Refused):
                return None
            stored = rec.with_state(before, after)
            self.records.fit_response(stored, body)
            if terminal:
                stored.job = 0
                if stored.callback_url is not None:
                    stored.callback_job = callback_seq
            return stored

        if terminal:
            written = await self.records.update(lease.call_id, record)
            if written is not None:
                await self.jobs.end(written[0].job, self.pulled.pop(lease.call_id, None))
        else:
            written = await self.records.rearm(
                self.jobs, lease.call_id, record, "job", lease.request.function
            )
        self.forget(lease.call_id)
        if written is None:
            await self.callback_jobs.drop(callback_seq)
            return False
        if terminal:
            self.depth_hint.count(-1)
        if not terminal:
            self.jobs.wake()
        elif callback_seq:
            # Only a callback to deliver is news for the dispatchers (each wake costs every
            # gateway a pull of the callback stream).
            self.callback_jobs.wake()
        return True

    def forget(self, call_id: str) -> None:
        """This process no longer holds the call's lease."""
        self.held.pop(call_id, None)
        self.pulled.pop(call_id, None)

    async def give_up(self) -> bool:
        """Make the calls this process still holds due now (their attempts count as
        interrupted), so another gateway does not wait for the leases to run out; True if
        there were any."""
        held = dict(self.held)
        for call_id, (attempt, owner, function) in held.items():
            expire = deciding(functools.partial(transitions.expire, attempt=attempt, owner=owner))
            await self.records.rearm(self.jobs, call_id, expire, "job", function)
        return bool(held)
