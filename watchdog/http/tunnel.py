"""Relaying an upgraded connection (a WebSocket) byte for byte between client and upstream.

After the upstream's ``101`` both connections carry a protocol that is not HTTP; the proxy has
no business reading it, so frames pass through untouched and no WebSocket library is needed.
Flow control is the transports' own: when one side's write buffer fills, reading from the other
side pauses until it drains. A client whose buffer stays full for ``write_timeout`` is cut off.
"""

from __future__ import annotations

import asyncio
from typing import cast

from ..limits import ClientStalled

CLOSE_GRACE = 5.0
"""How long the second side may take to flush and close once the first side has closed."""


class _End(asyncio.Protocol):
    """One side of the tunnel: what it receives is written to the other side."""

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: _End | None = None
        self.lost = asyncio.get_running_loop().create_future()
        self._stall_timer: asyncio.TimerHandle | None = None
        self.stall_limit: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.transport.write(data)

    def eof_received(self) -> bool | None:
        return False  # closes this side; connection_lost then closes the other

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_stall_timer()
        if not self.lost.done():
            self.lost.set_result(None)
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.close()  # after flushing what is buffered for it

    def pause_writing(self) -> None:
        # This side does not take bytes fast enough: stop reading the side that sends them.
        assert self.peer is not None
        self.peer.transport.pause_reading()
        if self.stall_limit is not None:
            loop = asyncio.get_running_loop()
            self._stall_timer = loop.call_later(self.stall_limit, self.tunnel.stalled)

    def resume_writing(self) -> None:
        assert self.peer is not None
        self._cancel_stall_timer()
        if not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None


class Tunnel:
    """Joins two connections until either side closes."""

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        write_timeout: float | None = None,
    ) -> None:
        self.client = _End(self, client)
        self.upstream = _End(self, upstream)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.client.stall_limit = write_timeout
        self._stalled = False

    async def run(self, to_client: bytes, to_upstream: bytes) -> None:
        """Relay until either side closes, after sending ``to_client`` (the upstream's head and
        whatever followed it) and ``to_upstream`` (what the client sent after its head).

        The client's transport must already be handed to :attr:`client` (as the server's
        ``detach`` does); the upstream's is handed over here.

        Raises:
            ClientStalled: the client took no bytes for ``write_timeout``; both are cut.
        """
        client, upstream = self.client.transport, self.upstream.transport
        upstream.set_protocol(self.upstream)
        try:
            if to_client:
                client.write(to_client)
            if to_upstream:
                upstream.write(to_upstream)
            _resume(client)
            _resume(upstream)
            await asyncio.wait(
                (self.client.lost, self.upstream.lost), return_when=asyncio.FIRST_COMPLETED
            )
            if not (self.client.lost.done() and self.upstream.lost.done()):
                await asyncio.wait((self.client.lost, self.upstream.lost), timeout=CLOSE_GRACE)
        finally:
            client.abort()
            upstream.abort()
        if self._stalled:
            raise ClientStalled

    def stalled(self) -> None:
        """The client's write buffer stayed full for ``write_timeout``: cut both sides."""
        self._stalled = True
        self.client.transport.abort()
        self.upstream.transport.abort()


def _resume(transport: asyncio.Transport) -> None:
    if not transport.is_closing() and not transport.is_reading():
        transport.resume_reading()
