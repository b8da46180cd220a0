"""Request targets that are not origin-form never reach the network (issue 16 item 1)."""

from __future__ import annotations

import socket
import threading

import pytest
from test_http_mode import start_http

PROBES = [
    ("CONNECT x@127.0.0.1:{port} HTTP/1.1", 405),
    ("CONNECT 127.0.0.1:{port} HTTP/1.1", 405),
    ("CONNECT 1 HTTP/1.1", 405),
    ("GET http://127.0.0.1:{port}/ HTTP/1.1", 400),
    ("OPTIONS * HTTP/1.1", 400),
]


class Bystander:
    """A second listener on loopback that counts every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _status_of(port: int, request_line: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{request_line}\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize("mode", ["http", "auto"])
def test_odd_request_targets_are_refused_and_touch_nothing(start_watchdog, mode: str) -> None:
    bystander = Bystander()
    try:
        if mode == "http":
            wd = start_http(start_watchdog)
        else:
            wd = start_watchdog(fprocess="cat")
        for line, expected in PROBES:
            assert _status_of(wd.port, line.format(port=bystander.port)) == expected, line
        assert wd.request("GET", "/_/health").status == 200
        assert bystander.accepted == 0
    finally:
        bystander.close()
