"""The NATS backend's own request path (:mod:`watchdog.gateway.queue.nats_writes`) against a
real nats-server: sequences, compare-and-set, and failures raised as nats-py raises them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import nats.errors
import nats.js.errors
import pytest
from async_helpers import run
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig
from nats_server import NatsServer

from watchdog.gateway.queue.nats_writes import JetStreamWrites


@asynccontextmanager
async def _connected(server: NatsServer) -> AsyncIterator[tuple[nats.NATS, JetStreamWrites]]:
    nc = await nats.connect(server.url)
    try:
        writes = JetStreamWrites(nc)
        await writes.start()
        yield nc, writes
    finally:
        await nc.close()


def test_publishes_return_the_stream_sequence_and_expected_stream_is_checked(
    nats_server: NatsServer,
) -> None:
    name = f"w{uuid.uuid4().hex[:12]}"

    async def body() -> None:
        async with _connected(nats_server) as (nc, writes):
            await nc.jetstream().add_stream(
                StreamConfig(name=name, subjects=[f"{name}.>"], storage=StorageType.MEMORY)
            )
            both = await asyncio.gather(
                writes.publish(f"{name}.a", b"1", timeout=5, stream=name),
                writes.publish(f"{name}.b", b"2", timeout=5),
            )
            assert sorted(both) == [1, 2]
            stored = await nc.jetstream().get_msg(name, seq=both[0])
            assert stored.data == b"1"
            with pytest.raises(nats.js.errors.BadRequestError, match="expected stream"):
                await writes.publish(f"{name}.a", b"3", timeout=5, stream="another")
            with pytest.raises(nats.js.errors.NoStreamResponseError):
                await writes.publish(f"nobody.{name}", b"4", timeout=5)

    run(body(), timeout=30)


def test_a_compare_and_set_that_does_not_match_is_a_wrong_last_sequence(
    nats_server: NatsServer,
) -> None:
    bucket = f"w{uuid.uuid4().hex[:12]}"

    async def body() -> None:
        async with _connected(nats_server) as (nc, writes):
            kv = await nc.jetstream().create_key_value(bucket=bucket, history=1)
            subject = f"$KV.{bucket}.key"
            first = await writes.publish(subject, b"one", timeout=5, last=0)
            with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
                await writes.publish(subject, b"again", timeout=5, last=0)  # exists
            second = await writes.publish(subject, b"two", timeout=5, last=first)
            with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
                await writes.publish(subject, b"stale", timeout=5, last=first)
            entry = await kv.get("key")
            assert (entry.value, entry.revision) == (b"two", second)
            await kv.delete("key")  # a tombstone: creating it again takes nats-py's create
            with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
                await writes.publish(subject, b"new", timeout=5, last=0)

    run(body(), timeout=30)


def test_an_unanswered_request_times_out_and_is_forgotten(nats_server: NatsServer) -> None:
    subject = f"silent.{uuid.uuid4().hex[:12]}"

    async def body() -> None:
        heard: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

        async def listen_only(msg: Msg) -> None:
            heard.set_result(msg)  # takes the request, never answers

        async with _connected(nats_server) as (nc, writes):
            await nc.subscribe(subject, cb=listen_only)
            await nc.flush()
            started = time.monotonic()
            with pytest.raises(nats.errors.TimeoutError):
                await writes.request(subject, b"ping", timeout=0.3)
            assert time.monotonic() - started >= 0.3
            assert (await heard).data == b"ping"
            assert writes.waiting == 0  # nothing left waiting for a reply
            with pytest.raises(nats.errors.NoRespondersError):
                await writes.request(f"nobody.{subject}", b"ping", timeout=5)

    run(body(), timeout=30)
