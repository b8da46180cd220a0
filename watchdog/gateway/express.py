"""The gateway's hot path: a ``/function/NAME`` call whole in hand, relayed from callbacks.

Most synchronous calls are a head with no body or a small one, answered with a small body of a
known length. For those the express (:mod:`..http.express`) resolves the function, takes its
concurrency slot, writes the call to a pooled connection to its watchdog in one write, and the
answer to the client in one write: no request object, no task, no coroutines. The headers both
ways are the ordinary path's own (:func:`.invoke.request_pairs`,
:meth:`.Invocation.response_lines`). Whatever else happens (an answer to stream, a function
that failed or timed out) goes to the ordinary path with a :class:`.Sent` note of how far the
express got; a call it cannot take as it is (auth, a redirect, a conversion to asynchronous,
an unknown function, a limit) is declined before anything is sent, and the ordinary path
answers it as if the express were not there.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import unquote

from ..forwarding import forwarded_headers
from ..http.express import Call as Arrived
from ..http.response import has_no_body, relayed_head
from ..http.upstream import UpstreamConnection, UpstreamResponse, request_head
from ..limits import ClientStalled, Deadlines, Expiring, answer_call, time_left
from .app import FUNCTION_PREFIX, Converter
from .invoke import (
    CALL_ID_HEADER,
    CLIENT_GONE,
    Call,
    Invocation,
    InvokeError,
    Invoker,
    Sent,
    function_target,
    request_body,
    request_pairs,
)
from .proxy import relayed_whole
from .queue.base import new_call_id
from .registry import Function
from .relay import SERVED


class GatewayExpress:
    """Takes the ``/function/`` calls it can relay whole from callbacks (:meth:`take`)."""

    def __init__(
        self, invoker: Invoker, converter: Converter | None, others: tuple[str, ...]
    ) -> None:
        """``others``: the prefixes of other routes under ``/function/`` (theirs, not ours)."""
        self.invoker = invoker
        self.converter = converter
        self.others = others
        self._deadlines: dict[float, Deadlines] = {}

    def take(self, arrived: Arrived) -> bool:
        raw_path = arrived.raw_path
        if not raw_path.startswith(FUNCTION_PREFIX) or raw_path.startswith(self.others):
            return False
        path, _, query = raw_path.partition("?")
        if "//" in path or "/." in path or "/%2" in path:
            return False  # a path the ordinary path may redirect to its clean form
        segment, slash, sub_path = path[len(FUNCTION_PREFIX) :].partition("/")
        target = "/" + sub_path if slash else "/"
        if query:
            target += "?" + query
        invoker = self.invoker
        try:
            function = invoker.resolve(unquote(segment))
            upstream = invoker.upstream_of(function)
        except InvokeError:
            return False  # the ordinary path answers it (400, 404, 502)
        converter = self.converter
        if (
            converter is not None
            and converter.conversion_wait(arrived.headers, function) is not None
        ):
            return False  # it may turn asynchronous: the ordinary path's
        if not invoker.admits(function):
            return False  # the ordinary path refuses it (429)
        connection = upstream.pool.take_idle()
        if connection is None:
            return False  # the ordinary path connects (once; then there are idle ones)
        call_id = arrived.headers.get(CALL_ID_HEADER) or new_call_id()
        call = Call(arrived.method, target, forwarded_headers(arrived), arrived.body, call_id)
        body, _ = request_body(call)  # (whole: the express takes only small bodies)
        head = request_head(
            call.method,
            function_target(upstream.prefix, target),
            request_pairs(call, upstream),
            body,
            None,
            None,
        )
        started = time.monotonic()
        invoker.admit(function, started)
        relay = _Relay(self, arrived, connection, function, call, started)
        arrived.on_cancel = relay.cancel
        relay.bucket = self._deadline(invoker.timeout_of(function)).add(relay)
        answer = connection.send(call.method, head, body, None, False)
        answer.add_done_callback(relay.on_head)
        return True

    def _deadline(self, seconds: float) -> Deadlines:
        """The shared timer of the calls with a timeout of ``seconds``."""
        deadlines = self._deadlines.get(seconds)
        if deadlines is None:
            deadlines = self._deadlines[seconds] = Deadlines(self.invoker.loop, seconds)
        return deadlines


class _Relay:
    """One call taken by the express, from its sending to its end."""

    __slots__ = ("express", "arrived", "sent", "connection", "bucket", "over")

    def __init__(
        self,
        express: GatewayExpress,
        arrived: Arrived,
        connection: UpstreamConnection,
        function: Function,
        call: Call,
        started: float,
    ) -> None:
        self.express = express
        self.arrived = arrived
        self.sent = Sent(function, call, started, self._abandoned)
        self.connection = connection
        self.bucket: set[Expiring] | None = None
        self.over = False

    def on_head(self, answer: asyncio.Future[UpstreamResponse]) -> None:
        error = answer.exception()  # (retrieved even when over: else asyncio logs it)
        if self.over:
            return
        sent = self.sent
        if error is not None:
            self._failed(error)
            return
        upstream = answer.result()
        sent.invocation = invocation = Invocation(
            sent.function,
            sent.call,
            upstream,
            sent.started,
            time.monotonic() - sent.started,
            upstream.status,
        )
        arrived = self.arrived
        body = upstream.read_whole_nowait() if _small(arrived, upstream) else None
        if body is None:  # to stream, or not all here yet: the ordinary path relays it
            self._hand_off()
            return
        self._end()
        status = upstream.status
        no_body = has_no_body(status)
        head = relayed_head(
            status,
            upstream.raw_reason,
            invocation.response_lines(SERVED),
            arrived,
            dated=upstream.dated,
            body_length=None if no_body else len(body),
        )
        upstream.release()
        # The function's timeout bounds the answer's write too, as on the ordinary path.
        invoker = self.express.invoker
        left = time_left(invoker.timeout_of(sent.function), sent.started)
        whole = None if no_body else body
        answer_call(arrived, head, whole, left, lambda ended: self._written(status, ended))

    def _written(self, status: int, ended: BaseException | None) -> None:
        """Count the call once its answer is written, as the ordinary path counts it: 504 for
        a caller that did not take it within the function's timeout, 499 for one gone."""
        if isinstance(ended, ClientStalled):
            status = 504
        elif ended is not None:
            status = CLIENT_GONE
        self._count(status)

    def _count(self, status: int) -> None:
        self.express.invoker.release(self.sent.function, status, self.sent.started)

    def _failed(self, error: BaseException) -> None:
        self.connection.close()
        if self.connection.may_resend(self.arrived.method, error):
            # The watchdog closed an idle connection just as it was reused: the ordinary
            # path sends the call again, on a new one.
            self._end()
            self.express.invoker.withdraw(self.sent.function)
            self.arrived.hand_off()
            return
        self.sent.error = error
        self._hand_off()

    def expire(self) -> None:
        """The function's timeout: the ordinary path answers 504."""
        if not self.over:
            self.bucket = None  # (taken out of it as it expires)
            self.connection.close()
            self.sent.timed_out = True
            self._hand_off()

    def cancel(self) -> None:
        """The caller went away (or draining ended) first."""
        if not self.over:
            self._end()
            self.connection.close()
            self._count(CLIENT_GONE)

    def _abandoned(self) -> None:
        """Handed over, then dropped before the ordinary path began: counted as a caller
        gone, the function's answer let go unread."""
        if self.sent.invocation is not None:
            self.sent.invocation.upstream.release()
        self._count(CLIENT_GONE)

    def _end(self) -> None:
        """Nothing more to do for this call: unhook it from its request and its deadline."""
        self.over = True
        self.arrived.unhook()
        if self.bucket is not None:
            self.bucket.discard(self)
            self.bucket = None

    def _hand_off(self) -> None:
        self._end()
        self.arrived.hand_off(self.sent)


def _small(arrived: Arrived, upstream: UpstreamResponse) -> bool:
    """The answer is relayed whole (:func:`.proxy.relayed_whole`), and has a Content-Type of
    its own or no body (else the ordinary path adds the default type)."""
    return relayed_whole(arrived.method, upstream) and (
        upstream.typed or upstream.content_length == 0
    )
