"""The gateway's own HTTP/1.1 server (the watchdog's, :mod:`watchdog.http`) as raw clients see
it: connections kept and reused across routes, pipelining, ``100 Continue``, HTTP/1.0 framing,
header limits, the idle timeout and the drain on SIGTERM."""

from __future__ import annotations

import http.client
import io
import signal
import socket
from typing import BinaryIO

from conftest import recv_until
from test_bad_requests import assert_flood_bounded

from .conftest import Launcher, World


class _Kept(io.BufferedReader):
    """A socket's reader that outlives the response reading from it (``HTTPResponse`` closes
    its file at the end of the body)."""

    def close(self) -> None:
        pass


class _Reader:
    """One buffered reader over a socket, shared by the responses read from it (each
    ``HTTPResponse`` would otherwise buffer, and lose, the bytes of the next one)."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = _Kept(socket.SocketIO(sock, "rb"))

    def makefile(self, mode: str) -> BinaryIO:
        return self.file


def _read(reader: _Reader, method: str = "GET") -> tuple[int, http.client.HTTPMessage, bytes]:
    response = http.client.HTTPResponse(reader, method=method)  # type: ignore[arg-type]
    response.begin()
    return response.status, response.headers, response.read()


def _post(path: str, body: bytes, version: str = "1.1") -> bytes:
    head = f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_one_connection_serves_calls_and_system_routes_in_turn(world: World) -> None:
    with socket.create_connection(("127.0.0.1", world.gateway.port), timeout=30) as sock:
        reader = _Reader(sock)
        exchanges = [
            (_post("/function/cat", b"first"), 200, b"first"),
            (_get("/healthz"), 200, b"OK\n"),
            (_get("/function/web/bytes?n=200000"), 200, bytes(200000)),
            (_get("/system/nothing-here"), 404, b"Not Found\n"),
            (_post("/function/cat", b"last"), 200, b"last"),
        ]
        for request, status, body in exchanges:
            sock.sendall(request)
            got_status, headers, got_body = _read(reader)
            assert (got_status, got_body) == (status, body), request
            assert headers.get("Connection") is None  # kept open for the next request


def test_pipelined_requests_are_answered_in_order(world: World) -> None:
    with socket.create_connection(("127.0.0.1", world.gateway.port), timeout=30) as sock:
        sock.sendall(
            _post("/function/cat", b"one")
            + _get("/system/info")
            + _post("/function/cat", b"two")
            + _get("/function/web/status/201")
        )
        reader = _Reader(sock)
        first, info, second, created = (_read(reader) for _ in range(4))
    assert (first[0], first[2]) == (200, b"one")
    assert info[0] == 200 and b"version" in info[2]
    assert (second[0], second[2]) == (200, b"two")
    assert (created[0], created[2]) == (201, b"status\n")


def test_a_body_is_asked_for_with_100_continue(world: World) -> None:
    with socket.create_connection(("127.0.0.1", world.gateway.port), timeout=30) as sock:
        sock.sendall(
            b"POST /function/web/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        received = recv_until(sock, b"\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), received
        sock.sendall(b"hello")
        status, _, body = _read(_Reader(sock))
    assert (status, body) == (200, b"hello")


def test_an_http_1_0_caller_gets_whole_answers_and_the_end_of_streamed_ones(
    world: World,
) -> None:
    with socket.create_connection(("127.0.0.1", world.gateway.port), timeout=30) as sock:
        sock.sendall(_post("/function/cat", b"old client", version="1.0"))
        status, _, body = _read(_Reader(sock))
        assert (status, body) == (200, b"old client")
        assert sock.recv(1) == b""  # HTTP/1.0 without keep-alive: closed after the answer
    with socket.create_connection(("127.0.0.1", world.gateway.port), timeout=30) as sock:
        # The function streams an answer of no announced length: no chunks in HTTP/1.0, the
        # end of the body is the end of the connection.
        sock.sendall(b"GET /function/web/bytes?n=100000 HTTP/1.0\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert body == bytes(100000)


def test_a_header_line_past_the_limit_is_431(world: World) -> None:
    with socket.create_connection(("127.0.0.1", world.gateway.port), timeout=30) as sock:
        sock.sendall(
            b"GET /function/cat HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
        )
        status, headers, _ = _read(_Reader(sock))
    assert status == 431
    assert headers.get("Connection") == "close"


def test_an_idle_connection_is_closed_after_the_read_timeout(launcher: Launcher) -> None:
    gateway = launcher.gateway("--read-timeout", "1s")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(_get("/healthz"))
        status, _, _ = _read(_Reader(sock))
        assert status == 200
        assert sock.recv(1) == b""  # nothing more asked: the gateway closed it


def test_sigterm_lets_a_call_in_flight_finish(launcher: Launcher) -> None:
    upstream = launcher.upstream()
    gateway = launcher.gateway("--function", f"web=http://127.0.0.1:{upstream.port}")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(_get("/function/web/drip"))
        received = recv_until(sock, b"first\n")
        gateway.proc.send_signal(signal.SIGTERM)
        while chunk := sock.recv(65536):  # the rest, then the close
            received += chunk
    assert b"second\n" in received
    assert received.endswith(b"0\r\n\r\n")  # the chunked body ended, not cut
    assert gateway.proc.wait(30) == 0


def test_each_malformed_request_is_one_line_and_a_flood_is_bounded(launcher: Launcher) -> None:
    """The gateway's refused heads go through the watchdog's rate-limited log line."""
    gateway = launcher.gateway()
    assert_flood_bounded(gateway)
    assert gateway.request("GET", "/healthz").status == 200
