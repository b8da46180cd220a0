"""JetStream writes and other requests of the NATS backend's hot paths, each answer awaited on
one reply subscription.

nats-py's ``js.publish`` and ``nc.request`` do the same, but pay on every request for a
random inbox token (a ``getrandom`` system call), ``asyncio.wait_for`` (a task's worth of
futures and callbacks) and a ``PubAck`` object: about a fifth of the gateway's CPU per
accepted call. Here a request's token is a counter, its deadline one loop timer, and an
acknowledgement is read for its sequence alone. Failures are nats-py's own exceptions, as
its calls raise them, so callers (and :func:`.nats_link.as_queue_errors`) see no difference.
"""

from __future__ import annotations

import asyncio
import json

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

_STATUS = "Status"
_NO_RESPONDERS = "503"
_EXPECTED_STREAM = "Nats-Expected-Stream"
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = (10071, 10164)
"""JetStream's error codes for an expected last sequence that does not match (as nats-py's
key-value client reads them)."""


class JetStreamWrites:
    """Requests over one connection, answered on one wildcard inbox of its own."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._sent = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Subscribe to the replies (nats-py subscribes again after a reconnect)."""
        self._loop = asyncio.get_running_loop()
        self._prefix = self._nc.new_inbox() + "."
        await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)

    @property
    def waiting(self) -> int:
        """Requests sent and not yet answered (or given up on)."""
        return len(self._waiting)

    async def request(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        """Publish ``payload`` to ``subject`` and wait up to ``timeout`` seconds for the answer.

        Raises:
            nats.errors.TimeoutError: no answer in time.
            nats.errors.NoRespondersError: nobody listens on ``subject``.
        """
        loop = self._loop
        assert loop is not None, "start() first"
        self._sent += 1
        token = str(self._sent)
        answer: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = answer
        timer = loop.call_later(timeout, _expire, answer)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg = await answer
        finally:
            timer.cancel()
            del self._waiting[token]
        if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float,
        stream: str | None = None,
        last: int | None = None,
    ) -> int:
        """Publish to JetStream; return the message's sequence once the stream has it.

        ``stream``: the stream expected to take it. ``last``: the sequence the subject's last
        message must have (0: none), a key-value bucket's compare-and-set.

        Raises:
            nats.js.errors.NoStreamResponseError: no stream takes ``subject`` now (none, or
                it has no leader).
            nats.js.errors.KeyWrongLastSequenceError: ``last`` did not match.
            nats.js.errors.APIError: any other refusal.
            nats.errors.TimeoutError: no answer in time.
        """
        headers: dict[str, str] = {}
        if stream is not None:
            headers[_EXPECTED_STREAM] = stream
        if last is not None:
            headers[_EXPECTED_LAST] = str(last)
        try:
            msg = await self.request(subject, payload, timeout=timeout, headers=headers or None)
        except nats.errors.NoRespondersError:
            raise nats.js.errors.NoStreamResponseError from None
        return _sequence(msg.data)

    async def _on_reply(self, msg: Msg) -> None:
        answer = self._waiting.get(msg.subject[len(self._prefix) :])
        if answer is not None and not answer.done():
            answer.set_result(msg)


def _expire(answer: asyncio.Future[Msg]) -> None:
    if not answer.done():
        answer.set_exception(nats.errors.TimeoutError())


def _sequence(ack: bytes) -> int:
    """The sequence a JetStream acknowledgement gives, or its error raised as nats-py does."""
    reply = json.loads(ack)
    error = reply.get("error")
    if error is not None:
        try:
            nats.js.errors.APIError.from_error(error)  # raises the error's own class
        except nats.js.errors.APIError as refused:
            if refused.err_code in _WRONG_LAST_SEQUENCE:
                raise nats.js.errors.KeyWrongLastSequenceError(
                    description=refused.description
                ) from None
            raise
    return int(reply["seq"])
