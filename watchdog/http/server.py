"""A listener: accepting connections, and draining them on shutdown."""

from __future__ import annotations

import asyncio
import socket

from .express import Express
from .protocol import BadRequestLog, Handler, HttpProtocol, Limits, ServerState


class HttpServer:
    """Serves ``handler`` on one port until :meth:`shutdown`."""

    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        bad_request: BadRequestLog,
        express: Express | None = None,
    ) -> None:
        """``express``: takes what requests it can first (:mod:`.express`)."""
        self._state = ServerState(handler, limits, bad_request, express)
        self._server: asyncio.Server | None = None

    async def listen(
        self, port: int, *, host: str | None = None, reuse_address: bool = False
    ) -> None:
        """Listen on ``port`` of ``host`` (None: every interface, IPv4 and IPv6, each its own
        socket, so port 0 would give each its own port: pass a host with it)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(self._state), host=host, port=port, reuse_address=reuse_address
        )
        for sock in self._server.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def shutdown(self, timeout: float | None) -> None:
        """Stop accepting, close idle connections, let requests in flight finish for up to
        ``timeout`` seconds (None: as long as they take), then cancel the rest."""
        self.stop_accepting()
        self._state.draining = True
        connections = list(self._state.connections)
        for connection in connections:
            connection.shutdown()
        pending = [c.finished for c in connections if not c.finished.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            if late:
                for connection in connections:
                    if not connection.finished.done():
                        connection.abort()
                await asyncio.wait(late)
        self._server = None
