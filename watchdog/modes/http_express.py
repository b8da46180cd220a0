"""mode=http's hot path: a request whole in hand, proxied from callbacks, without a task.

Most requests to a function are a head with no body or a small one, answered with a small
body of a known length. For those the express (:mod:`..http.express`) writes the request to a
pooled upstream connection in one write as soon as it has arrived, and the answer to the client
in one write as soon as it has arrived: no request object, no task, no coroutines. Whatever
else happens (an answer to stream, an upstream that failed, exec_timeout, no idle connection)
goes to :class:`.HttpRunner`'s ordinary path, with a note (:class:`ExpressNote`) of how far
the express got, so that every rule is written once: there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from ..forwarding import forwarded_pairs
from ..http.express import Call
from ..http.request import WHOLE_BODY_LIMIT
from ..http.response import Framing, has_no_body, relayed_head
from ..http.upstream import (
    UpstreamConnection,
    UpstreamPool,
    UpstreamResponse,
    request_head,
)
from ..limits import (
    Admission,
    Admitted,
    Deadlines,
    Expiring,
    answer_call,
)
from ..responses import DURATION_HEADER

_DURATION_NAME = DURATION_HEADER.encode()
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
"""Methods a body-less request is sent with "Content-Length: 0" for, as HTTP clients do: an
upstream may otherwise wait for a body or refuse with 411."""


class Upstream(Protocol):
    """What the express needs of the runner that supervises the upstream."""

    def healthy(self) -> bool:
        """The upstream runs and accepts connections."""

    def answered(self) -> None:
        """An answer came (the upstream is not hung)."""


class ExpressNote(Admitted):
    """How far the express got with a request it handed to the ordinary path: admitted, and
    sent to the upstream, whose answer's head is ``upstream`` (to relay), or which failed
    with ``error``, or did not answer within exec_timeout (``timed_out``)."""

    __slots__ = ("upstream", "error", "timed_out")

    def __init__(
        self,
        started: float,
        abandon: Callable[[], None],
        *,
        upstream: UpstreamResponse | None = None,
        error: BaseException | None = None,
        timed_out: bool = False,
    ) -> None:
        super().__init__(started, abandon)
        self.upstream = upstream
        self.error = error
        self.timed_out = timed_out


class HttpExpress:
    """Takes the requests it can answer whole from callbacks (:meth:`take`)."""

    def __init__(
        self,
        upstream: Upstream,
        pool: UpstreamPool,
        admission: Admission,
        deadlines: Deadlines | None,
        write_timeout: float | None,
    ) -> None:
        self.upstream = upstream
        self.pool = pool
        self.admission = admission
        self.deadlines = deadlines
        self.write_timeout = write_timeout

    def take(self, call: Call) -> bool:
        path = call.raw_path
        if (
            not self.upstream.healthy()
            or path[:1] != "/"  # another form of target, refused by the ordinary path
            or path.startswith(("/_/", "/%"))  # probes (and their encoded forms)
            or "X-Timeout" in call.headers
        ):
            return False
        connection = self.pool.take_idle()
        if connection is None:
            return False  # the ordinary path connects (once; then there are idle ones)
        if not self.admission.admit():
            self.pool.keep(connection)
            return False  # the ordinary path refuses it (429)
        exchange = _Exchange(self, call, connection, time.monotonic())
        call.on_cancel = exchange.cancel
        body = call.body
        if body is None and call.method not in BODYLESS_METHODS:
            body = b""
        headers = forwarded_pairs(call, call.host)
        head = request_head(call.method, call.raw_path, headers, body, None, None)
        if self.deadlines is not None:
            exchange.bucket = self.deadlines.add(exchange)
        answer = connection.send(call.method, head, body, None, False)
        answer.add_done_callback(exchange.on_head)
        return True


class _Exchange:
    """One request taken by the express, from its sending to its end."""

    __slots__ = ("express", "call", "connection", "upstream", "started", "bucket", "over")

    def __init__(
        self,
        express: HttpExpress,
        call: Call,
        connection: UpstreamConnection,
        started: float,
    ) -> None:
        self.express = express
        self.call = call
        self.connection = connection
        self.upstream: UpstreamResponse | None = None
        """The answer's head, when handed over to be relayed."""
        self.started = started
        self.bucket: set[Expiring] | None = None
        self.over = False

    def on_head(self, answer: asyncio.Future[UpstreamResponse]) -> None:
        error = answer.exception()  # (retrieved even when over: else asyncio logs it)
        if self.over:
            return
        self._end_deadline()
        if error is not None:
            self._failed(error)
            return
        upstream = answer.result()
        body = upstream.read_whole_nowait() if small_answer(self.call, upstream) else None
        if body is None:  # to stream, or not all here yet: the ordinary path relays it
            self.upstream = upstream
            self._hand_off(ExpressNote(self.started, self._abandoned, upstream=upstream))
            return
        self._end()
        self.express.upstream.answered()
        call = self.call
        status = upstream.status
        whole = whole_answer(call, upstream, body, self.started)
        upstream.release()
        answer_call(
            call, whole, None, self.express.write_timeout, lambda _: self._discharge(status)
        )

    def _discharge(self, status: int) -> None:
        self.express.admission.discharge(status, self.call.method, self.started)

    def _failed(self, error: BaseException) -> None:
        self.connection.close()
        call = self.call
        if self.connection.may_resend(call.method, error):
            # The upstream closed an idle connection just as it was reused: the ordinary
            # path sends the request again, on a new one.
            self._end()
            self.express.admission.withdraw()
            call.hand_off()
            return
        self._hand_off(ExpressNote(self.started, self._abandoned, error=error))

    def expire(self) -> None:
        """exec_timeout: the upstream did not answer in time."""
        if not self.over:
            self.connection.close()
            self._hand_off(ExpressNote(self.started, self._abandoned, timed_out=True))

    def _abandoned(self) -> None:
        """Handed over, then dropped before the ordinary path began: counted as a client
        gone, the upstream's answer let go unread."""
        if self.upstream is not None:
            self.upstream.release()
        self.express.admission.discharge(499, self.call.method, self.started)

    def cancel(self) -> None:
        """The client went away (or draining ended) first: counted as nginx counts it, 499."""
        if not self.over:
            self._end()
            self._end_deadline()
            self.connection.close()
            self.express.admission.discharge(499, self.call.method, self.started)

    def _end(self) -> None:
        """Nothing more to do for this request (see :meth:`Call.unhook`)."""
        self.over = True
        self.call.unhook()

    def _hand_off(self, note: ExpressNote) -> None:
        self._end()
        self._end_deadline()
        self.call.hand_off(note)

    def _end_deadline(self) -> None:
        if self.bucket is not None:
            self.bucket.discard(self)
            self.bucket = None


def small_answer(request: Framing, upstream: UpstreamResponse) -> bool:
    """The answer is relayed whole: a body of a known length up to
    :data:`WHOLE_BODY_LIMIT` and a Content-Type of its own (a whole answer without one
    would be given a default), to a request other than HEAD."""
    length = upstream.content_length
    return (
        length is not None
        and length <= WHOLE_BODY_LIMIT
        and upstream.typed
        and request.method != "HEAD"
    )


def relayed_lines(upstream: UpstreamResponse, started: float) -> list[bytes]:
    """The header lines of the upstream's answer as the client gets them: the upstream's own
    as they came (see :meth:`.UpstreamResponse.returned_lines`), then the duration since
    ``started``."""
    duration = b"%s: %.6f" % (_DURATION_NAME, time.monotonic() - started)
    return [*upstream.returned_lines(), duration]


def whole_answer(
    request: Framing, upstream: UpstreamResponse, body: bytes, started: float
) -> bytes:
    """The upstream's answer to ``request``, head (with the duration since ``started``) and
    body, in one piece for one write."""
    status = upstream.status
    no_body = has_no_body(status)
    head = relayed_head(
        status,
        upstream.raw_reason,
        relayed_lines(upstream, started),
        request,
        dated=upstream.dated,
        body_length=None if no_body else len(body),
    )
    return head if no_body else head + body
