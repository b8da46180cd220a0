"""The fork modes' hot path: a request whole in hand, served by a handler from callbacks.

Most calls to a forked function are a head with no body or a small one, answered by a handler
that writes a little and exits 0. For those the express (:mod:`..http.express`) starts the
handler with the whole body already in its stdin, collects its stdout from loop callbacks, and
writes the answer in one write once the handler has exited: no request object, no task, no
coroutines. Whatever else happens (a failed handler, an answer to stream, exec_timeout, stderr
held open by an orphan) goes to the ordinary path of :mod:`.fork` with a note
(:class:`ForkNote`) of how far the express got, so that every rule is written once: there.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from ..http.express import Call
from ..http.request import split_target
from ..http.response import relayed_head
from ..limits import (
    Admission,
    Admitted,
    Deadlines,
    Expiring,
    answer_call,
    in_background,
    seconds_or_none,
)
from ..pipes import PipeCollector
from ..process import SpawnError
from ..responses import DURATION_HEADER
from .fork_handler import ForkedHandler, Forking, StdinStart

_DURATION_NAME = DURATION_HEADER.encode()
_WHOLE_STDIN = select.PIPE_BUF
"""The largest body taken: a new pipe takes it whole in one write, so the handler starts with
all of it in its stdin, and stdin closed (Linux gives a pipe at least one page even when the
user's pipes are over their quota)."""


class Spawning(Protocol):
    """What the express needs of the fork runner."""

    @property
    def forking(self) -> Forking: ...

    def healthy(self) -> bool: ...

    def spawn(self, variables: dict[str, str], stdin: StdinStart) -> ForkedHandler: ...

    def variables(
        self, method: str, path: str, query: str, headers: Iterable[tuple[str, str]]
    ) -> dict[str, str]: ...

    def content_type(self, request_headers: Mapping[str, str]) -> str: ...


class ForkNote(Admitted):
    """How far the express got with a request it handed to the ordinary path: its handler
    runs (or ran), has written ``output``, and ``outcome`` says whether that is all of it
    (True: its stdout ended and it exited), only the start (False), or why its stdout could
    not be read (an OSError); or exec_timeout passed first (``timed_out``)."""

    __slots__ = ("handler", "output", "outcome", "timed_out")

    def __init__(
        self,
        started: float,
        abandon: Callable[[], None],
        handler: ForkedHandler,
        output: bytearray,
        outcome: bool | OSError,
        *,
        timed_out: bool = False,
    ) -> None:
        super().__init__(started, abandon)
        self.handler = handler
        self.output = output
        self.outcome = outcome
        self.timed_out = timed_out


class ForkExpress:
    """Takes the requests it can serve whole from callbacks (:meth:`take`)."""

    def __init__(self, runner: Spawning, admission: Admission, deadlines: Deadlines | None) -> None:
        self.runner = runner
        self.admission = admission
        self.deadlines = deadlines
        config = runner.forking.config
        self.body_limit = min(_WHOLE_STDIN, config.max_body_size or _WHOLE_STDIN)
        self.output_limit = runner.forking.policy.response_buffer
        self.write_timeout = seconds_or_none(config.write_timeout)

    @staticmethod
    def suits(forking: Forking) -> bool:
        """Whether the express can serve this configuration's usual answers: not when every
        answer streams, nor when stdout begins with a CGI head, nor with write_debug's logs."""
        config = forking.config
        streams = forking.policy.response_buffer == 0
        return not (streams or config.cgi_response or config.write_debug)

    def take(self, call: Call) -> bool:
        body = call.body or b""
        target = call.raw_path
        if (
            len(body) > self.body_limit  # (a larger one may be refused 413: the ordinary path)
            or target[:1] != "/"  # another form of target, refused by the ordinary path
            or target.startswith(("/_/", "/%"))  # probes (and their encoded forms)
            or call.method == "HEAD"
            or not self.runner.healthy()
        ):
            return False
        if not self.admission.admit():
            return False  # the ordinary path refuses it (429)
        started = time.monotonic()
        path, query = split_target(target)
        variables = self.runner.variables(call.method, path, query, call.headers.items())
        try:
            handler = self.runner.spawn(variables, StdinStart(body, True))
        except SpawnError:
            self.admission.withdraw()
            return False  # the ordinary path tries again, and says why it cannot
        run = _Run(self, call, handler, started)
        call.on_cancel = run.cancel
        if self.deadlines is not None:
            run.bucket = self.deadlines.add(run)
        run.collector.collect(run.collected)
        return True


class _Run:
    """One request taken by the express, from its handler's start to its end."""

    __slots__ = ("express", "call", "handler", "collector", "started", "bucket", "over")

    def __init__(
        self, express: ForkExpress, call: Call, handler: ForkedHandler, started: float
    ) -> None:
        self.express = express
        self.call = call
        self.handler = handler
        self.collector: PipeCollector = handler.collector(express.output_limit)
        self.started = started
        self.bucket: set[Expiring] | None = None
        self.over = False

    def collected(self, outcome: bool | OSError) -> None:
        """The handler's stdout ended and it exited (True), or it wrote more than the
        express holds (False), or its stdout failed."""
        if self.over:
            return
        exited = self.handler.child.exited
        if (
            outcome is not True
            or exited.exception() is not None  # the fork server could not start it
            or exited.result() != 0
            or not self.handler.stderr_closed_now()
        ):
            output = self.collector.output
            self._hand_off(ForkNote(self.started, self._abandoned, self.handler, output, outcome))
            return
        self._end()
        handler = self.handler
        handler.count_exit(0)
        handler.end()
        output = self.collector.output
        write_timeout = self.express.write_timeout
        answer_call(self.call, self._head(len(output)), output, write_timeout, self._discharge)

    def _head(self, length: int) -> bytes:
        """The head of a 200 carrying the handler's ``length`` bytes of output."""
        call = self.call
        content_type = self.express.runner.content_type(call.headers)
        lines = [
            b"Content-Type: " + content_type.encode("utf-8", "surrogateescape"),
            b"%s: %.6f" % (_DURATION_NAME, time.monotonic() - self.started),
        ]
        return relayed_head(200, b"OK", lines, call, dated=False, body_length=length)

    def _discharge(self, _: BaseException | None) -> None:
        self.express.admission.discharge(200, self.call.method, self.started)

    def expire(self) -> None:
        """exec_timeout: the ordinary path kills the handler's tree and answers 504."""
        if not self.over:
            self.bucket = None  # (taken out of it as it expires)
            note = ForkNote(
                self.started, self._abandoned, self.handler, self.collector.output, False
            )
            note.timed_out = True
            self._hand_off(note)

    def cancel(self) -> None:
        """The client went away (or draining ended) first: counted as nginx counts it, 499."""
        if self.over:
            return
        self._end()
        self._abandoned()

    def _abandoned(self) -> None:
        """Dropped (here, or once handed over, before the ordinary path began): counted as a
        client gone, the handler's tree killed."""
        self.express.admission.discharge(499, self.call.method, self.started)
        in_background(self.handler.finish())

    def _end(self) -> None:
        """Nothing more to do for this request: unhook it from its call and its deadline, so
        that the two (a reference cycle) go as soon as they are dropped."""
        self.over = True
        self.call.unhook()
        self.collector.stop()
        if self.bucket is not None:
            self.bucket.discard(self)
            self.bucket = None

    def _hand_off(self, note: ForkNote) -> None:
        self._end()
        self.call.hand_off(note)
