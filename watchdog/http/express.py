"""The express seam: the commonest requests answered from callbacks, without a task.

The server's ordinary path (:mod:`.protocol`) makes a :class:`.Request` and a task per
request, and runs the handler's coroutines. Most requests to a proxy need none of that: a head
with no body, or a small one that arrived with it. An :class:`Express` handler may take such a
request as a :class:`Call`, whole in hand, and answer it from callbacks (writing the answer
itself and calling :meth:`Call.finish`), or give it to the ordinary path at any point before it
wrote anything (:meth:`Call.hand_off`), with a note for the ordinary handler of how far it got.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from multidict import CIMultiDict

from .response import COALESCE_LIMIT


@runtime_checkable
class Note(Protocol):
    """What an express hands over with a request: how far it got, and what it holds for it
    (an admission slot, a handler, an upstream's answer)."""

    def abandon(self) -> None:
        """The request was dropped before its handler began (the client went away, or
        draining ended, first): let go of what is held for it."""


class Express(Protocol):
    def take(self, call: Call) -> bool:
        """Take ``call`` (and answer it, or hand it off later), or decline it at once: the
        ordinary path then handles it as if the express were not there."""


class CallOwner(Protocol):
    """The connection a call arrived on, as the call needs it."""

    def write_head(self, head: bytes, body: bytes | bytearray | memoryview | None) -> None: ...

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    @property
    def congested(self) -> bool: ...

    async def drain(self) -> None: ...

    def cut(self) -> None: ...

    def express_done(self, call: Call, keep_alive: bool) -> None: ...

    def hand_off(self, call: Call, note: Note | None) -> None: ...


def _ignore() -> None:
    pass


class Call:
    """One request, head and body whole in hand, as the express sees it."""

    __slots__ = (
        "method",
        "raw_path",
        "version",
        "headers",
        "host",
        "keep_alive",
        "content_length",
        "body",
        "remote",
        "on_cancel",
        "_owner",
    )

    scheme = "http"

    def __init__(
        self,
        method: str,
        raw_path: str,
        version: tuple[int, int],
        headers: CIMultiDict[str],
        host: str,
        keep_alive: bool,
        content_length: int | None,
        remote: str | None,
        owner: CallOwner,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self.host = host
        """Its Host header (the express takes only requests that have one)."""
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.body: bytes | None = None
        """The whole body; None when the request has none."""
        self.remote = remote
        self.on_cancel: Callable[[], None] = _ignore
        """Called if the client goes away, or draining ends, before the call is finished."""
        self._owner = owner

    @property
    def congested(self) -> bool:
        """The client is slow to take what was written."""
        return self._owner.congested

    def send(self, head: bytes, body: bytes | bytearray | None = None) -> None:
        """Write to the client: ``head`` and ``body`` in one write, or apart when the body is
        large (never copied to the head).

        Raises:
            ConnectionResetError: the client went away.
        """
        if body is not None and len(body) > COALESCE_LIMIT:
            self._owner.write_head(head, None)
            self._owner.write(body)
        else:
            self._owner.write_head(head, body)

    async def drain(self) -> None:
        """Wait until the client has taken enough of what was written (:attr:`congested`).

        Raises:
            ConnectionResetError: the client went away.
        """
        await self._owner.drain()

    def cut(self) -> None:
        """Abort the connection: a client that stopped reading."""
        self._owner.cut()

    def finish(self, keep_alive: bool = True) -> None:
        """The answer is written whole: on to the connection's next request (``keep_alive``
        False: close the connection instead)."""
        self._owner.express_done(self, keep_alive)

    def hand_off(self, note: Note | None = None) -> None:
        """Give the request to the ordinary path, with ``note`` in its state (under
        :data:`NOTE`) for the handler: nothing has been written to the client yet."""
        self._owner.hand_off(self, note)

    def cancel(self) -> None:
        self.on_cancel()

    def unhook(self) -> None:
        """Nobody is to be told of a cancel any more: the express is done with the call, and
        the two (a reference cycle, holding the request's body) go as soon as dropped, not at
        the collector's next full pass."""
        self.on_cancel = _ignore


NOTE = "express.note"
"""The key of an express's note in a handed-off request's ``state``."""
