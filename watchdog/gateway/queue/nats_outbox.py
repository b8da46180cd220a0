"""Callback deliveries from the NATS backend (:class:`~.base.CallbackOutbox`): a finished
call's delivery is a second leased job, on the callbacks stream."""

from __future__ import annotations

import asyncio
import functools

from . import transitions
from .base import CallbackAttempt, CallbackBatch, CallbackJob
from .clock import Clock
from .nats_jobs import Job, JobStream
from .nats_link import NatsLink, as_queue_errors
from .nats_record import Record
from .nats_store import Decide, RecordStore, deciding
from .nats_take import take
from .transitions import CallState

_PULL_ROUNDS = 8

HeldCallbacks = dict[str, tuple[int, str]]
"""Deliveries leased by this process and not ended: call id to attempt and owner."""


class NatsCallbackOutbox:
    def __init__(
        self, link: NatsLink, *, records: RecordStore, jobs: JobStream, clock: Clock
    ) -> None:
        self.link = link
        self.records = records
        self.jobs = jobs
        self.clock = clock
        self.held: HeldCallbacks = {}
        self.pulled: dict[str, Job] = {}  # as NatsRunQueue.pulled

    @as_queue_errors
    async def lease_callbacks(self, *, owner: str, limit: int, lease_for: float) -> CallbackBatch:
        self.link.parts()
        self.jobs.event.clear()
        if limit <= 0:
            return CallbackBatch([], None)
        jobs: list[CallbackJob] = []
        failure: BaseException | None = None
        for _ in range(_PULL_ROUNDS):
            pulled = await self.jobs.pull(limit - len(jobs))
            if not pulled:
                break
            outcomes = await asyncio.gather(
                *(self._lease_callback(job, owner, lease_for) for job in pulled),
                return_exceptions=True,
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    failure = failure or outcome
                elif outcome is not None:
                    jobs.append(outcome)
            if len(jobs) >= limit or failure:
                break
        if failure is not None and not jobs:
            raise failure  # as in lease()
        return CallbackBatch(jobs, self.jobs.timers.next_due(self.clock.now()))

    async def _lease_callback(self, job: Job, owner: str, lease_for: float) -> CallbackJob | None:
        def make(rec: Record, before: CallState, after: CallState) -> CallbackJob:
            assert rec.callback_url is not None  # pending: there is a callback
            return transitions.callback_job(
                after, call_id=rec.call_id, function=rec.function, url=rec.callback_url
            )

        leased = await take(
            self.records,
            self.jobs,
            job,
            job_field="callback_job",
            lease=functools.partial(transitions.lease_callback, owner=owner, lease_for=lease_for),
            make=make,
        )
        if not isinstance(leased, CallbackJob):
            return None  # never "skip": nothing holds deliveries back
        self.held[job.call_id] = (leased.attempt, owner)
        self.pulled[job.call_id] = job
        return leased

    async def wait_for_callbacks(self, timeout: float) -> None:
        await self.jobs.wait(timeout)

    @as_queue_errors
    async def extend_callback(self, job: CallbackJob, lease_for: float) -> bool:
        push = deciding(
            functools.partial(
                transitions.extend_callback,
                attempt=job.attempt,
                owner=job.owner,
                lease_for=lease_for,
            )
        )
        written = await self.records.update(job.call_id, push)
        if written is None:
            self.forget(job.call_id)
        return written is not None

    @as_queue_errors
    async def callback_delivered(self, job: CallbackJob, attempt: CallbackAttempt) -> bool:
        def deliver(state: CallState, now: float) -> transitions.Outcome:
            return transitions.deliver_callback(
                state, attempt=job.attempt, owner=job.owner, record=attempt
            )

        return await self._end(job, deliver, None)

    @as_queue_errors
    async def callback_retry(self, job: CallbackJob, attempt: CallbackAttempt, at: float) -> bool:
        def retry(state: CallState, now: float) -> transitions.Outcome:
            return transitions.retry_callback(
                state, attempt=job.attempt, owner=job.owner, record=attempt, at=at
            )

        return await self._end(job, retry, at)

    @as_queue_errors
    async def callback_failed(self, job: CallbackJob, attempt: CallbackAttempt) -> bool:
        def fail(state: CallState, now: float) -> transitions.Outcome:
            return transitions.fail_callback(
                state, attempt=job.attempt, owner=job.owner, record=attempt
            )

        return await self._end(job, fail, None)

    async def _end(self, job: CallbackJob, decide: Decide, at: float | None) -> bool:
        """Record how a delivery ended, with its job: a retry's timer, or none."""
        if at is None:
            ended = deciding(decide)

            def record(rec: Record, now: float) -> Record | None:
                after = ended(rec, now)
                if after is not None:
                    after.callback_job = 0  # a new record: nothing else sees this
                return after

            written = await self.records.update(job.call_id, record)
            if written is not None:
                await self.jobs.end(written[0].callback_job, self.pulled.pop(job.call_id, None))
        else:
            written = await self.records.rearm(
                self.jobs, job.call_id, deciding(decide), "callback_job"
            )
            if written is not None:
                self.jobs.wake()
        self.forget(job.call_id)
        return written is not None

    def forget(self, call_id: str) -> None:
        self.held.pop(call_id, None)
        self.pulled.pop(call_id, None)

    def forget_all(self) -> None:
        self.held.clear()
        self.pulled.clear()

    async def give_up(self) -> bool:
        """Make the deliveries this process still holds due now; True if there were any."""
        held = dict(self.held)
        for call_id, (attempt, owner) in held.items():
            expire = deciding(
                functools.partial(transitions.expire_callback, attempt=attempt, owner=owner)
            )
            await self.records.rearm(self.jobs, call_id, expire, "callback_job")
        return bool(held)
