"""Taking a pulled job in the NATS backend: the record it names decides (a lease of the call,
or of its callback delivery), and the job is settled to match."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from .base import CallbackJob, LeasedCall
from .nats_jobs import Job, JobStream
from .nats_record import Record
from .nats_store import Decide, RecordStore
from .transitions import CallState, Refused

Taken = TypeVar("Taken", LeasedCall, CallbackJob)
Make = Callable[[Record, CallState, CallState], Taken]
"""What a worker is handed, made of the record and its state before and after the lease."""


def _never(rec: Record) -> bool:
    return False


async def take(
    records: RecordStore,
    jobs: JobStream,
    job: Job,
    *,
    job_field: Literal["job", "callback_job"],
    lease: Decide,
    make: Make[Taken],
    skip: Callable[[Record], bool] = _never,
) -> Taken | Literal["skip"] | None:
    """Lease what ``job`` names if its record (which must name this job in ``job_field``)
    lets ``lease`` do so and ``skip`` does not hold it back.

    The job is then held until the lease's end (the timer that hands the call over if the
    lease is lost; the caller acks it when the call ends), or re-armed for when the record
    says it is due; acked when nothing is left to do;
    dropped or put back briefly when the record names another job. A skipped job is the
    caller's to put back.
    """
    verdict = "missing"
    expected = 0
    later = 0.0
    leased: Taken | None = None

    def change(rec: Record, now: float) -> Record | None:
        nonlocal verdict, expected, later, leased
        expected = getattr(rec, job_field)
        if not job.named_by(expected):
            verdict = "unmatched"
            return None
        before = rec.state()
        after = lease(before, now)
        if isinstance(after, Refused):
            if after.reason == "not_due" and after.at is not None:
                verdict, later = "later", after.at
            else:
                verdict = "ended"
            return None
        if skip(rec):
            verdict = "skip"
            return None
        verdict = "leased"
        leased = make(rec, before, after)
        taken = rec.with_state(before, after)
        setattr(taken, job_field, job.seq)  # a first job is named by its sequence from now on
        return taken

    if await records.update(job.call_id, change, keep=True) is None and verdict == "leased":
        verdict = "missing"  # decided on a copy that then vanished
    if verdict == "leased":
        assert leased is not None
        await jobs.hold(job, leased.expires)
        return leased
    if verdict == "later":
        await jobs.rearm(job, later)
    elif verdict == "skip":
        return "skip"
    elif verdict == "ended":
        await job.msg.ack()  # finished, or its delivery ended: nothing left to do
    else:
        await jobs.settle_unmatched(job, expected if verdict == "unmatched" else None)
    return None
