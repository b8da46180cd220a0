"""The NATS backend's job streams: durable timers that say "look at call X".

A job only says which call to look at: whoever pulls it reads the record and either leases
the call or puts the job back with ``nak(delay)`` until the record's due time. A leased
call's job is held unacked (or nak'd for the lease length when the lease is shorter than the
consumer's ack_wait), so it is a durable timer: if the worker dies the job comes back by the
time the lease ends and the next gateway takes the call over; when the call ends the worker
acks it. The job stream's message count *is* the queue depth (one job per unfinished call).

The record names the job it expects (a stream sequence); the job of a state change is
published *before* the record write that names it, so a crash in between leaves an extra
job, never a call without one; a call's first job is written at the same time as its record,
which names it by a token until its first lease (:meth:`.RecordStore.create_at_once`). A
job older than the record's is stale and dropped; a newer one whose record write has not
landed yet waits briefly, then counts as an orphan.

Naks are fire-and-forget: a lost one only makes the job come back after the consumer's
``ack_wait``, and the record decides again. (The ack of an ended call's job is confirmed,
so that the depth read next is right.)
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .clock import Clock
from .nats_layout import ACK_WAIT, CONSUMER, StreamNames
from .nats_link import TIMEOUT, NatsLink, reason, timeout

log = logging.getLogger("watchdog.gateway.queue")

_RECHECK = 0.1
_ORPHAN_CHECKS = 50
"""A job newer than its record is looked at again every _RECHECK seconds, this many times, in
case the record write that names it is still in flight; then it counts as an orphan."""
_WAKE_GAP = 0.005


class Timers:
    """The times this process re-armed jobs for: a hint of when something next becomes due
    (a worker sleeps until then at most). Other gateways' timers are not known here; the
    worker's poll interval covers them."""

    def __init__(self) -> None:
        self._heap: list[float] = []

    def add(self, at: float) -> None:
        heapq.heappush(self._heap, at)
        if len(self._heap) > 4096:  # a hint only: keep the earliest
            self._heap = heapq.nsmallest(1024, self._heap)

    def next_due(self, now: float) -> float | None:
        # A timer that just fired may not be pullable yet: look again shortly, not at once.
        while self._heap and self._heap[0] < now - 0.05:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        first = self._heap[0]
        return first if first > now else now + 0.01


@dataclass(frozen=True, slots=True)
class Job:
    msg: Msg
    call_id: str
    seq: int
    function: str
    first: int = 0  # a call's first job: the token its record names it by until leased

    def named_by(self, expected: int) -> bool:
        """Whether a record naming ``expected`` (a sequence, or minus a first job's token:
        see :meth:`.RecordStore.create_at_once`) means this job."""
        return expected == self.seq or (expected < 0 and self.first == -expected)


class JobStream:
    """One stream of jobs (the calls', or the callbacks'), the shared consumer's pulls from
    it, its timers and its wake-ups."""

    def __init__(self, link: NatsLink, names: StreamNames, clock: Clock) -> None:
        self.link = link
        self.names = names
        self.clock = clock
        self.event = asyncio.Event()
        """Set when something may be due: a wake-up from any gateway, or this one's own."""
        self.timers = Timers()
        # Pulls of the shared consumer answer to one long-lived inbox, one pull at a time (a
        # pulled message names the stream's subject, not the inbox): no SUB and UNSUB per
        # pull, two more messages for the server every lease.
        self._inbox: tuple[Subscription, asyncio.Lock] | None = None
        self._wake_due = False
        self._wake_tasks: set[asyncio.Future[None]] = set()

    @property
    def stream(self) -> str:
        return self.names.stream

    async def subscribe(self, nc: Client) -> None:
        """Listen for wake-ups and open the pull inbox (while the queue opens)."""
        self.event = asyncio.Event()

        async def woken(msg: Msg) -> None:
            self.event.set()

        await nc.subscribe(self.names.wake, cb=woken)
        self._inbox = (await nc.subscribe(nc.new_inbox()), asyncio.Lock())

    async def wait(self, seconds: float) -> None:
        """Return when something may be due, or after ``seconds``."""
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await self.event.wait()
        except TimeoutError:
            pass

    # -- jobs -----------------------------------------------------------------------------

    async def publish(self, call_id: str, function: str = "", first: int = 0) -> int:
        """Publish a job for ``call_id``; it names the function (when known) so a lease can
        pass over calls of functions at their limit without reading their records, and the
        token of a first job (``first``) its record names it by."""
        writes = self.link.parts().writes
        fields: dict[str, object] = {"id": call_id, "at": self.clock.now(), "fn": function}
        if first:
            fields["first"] = first
        payload = json.dumps(fields).encode()
        return await writes.publish(
            self.names.subject, payload, timeout=timeout(), stream=self.stream
        )

    async def drop(self, seq: int) -> None:
        """Delete a job that is no longer wanted (best effort: a job that survives is seen
        to be stale when it next comes up, and dropped then)."""
        if seq <= 0:
            return
        nc = self.link.parts().nc
        # Not js.delete_msg: it asks the server to overwrite the message's bytes, too.
        request = json.dumps({"seq": seq, "no_erase": True}).encode()
        try:
            await nc.request(f"$JS.API.STREAM.MSG.DELETE.{self.stream}", request, timeout=timeout())
        except nats.errors.Error as exc:
            log.debug("dropping job %s/%d: %s", self.stream, seq, reason(exc))

    async def pull(self, batch: int) -> list[Job]:
        """Take up to ``batch`` jobs that are available now."""
        assert self._inbox is not None
        sub, lock = self._inbox
        async with lock:
            # A message a pull gave up waiting for (timed out) is taken by the next one: it
            # is a job delivered to this gateway all the same.
            msgs = await pull_into(self.link, sub, self.stream, CONSUMER, batch)
        jobs: list[Job] = []
        for msg in msgs:
            try:
                payload = json.loads(msg.data)
                call_id = str(payload["id"])
            except (ValueError, KeyError, TypeError):
                log.warning("dropping a malformed job on %s: %r", self.stream, msg.data[:100])
                await msg.term()
                continue
            function = str(payload.get("fn") or "")
            first = int(payload.get("first") or 0)
            jobs.append(Job(msg, call_id, msg.metadata.sequence.stream, function, first))
        return jobs

    async def end(self, seq: int, held: Job | None) -> None:
        """Remove the job ``seq`` of a call (or delivery) that ended: if it is the job this
        process pulled and holds, by acking it, which a work-queue stream answers by
        deleting the message (accepted after a delayed nak too); else by :meth:`drop`. The
        ack is confirmed, so a depth read next no longer counts the job, but it is no
        JetStream API request (JSON both ways, and the API's queue on the server). Best
        effort, as a drop: a job that survives comes back, and is seen to be stale."""
        if held is None or held.seq != seq:
            await self.drop(seq)
            return
        try:
            await self.link.parts().writes.request(held.msg.reply, b"+ACK", timeout=timeout())
        except nats.errors.Error as exc:
            log.debug("acking job %s/%d: %s", self.stream, seq, reason(exc))

    async def hold(self, job: Job, until: float) -> None:
        """Keep a leased call's job as the durable timer that hands the call over if the
        lease is lost, until ``until``. A delivered job that is not acked comes back after
        the consumer's ack_wait by itself, so a lease at least that long sends nothing: the
        job comes back before the lease ends, and is re-armed then for the rest of it (the
        worker has usually acked it long before)."""
        if until - self.clock.now() < ACK_WAIT:
            await self.rearm(job, until)
        else:
            self.timers.add(until)

    async def rearm(self, job: Job, at: float) -> None:
        """Hand the job back to come up again at ``at``: the durable timer of a lease, a
        delay or a retry (a clock's seconds taken as real ones: if the clock says it is not
        time yet when the job comes back, it is handed back again)."""
        self.timers.add(at)
        await job.msg.nak(delay=max(0.001, at - self.clock.now()))

    async def put_back(self, jobs: Iterable[Job]) -> None:
        """Hand jobs back at once, confirmed, so the next lease (of any worker) has them."""
        nc = self.link.parts().nc

        async def put_back(job: Job) -> None:
            try:
                await nc.request(job.msg.reply, b"-NAK", timeout=TIMEOUT)
            except nats.errors.TimeoutError:
                pass  # it comes back after ack_wait

        await asyncio.gather(*(put_back(job) for job in jobs))

    async def settle_unmatched(self, job: Job, expected: int | None) -> None:
        """Settle a job its record does not name: drop it when stale (older than the one the
        record names) or orphaned; put it back briefly when the record write that will name
        it may still be in flight (a call being accepted right now: the workers are told to
        look again then, not at their next poll)."""
        newer = expected is None or job.seq > expected
        # Counted in deliveries, not by clock: gateways' clocks may disagree.
        if newer and job.msg.metadata.num_delivered <= _ORPHAN_CHECKS:
            self.timers.add(self.clock.now() + _RECHECK)
            await job.msg.nak(delay=_RECHECK)
        else:
            await job.msg.ack()

    # -- wake-ups -------------------------------------------------------------------------

    def wake(self) -> None:
        """Tell every gateway's workers that something may be due: this process's at once,
        the others with one message per stream per _WAKE_GAP (under load one wake covers
        many calls, rather than every enqueue reaching every gateway)."""
        self.event.set()
        if self._wake_due:
            return
        self._wake_due = True
        asyncio.get_running_loop().call_later(_WAKE_GAP, self._send_wake)

    async def wake_now(self) -> None:
        """Wake every gateway's workers at once (the connection is about to close)."""
        await self.link.parts().nc.publish(self.names.wake, b"")

    def _send_wake(self) -> None:
        self._wake_due = False
        nc = self.link.connection
        if nc is None or nc.is_closed:
            return
        task = asyncio.ensure_future(nc.publish(self.names.wake, b""))
        self._wake_tasks.add(task)
        task.add_done_callback(self._wake_sent)

    def _wake_sent(self, task: asyncio.Future[None]) -> None:
        self._wake_tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.debug("wake not sent: %s", reason(error))  # a hint only


async def pull_now(link: NatsLink, stream: str, consumer: str, batch: int) -> list[Msg]:
    """Up to ``batch`` messages available now from another pull consumer (a scan's), through
    an inbox of its own."""
    nc = link.parts().nc
    sub = await nc.subscribe(nc.new_inbox())
    try:
        return await pull_into(link, sub, stream, consumer, batch)
    finally:
        await sub.unsubscribe()


async def pull_into(
    link: NatsLink, sub: Subscription, stream: str, consumer: str, batch: int
) -> list[Msg]:
    """Ask ``consumer`` for up to ``batch`` messages available now (``no_wait``), answered
    to ``sub``."""
    nc = link.parts().nc
    request = json.dumps({"batch": batch, "no_wait": True}).encode()
    msgs: list[Msg] = []
    try:
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", request, sub.subject)
        while len(msgs) < batch:
            msg = await sub.next_msg(timeout=timeout())
            if msg.headers and msg.headers.get("Status"):
                break  # 404 no messages, 408 expired: nothing more now
            msgs.append(msg)
    except nats.errors.TimeoutError:
        pass  # what arrived is used; the rest come back after ack_wait
    return msgs
