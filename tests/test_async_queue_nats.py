"""What only the NATS backend has to get right: several queue instances (gateways) on one
real nats-server, leases across them, closing hands leases over, NATS's message size."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import nats
import nats.js.errors
import pytest
from async_helpers import ManualClock, run
from conftest import free_port
from nats.aio.msg import Msg
from nats_cluster import NatsCluster, nats_cluster
from nats_server import MAX_PAYLOAD, NatsServer, start_nats_server

from watchdog.gateway.queue import nats_layout, nats_link
from watchdog.gateway.queue.base import (
    AttemptResult,
    CallbackAttempt,
    CallRequest,
    ListQuery,
    QueueError,
    QueueUnavailable,
)
from watchdog.gateway.queue.nats import NatsQueue
from watchdog.gateway.queue.nats_layout import ACK_WAIT


def _ok(body: bytes = b"out") -> AttemptResult:
    now = time.time()
    return AttemptResult(now, now, 200, (), body)


def _pair(server: NatsServer, **opts: object) -> tuple[NatsQueue, NatsQueue]:
    prefix = f"n{uuid.uuid4().hex[:12]}"
    return (
        NatsQueue(server.url, prefix=prefix, **opts),  # type: ignore[arg-type]
        NatsQueue(server.url, prefix=prefix, **opts),  # type: ignore[arg-type]
    )


def test_gateways_sharing_a_queue_lease_each_call_once(nats_server: NatsServer) -> None:
    async def body() -> None:
        a, b = _pair(nats_server)
        await a.open()
        await b.open()
        try:
            ids = {(await a.enqueue(CallRequest("f", body=b"%d" % i))).call_id for i in range(60)}

            async def drain(q: NatsQueue, owner: str) -> list[str]:
                got: list[str] = []
                for _ in range(40):
                    batch = await q.lease(owner=owner, limit=7, lease_for=30)
                    got += [c.call_id for c in batch.calls]
                    for call in batch.calls:
                        assert await q.complete(call, _ok())
                    if not batch.calls and await q.depth() == 0:
                        break
                return got

            first, second = await asyncio.gather(drain(a, "a"), drain(b, "b"))
            assert sorted(first + second) == sorted(ids)  # every call, none twice
            assert first and second  # both gateways took a share
            assert await a.depth() == 0 and await b.depth() == 0
        finally:
            await a.close()
            await b.close()

    run(body(), timeout=60)


def test_a_lease_lost_on_one_gateway_is_fenced_when_another_took_over(
    nats_server: NatsServer,
) -> None:
    async def body() -> None:
        clock = ManualClock()  # both gateways' (the lease expires when it is moved)
        a, b = _pair(nats_server, clock=clock)
        await a.open()
        await b.open()
        try:
            accepted = await a.enqueue(CallRequest("f"))
            stale = (await a.lease(owner="a", limit=1, lease_for=0.3)).calls[0]
            assert (await b.lease(owner="b", limit=1, lease_for=30)).calls == []
            clock.advance(0.3)
            # The job comes back when its timer (0.3 real seconds) fires.
            deadline = time.monotonic() + 15
            while not (taken := (await b.lease(owner="b", limit=1, lease_for=30)).calls):
                assert time.monotonic() < deadline, "the expired lease was never taken over"
                await b.wait_for_calls(0.05)
            fresh = taken[0]
            assert (fresh.attempt, fresh.interrupted) == (2, True)
            assert not await a.complete(stale, _ok(b"late"))
            assert not await a.extend(stale, 30)
            assert await b.complete(fresh, _ok(b"mine"))
            record = await a.get(accepted.call_id)
            assert record is not None and record.response_body == b"mine"
        finally:
            await a.close()
            await b.close()

    run(body())


def test_a_gateway_whose_copy_of_a_record_is_stale_still_takes_the_call_up(
    nats_server: NatsServer,
) -> None:
    """A gateway remembers the records it wrote (to skip a read on the next change); another
    gateway's write makes that copy stale, and a job the stored record names must not be
    judged on it (it looked unmatched, and was dropped as an orphan)."""

    async def body() -> None:
        clock = ManualClock()
        a, b = _pair(nats_server, clock=clock)
        await a.open()
        await b.open()
        try:
            accepted = await a.enqueue(CallRequest("f"))
            (await a.lease(owner="a", limit=1, lease_for=0.2)).calls[0]  # a remembers it
            clock.advance(0.2)
            deadline = time.monotonic() + 15
            while not (taken := (await b.lease(owner="b", limit=1, lease_for=30)).calls):
                assert time.monotonic() < deadline, "the expired lease was never taken over"
                await b.wait_for_calls(0.05)
            assert await b.retry(taken[0], _ok(), clock.now())  # a new job names the call
            await b.close()
            while not (again := (await a.lease(owner="a", limit=1, lease_for=30)).calls):
                assert time.monotonic() < deadline, "the call's new job was never taken up"
                await a.wait_for_calls(0.05)
            assert (again[0].call_id, again[0].attempt) == (accepted.call_id, 3)
        finally:
            await a.close()
            await b.close()

    run(body())


def test_closing_hands_held_calls_to_another_gateway_at_once(nats_server: NatsServer) -> None:
    async def body() -> None:
        a, b = _pair(nats_server)
        await a.open()
        await b.open()
        try:
            accepted = await a.enqueue(CallRequest("f", callback_url="http://127.0.0.1:9/"))
            await a.lease(owner="a", limit=1, lease_for=3600)
            await a.close()
            taken = (await b.lease(owner="b", limit=1, lease_for=30)).calls
            assert [(c.call_id, c.attempt, c.interrupted) for c in taken] == [
                (accepted.call_id, 2, True)
            ]
        finally:
            await a.close()
            await b.close()

    run(body())


def test_records_too_large_for_nats_are_refused_or_cut(nats_server: NatsServer) -> None:
    async def body() -> None:
        q, _ = _pair(nats_server)
        await q.open()
        try:
            with pytest.raises(QueueError, match="max_payload"):
                await q.enqueue(CallRequest("f", body=b"x" * MAX_PAYLOAD))
            assert await q.depth() == 0
            accepted = await q.enqueue(CallRequest("f", body=b"small"))
            call = (await q.lease(owner="w", limit=1, lease_for=30)).calls[0]
            assert await q.complete(call, _ok(b"y" * MAX_PAYLOAD))
            record = await q.get(accepted.call_id)
            assert record is not None and record.response_truncated
            assert 0 < len(record.response_body or b"") < MAX_PAYLOAD
        finally:
            await q.close()

    run(body())


def test_an_unreachable_server_is_reported_at_open() -> None:
    async def body() -> None:
        q = NatsQueue(f"nats://127.0.0.1:{free_port()}", connect_timeout=1, start_timeout=1)
        with pytest.raises(QueueUnavailable, match="cannot reach NATS.*nats_start_timeout=1s"):
            await q.open()

    run(body())


def test_calls_of_a_function_at_its_limit_do_not_hold_up_the_others(
    nats_server: NatsServer,
) -> None:
    async def body() -> None:
        q, _ = _pair(nats_server)
        await q.open()
        try:
            for _ in range(300):  # all ahead of the one call that may run
                await q.enqueue(CallRequest("busy"))
            idle = await q.enqueue(CallRequest("idle"))
            batch = await q.lease(owner="w", limit=4, lease_for=30, skip_functions=["busy"])
            assert [c.call_id for c in batch.calls] == [idle.call_id]
            assert len((await q.lease(owner="w", limit=500, lease_for=30)).calls) == 300
        finally:
            await q.close()

    run(body(), timeout=60)


def test_a_server_without_jetstream_is_reported_at_open(tmp_path: Path) -> None:
    server = start_nats_server(tmp_path, jetstream=False)
    try:

        async def body() -> None:
            with pytest.raises(QueueUnavailable, match="has no JetStream"):
                await NatsQueue(server.url).open()

        run(body())
    finally:
        server.stop()


def test_one_reachable_server_of_several_is_enough(nats_server: NatsServer) -> None:
    async def body() -> None:
        dead = f"nats://127.0.0.1:{free_port()}"
        q = NatsQueue(f"{dead},{nats_server.url}", prefix=f"m{uuid.uuid4().hex[:12]}")
        await q.open()
        try:
            accepted = await q.enqueue(CallRequest("f"))
            assert (await q.get(accepted.call_id)) is not None
        finally:
            await q.close()

    run(body())


def test_a_job_without_a_record_is_dropped_after_a_grace(nats_server: NatsServer) -> None:
    """What a gateway dying between publishing a call's job and writing its record leaves."""

    async def body() -> None:
        q, _ = _pair(nats_server)
        await q.open()
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().publish(f"{q.prefix}.calls", b'{"id": "ghost", "fn": "f"}')
            assert await q.depth() == 1
            deadline = time.monotonic() + 30
            while await q.depth():
                assert (await q.lease(owner="w", limit=1, lease_for=30)).calls == []
                assert time.monotonic() < deadline, "the orphan job was never dropped"
                await asyncio.sleep(0.05)
        finally:
            await nc.close()
            await q.close()

    run(body(), timeout=60)


def test_call_ids_that_are_not_valid_nats_keys_still_work(nats_server: NatsServer) -> None:
    async def body() -> None:
        q, _ = _pair(nats_server)
        await q.open()
        try:
            for call_id in ("order 42/ü", "=plain", "a.b.c", "-"):
                await q.enqueue(CallRequest("f", call_id=call_id))
                record = await q.get(call_id)
                assert record is not None and record.call_id == call_id
            assert await q.cancel("order 42/ü") == "cancelled"
            assert {r.call_id for r in (await q.list(ListQuery())).items} == {
                "order 42/ü",
                "=plain",
                "a.b.c",
                "-",
            }
        finally:
            await q.close()

    run(body())


def test_an_ended_call_and_delivery_ack_the_jobs_they_hold(nats_server: NatsServer) -> None:
    """The job a lease pulled is acked when the call (then its callback delivery) ends, not
    deleted through the JetStream API (a request and its answer more), and a work-queue
    stream deletes what is acked: nothing is left, nothing comes back."""

    async def body() -> None:
        q, _ = _pair(nats_server)
        await q.open()
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()

        async def api_requests() -> int:
            return int((await js.account_info()).api.total) - 1  # less this one

        async def settled(stream: str) -> None:
            deadline = time.monotonic() + 10
            while True:
                info = await js.consumer_info(stream, "workers")
                messages = (await js.stream_info(stream)).state.messages
                if messages == 0 and info.num_ack_pending == 0:
                    return
                assert time.monotonic() < deadline, f"{stream}: {messages} left, {info}"
                await asyncio.sleep(0.02)

        try:
            await q.enqueue(CallRequest("f", callback_url="http://127.0.0.1:9/done"))
            [call] = (await q.lease(owner="w", limit=1, lease_for=30)).calls
            before = await api_requests()
            assert await q.complete(call, _ok())  # its record, the callback's job, an ack
            assert await api_requests() - before == 1  # the account_info
            await settled(q.calls_stream)
            [job] = (await q.lease_callbacks(owner="w", limit=1, lease_for=30)).jobs
            now = time.time()
            before = await api_requests()
            assert await q.callback_delivered(job, CallbackAttempt(job.attempt, now, now, 204))
            assert await api_requests() - before == 1
            await settled(q.callbacks_stream)
            assert (await q.lease(owner="w", limit=1, lease_for=30)).calls == []
            assert (await q.lease_callbacks(owner="w", limit=1, lease_for=30)).jobs == []
        finally:
            await nc.close()
            await q.close()

    run(body(), timeout=60)


def _raw_record(kv_entry_value: bytes | None) -> dict[str, object]:
    assert kv_entry_value is not None
    return dict(json.loads(kv_entry_value))


def test_a_first_job_is_named_by_a_token_until_its_lease_writes_its_sequence(
    nats_server: NatsServer,
) -> None:
    """Accepting a call writes its record and its first job at once, so the record cannot
    hold the job's sequence yet: it names the job by a token the job carries."""

    async def body() -> None:
        q, _ = _pair(nats_server)
        await q.open()
        nc = await nats.connect(nats_server.url)
        try:
            records = await nc.jetstream().key_value(q.records_bucket)
            call_id = (await q.enqueue(CallRequest("f"))).call_id
            accepted = _raw_record((await records.get(call_id)).value)
            assert isinstance(accepted["job"], int) and accepted["job"] < 0
            [call] = (await q.lease(owner="w", limit=1, lease_for=30)).calls
            assert call.call_id == call_id
            leased = _raw_record((await records.get(call_id)).value)
            info = await nc.jetstream().consumer_info(q.calls_stream, "workers")
            assert leased["job"] == info.delivered.stream_seq  # the job it pulled
            assert await q.complete(call, _ok())
            assert await q.depth() == 0
        finally:
            await nc.close()
            await q.close()

    run(body())


def test_a_call_whose_job_cannot_be_written_is_not_left_stored(nats_server: NatsServer) -> None:
    async def body() -> None:
        q, _ = _pair(nats_server)
        await q.open()
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            await js.delete_stream(q.calls_stream)  # every job write now fails
            request = CallRequest("f")
            with pytest.raises(QueueError):
                await q.enqueue(request)
            records = await js.key_value(q.records_bucket)
            with pytest.raises(nats.js.errors.KeyNotFoundError):
                await records.get(request.call_id)
        finally:
            await nc.close()
            await q.close()

    run(body())


def test_a_call_cancelled_elsewhere_before_its_first_lease_leaves_no_job(
    nats_server: NatsServer,
) -> None:
    """The gateway cancelling does not know the sequence of a first job another accepted:
    the job is settled when it comes up, and the depth comes back to 0."""

    async def body() -> None:
        a, b = _pair(nats_server)
        await a.open()
        await b.open()
        try:
            call_id = (await a.enqueue(CallRequest("f", delay=3600))).call_id
            assert await b.cancel(call_id) == "cancelled"
            deadline = time.monotonic() + 10
            while await b.depth():
                assert (await b.lease(owner="w", limit=5, lease_for=30)).calls == []
                assert time.monotonic() < deadline, "the cancelled call's job stayed"
                await asyncio.sleep(0.02)
            record = await a.get(call_id)
            assert record is not None and record.status == "cancelled"
        finally:
            await a.close()
            await b.close()

    run(body())


def test_a_lease_as_long_as_ack_wait_sends_no_timer_of_its_own(nats_server: NatsServer) -> None:
    """A job pulled and not acked comes back after the consumer's ack_wait by itself, before
    a lease that long ends: such a lease needs no nak to re-arm the job (one message less
    per call); a shorter lease still sends one. Both jobs are acked when their calls end."""

    async def body() -> None:
        q, _ = _pair(nats_server)
        await q.open()
        watcher = await nats.connect(nats_server.url)
        seen: list[bytes] = []

        async def answered(msg: Msg) -> None:
            seen.append(msg.data)

        try:
            await watcher.subscribe(f"$JS.ACK.{q.calls_stream}.>", cb=answered)
            await watcher.flush()
            for _ in range(2):
                await q.enqueue(CallRequest("f"))
            for lease_for in (ACK_WAIT + 1, 1.0):
                [call] = (await q.lease(owner="w", limit=1, lease_for=lease_for)).calls
                assert await q.complete(call, _ok())
            deadline = time.monotonic() + 10
            while len(seen) < 3:
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.01)
            assert [data[:4] for data in seen] == [b"+ACK", b"-NAK", b"+ACK"]
        finally:
            await watcher.close()
            await q.close()

    run(body())


@pytest.mark.soak  # a 3-node cluster, one node frozen
def test_a_queue_on_a_frozen_node_moves_to_another_when_its_probe_gets_no_pong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the queue is marked down, its probe pings its own server too: a server that does
    not answer is left for another at once. The client's own pings are set too far apart to
    find it out here, so only the probe can."""
    monkeypatch.setattr(nats_link, "_PING_INTERVAL", 3600)

    def on_node(q: NatsQueue) -> int | None:
        nc = q.link.connection
        url = nc.connected_url if nc is not None else None
        return url.port if url is not None else None

    async def body(cluster: NatsCluster) -> None:
        q = NatsQueue(cluster.url, prefix=f"f{uuid.uuid4().hex[:10]}", replicas=3)
        await q.open()
        frozen = next(node for node in cluster.nodes if node.port == on_node(q))
        try:
            frozen.freeze()
            with pytest.raises(QueueUnavailable):  # the request's timeout marks it down
                await q.get("any")
            deadline = time.monotonic() + 60  # an election under load, at worst
            while on_node(q) in (frozen.port, None):
                assert time.monotonic() < deadline, "the queue stayed on the frozen node"
                await asyncio.sleep(0.05)
            while True:  # and it works there once JetStream has its leaders
                try:
                    assert await q.get("any") is None
                    break
                except QueueUnavailable:
                    assert time.monotonic() < deadline, "the queue never came back"
                    await asyncio.sleep(0.05)
        finally:
            frozen.thaw()
            await q.close()

    with nats_cluster(tmp_path / "nats") as cluster:
        run(body(cluster), timeout=90)


def test_an_answer_lost_before_nats_came_back_does_not_mark_it_down_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request sent to a server that then dies times out only after the client has moved on
    (here: the server restarted, the probe found JetStream answering): that late failure says
    nothing about NATS now, so the queue stays available, where it used to answer 503 again."""
    for module in (nats_link, nats_layout):  # the lost answer is waited for long
        monkeypatch.setattr(module, "DEADLINE", 8.0)
    server = start_nats_server(tmp_path / "nats")

    async def body() -> None:
        q = NatsQueue(server.url, prefix=f"l{uuid.uuid4().hex[:12]}")
        await q.open()
        nc = q.link.connection
        assert nc is not None
        try:
            server.freeze()  # takes the request, never answers it
            sent = nc.stats["out_msgs"]
            lost = asyncio.create_task(q.depth())
            while nc.stats["out_msgs"] == sent or nc.pending_data_size:
                await asyncio.sleep(0.005)  # until the request has left for the server
            server.proc.kill()
            await asyncio.to_thread(server.restart)  # same port, same store
            deadline = time.monotonic() + 6  # well within the lost answer's 8 s
            while not (q.link.up and q.link.ups > 1):  # down at the reset, up by the probe
                assert time.monotonic() < deadline, "the queue did not come back"
                await asyncio.sleep(0.02)
            assert not lost.done(), "the lost answer was not waited for: nothing was tested"
            with pytest.raises(QueueUnavailable):
                await lost
            assert q.link.up
            assert await q.depth() == 0
        finally:
            await q.close()

    try:
        run(body(), timeout=30)
    finally:
        server.stop()
