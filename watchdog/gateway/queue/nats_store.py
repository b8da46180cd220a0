"""The NATS backend's records bucket: one activation record per call (:class:`.Record`), the
truth about the call. Every change is a compare-and-set on the key's revision
(``kv.update(last=...)``), so two gateways never both win; what to change is decided by
:mod:`.transitions` on the record read, and decided again when another write got there
first.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from . import transitions
from .base import QueueError
from .clock import Clock
from .nats_jobs import JobStream, pull_now
from .nats_link import NatsLink, reason, timeout
from .nats_record import Record, b64, record_key
from .transitions import CallState, Refused

log = logging.getLogger("watchdog.gateway.queue")

_CAS_TRIES = 8
_FIRST_JOBS_KEPT = 8192
"""First jobs whose sequence this process remembers (about 1.5 MB), for a cancel before the
call's first lease (:meth:`RecordStore.job_of`)."""
_SCAN_LIMIT = 200_000

Decide = Callable[[CallState, float], transitions.Outcome]
"""A transition of :mod:`.transitions` with everything but the state and the time given."""
Change = Callable[[Record, float], "Record | None"]
"""What :meth:`RecordStore.update` writes of a stored record (None: leave it). It returns a
new record, never the one it was given changed."""


def deciding(decide: Decide) -> Change:
    """The record change that stores what ``decide`` decides (nothing if it refuses)."""

    def change(rec: Record, now: float) -> Record | None:
        before = rec.state()
        after = decide(before, now)
        return None if isinstance(after, Refused) else rec.with_state(before, after)

    return change


class RecordStore:
    def __init__(self, link: NatsLink, bucket: str, clock: Clock) -> None:
        self.link = link
        self.bucket = bucket
        self.clock = clock
        self._known: dict[str, tuple[Record, int]] = {}  # see update(keep=True)
        self._first_jobs: dict[str, int] = {}  # see create_at_once

    def forget(self) -> None:
        """Drop what :meth:`update` and :meth:`create_at_once` remembered (the queue
        closes)."""
        self._known.clear()
        self._first_jobs.clear()

    async def load(self, call_id: str) -> tuple[Record, int] | None:
        """The record of ``call_id`` and its revision, if it exists."""
        records = self.link.parts().records
        try:
            entry = await records.get(record_key(call_id))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.value is None or entry.revision is None:
            return None
        return Record.decode(entry.value), entry.revision

    async def create(self, rec: Record, jobs: JobStream, *, keep: bool = False) -> None:
        """Publish the call's first job, then create its record naming it.

        Raises:
            QueueError: the call id exists already, or the record is too large for NATS.
        """
        if not self._clearly_fits(rec):
            self._check_size(rec)
        seq = await jobs.publish(rec.call_id, rec.function)
        rec.job = seq
        try:
            revision = await self._create(rec.call_id, rec.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            await jobs.drop(seq)
            raise QueueError(f"call id {rec.call_id} already exists") from None
        # Any other failure leaves the job: if the record was written after all, the job is
        # its; if not, the job is an orphan, dropped when it comes up.
        if keep:
            self._known[rec.call_id] = (rec, int(revision))

    async def create_at_once(self, rec: Record, jobs: JobStream) -> None:
        """Publish the call's first job and create its record at the same time (one round
        trip, not two): the record names the job by minus a token the job carries, its
        sequence not being known yet; the lease that takes the job writes its sequence.
        If either write fails the other is undone when it is known to have landed, so no
        call is left with a record and no job (a job without a record is dropped as an
        orphan).

        Raises:
            QueueError: the call id exists already, or the record is too large for NATS.
        """
        if not self._clearly_fits(rec):
            self._check_size(rec)
        token = random.getrandbits(52) + 1  # tells jobs apart: nothing to keep secret
        rec.job = -token
        published, created = await asyncio.gather(
            jobs.publish(rec.call_id, rec.function, first=token),
            self._create(rec.call_id, rec.encode()),
            return_exceptions=True,
        )
        if isinstance(created, nats.js.errors.KeyWrongLastSequenceError):
            if isinstance(published, int):
                await jobs.drop(published)  # its token is not the existing record's
            raise QueueError(f"call id {rec.call_id} already exists") from None
        if isinstance(published, BaseException):
            if not isinstance(created, BaseException):
                await self._undo_create(rec.call_id)
            raise published
        if isinstance(created, BaseException):
            raise created  # its outcome unknown: the job stays (an orphan if no record)
        self._first_jobs[rec.call_id] = published
        if len(self._first_jobs) > _FIRST_JOBS_KEPT:
            del self._first_jobs[next(iter(self._first_jobs))]

    async def _undo_create(self, call_id: str) -> None:
        try:
            await self.remove(call_id)
        except Exception as exc:  # noqa: BLE001 - the caller reports the first failure
            log.warning(
                "call %s: its job could not be written nor its record removed (%s): the"
                " record stays queued, and the call is not run",
                call_id,
                reason(exc),
            )

    def job_of(self, rec: Record) -> int:
        """The sequence of the call job ``rec`` names, if known (0 if not: a first job not
        yet leased, accepted by another process)."""
        return rec.job if rec.job > 0 else self._first_jobs.get(rec.call_id, 0)

    async def update(
        self, call_id: str, change: Change, *, keep: bool = False
    ) -> tuple[Record, Record] | None:
        """Write the record ``change`` makes of the stored one, with compare-and-set,
        re-reading and re-deciding on a conflict; ``change`` returns None to leave it alone.
        Returns (before, after) when written, else None.

        ``keep``: remember the written record and revision, so the next update of a call this
        process holds (extend, complete) can skip the read; a stale copy only costs a retry
        (its write is refused, or its refusal decided again on the stored record).
        """
        writes = self.link.parts().writes
        subject = self._subject(call_id)
        for _ in range(_CAS_TRIES):
            known = self._known.pop(call_id, None)
            loaded = known or await self.load(call_id)
            if loaded is None:
                return None
            before, revision = loaded
            after = change(before, self.clock.now())
            if after is None:
                if known is not None:
                    # A remembered copy may be stale (another write landed while the one
                    # that remembered it was being acknowledged): a refusal is only final
                    # when decided on the stored record.
                    continue
                return None
            try:
                written = await writes.publish(
                    subject, after.encode(), timeout=timeout(), last=revision
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            if keep:
                self._known[call_id] = (after, written)
            return before, after
        raise QueueError(f"call {call_id}: the record kept changing under {_CAS_TRIES} updates")

    async def rearm(
        self,
        jobs: JobStream,
        call_id: str,
        change: Change,
        job_field: str,
        function: str = "",
    ) -> tuple[Record, Record] | None:
        """Write ``change`` together with a new job that replaces the record's current one
        (published first: a crash leaves an extra job, not a record without one)."""
        seq = await jobs.publish(call_id, function)

        def with_job(rec: Record, now: float) -> Record | None:
            after = change(rec, now)  # a new record: setting its job touches nothing else
            if after is not None:
                setattr(after, job_field, seq)
            return after

        # If the update fails its outcome is unknown (it may have landed): the new job stays,
        # and is dropped as an orphan later if the record does not name it.
        written = await self.update(call_id, with_job)
        if written is None:
            await jobs.drop(seq)
            return None
        await jobs.drop(int(getattr(written[0], job_field)))
        return written

    async def _create(self, call_id: str, value: bytes) -> int:
        """Create the record of ``call_id``; return its revision.

        Raises:
            nats.js.errors.KeyWrongLastSequenceError: it exists.
        """
        parts = self.link.parts()
        try:
            return await parts.writes.publish(
                self._subject(call_id), value, timeout=timeout(), last=0
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            # A key deleted before has a tombstone: nats-py's create writes over it.
            return int(await parts.records.create(record_key(call_id), value))

    def _subject(self, call_id: str) -> str:
        return f"$KV.{self.bucket}.{record_key(call_id)}"

    # -- sizes ----------------------------------------------------------------------------

    def _room(self) -> int:
        """The largest record the server takes (its ``max_payload``), less header room."""
        return int(self.link.parts().nc.max_payload) - 512

    def fit_response(self, rec: Record, body: bytes) -> None:
        """Cut the stored response so the record fits in one NATS message (flagged as
        truncated, like a response over the gateway's result limit)."""
        room = self._room()
        headers = sum(len(n) + len(v) + 8 for n, v in [*rec.headers, *rec.response_headers])
        if len(rec.body or "") + len(rec.response_body or "") + headers + 16384 < room:
            return  # clearly fits (the rest of a record is a few KiB): no need to measure
        over = len(rec.encode()) - room
        if over > 0:
            keep = max(0, len(body) - over * 3 // 4 - 64)  # base64: 4 bytes per 3
            rec.response_body = b64(body[:keep])
            rec.response_truncated = True

    def _clearly_fits(self, rec: Record) -> bool:
        """The record is far below the server's message size, so it need not be encoded
        once more only to be measured: its body (base64, as stored) and its texts (counted
        six times: JSON may escape a character as ``\\uXXXX``), with room for the rest."""
        texts = [rec.call_id, rec.function, rec.path, rec.query]
        texts += [rec.callback_url or "", rec.idempotency_key or ""]
        texts += [part for pair in rec.headers for part in pair]
        estimate = len(rec.body or "") + sum(6 * len(text) + 8 for text in texts) + 8192
        return estimate < self._room()

    def _check_size(self, rec: Record) -> None:
        size = len(rec.encode()) + 20  # the job's sequence is filled in later
        if size > self._room():
            raise QueueError(
                f"call {rec.call_id} is too large for NATS: its record takes {size} bytes, the"
                f" server's max_payload allows {self._room() + 512} (raise max_payload in the"
                " nats-server configuration, or lower --max-async-body)"
            )

    # -- every record ---------------------------------------------------------------------

    async def scan(self) -> list[Record]:
        """Every record: the latest value of each key, read through an ephemeral pull
        consumer. Costs a pass over the whole bucket, bodies included, up to _SCAN_LIMIT.
        (Not nats-py's KV watcher: it can signal the end before the first value arrives.)"""
        js = self.link.parts().js
        stream = f"KV_{self.bucket}"
        info = await js.add_consumer(
            stream,
            ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                filter_subject=f"$KV.{self.bucket}.>",
                inactive_threshold=60.0,
                mem_storage=True,
            ),
        )
        assert info.name is not None
        left = min(int(info.num_pending or 0), _SCAN_LIMIT)
        found: list[Record] = []
        try:
            while left > 0:
                msgs = await pull_now(self.link, stream, info.name, min(left, 512))
                if not msgs:
                    break
                left -= len(msgs)
                for msg in msgs:
                    if msg.data and not (msg.headers and msg.headers.get("KV-Operation")):
                        found.append(Record.decode(msg.data))
        finally:
            try:
                await js.delete_consumer(stream, info.name)
            except nats.js.errors.NotFoundError:
                pass
        return found

    async def remove(self, call_id: str) -> None:
        """Delete a record for good: purging its subject leaves no delete marker behind,
        unlike ``kv.delete``."""
        js = self.link.parts().js
        subject = f"$KV.{self.bucket}.{record_key(call_id)}"
        await js.purge_stream(f"KV_{self.bucket}", subject=subject)
