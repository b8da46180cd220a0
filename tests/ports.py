"""Free loopback ports for the servers tests start."""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before in this process: two picks in a
    row may otherwise get the same port from the kernel (a watchdog's port and metrics_port
    once did), before either server has bound it."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
