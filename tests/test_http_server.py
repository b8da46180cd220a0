"""The watchdog's own HTTP server (watchdog/http, issue 13): HTTP/1.1 framing on one connection,
limits on the head, upgrades handed over, and no aiohttp in the fork and static modes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, RunningWatchdog, stop_process, wait_until_serving, watchdog_env

from watchdog.http import Handler, HttpServer, Limits, Request, Response, StreamResponse
from watchdog.http.express import Call
from watchdog.http.protocol import HttpProtocol, ServerState

# The real entry point, reporting at exit which modules it loaded.
_REPORTING_ENTRY = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('AIOHTTP_LOADED=%s PROMETHEUS_LOADED=%s UNNEEDED=%s"
    " TLS_LOADED=%s' % (\n"
    "    'aiohttp' in sys.modules, 'prometheus_client' in sys.modules,\n"
    "    sorted(m for m in ('argparse', 'shutil', 'secrets') if m in sys.modules),\n"
    "    '_ssl' in sys.modules),\n"
    "    flush=True))\n"
    "runpy.run_module('watchdog', run_name='__main__')\n"
)


def _start_reporting_watchdog(tmp_path: Path, **settings: str) -> RunningWatchdog:
    env = watchdog_env(tmp_path, **settings)
    log_path = tmp_path / "watchdog.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [PYTHON, "-c", _REPORTING_ENTRY],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return RunningWatchdog(proc, int(env["port"]), int(env["metrics_port"]), log_path, tmp_path)


def _exchange(port: int, data: bytes, *, until: bytes | None = None) -> bytes:
    """Send ``data``; what comes back until the server closes (or ``until`` has arrived)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while until is None or until not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


@pytest.mark.parametrize("mode", ["auto", "static"])
def test_fork_and_static_modes_never_import_aiohttp(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "public"
    root.mkdir()
    (root / "index.html").write_text("home")
    wd = _start_reporting_watchdog(tmp_path, fprocess="cat", mode=mode, static_path=str(root))
    proc = wd.proc
    try:
        wait_until_serving(wd)
        if mode == "static":
            assert wd.request("GET", "/").text == "home"
        else:
            assert wd.request("POST", "/", body=b"echo").text == "echo"
        assert "http_requests_total" in wd.metrics()
    finally:
        stop_process(proc)
    assert proc.returncode == 0, wd.logs()
    assert "AIOHTTP_LOADED=False" in wd.logs(), wd.logs()
    # Nor _ssl, which maps libssl and libcrypto (notls.py), scraped or not: 4 MB a replica.
    assert "TLS_LOADED=False" in wd.logs(), wd.logs()


def test_prometheus_client_is_loaded_by_the_first_scrape_only(tmp_path: Path) -> None:
    """An unscraped watchdog never pays for prometheus_client; requests served before the first
    scrape are in it."""
    wd = _start_reporting_watchdog(tmp_path, fprocess="cat")
    try:
        wait_until_serving(wd)
        for _ in range(3):
            assert wd.request("POST", "/", body=b"echo").text == "echo"
    finally:
        stop_process(wd.proc)
    assert "PROMETHEUS_LOADED=False" in wd.logs(), wd.logs()
    # Nor what only the other commands need: each would cost memory in every replica.
    assert "UNNEEDED=[]" in wd.logs(), wd.logs()

    wd = _start_reporting_watchdog(tmp_path, fprocess="cat")
    try:
        wait_until_serving(wd)
        for _ in range(3):
            assert wd.request("POST", "/", body=b"echo").text == "echo"
        text = wd.metrics()
    finally:
        stop_process(wd.proc)
    assert 'http_requests_total{code="200",method="post"} 3.0' in text
    assert 'http_request_duration_seconds_count{code="200",method="post"} 3.0' in text
    assert "process_resident_memory_bytes" in text
    assert "PROMETHEUS_LOADED=True" in wd.logs(), wd.logs()


def test_pipelined_requests_are_answered_in_order(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    requests = b"".join(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        for body in (b"first", b"second", b"third")
    )
    health = b"GET /_/health HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = _exchange(wd.port, requests + health, until=b"\r\n\r\nOK")
    assert reply.count(b"HTTP/1.1 200 OK\r\n") == 4, reply
    first, second, third = reply.index(b"first"), reply.index(b"second"), reply.index(b"third")
    assert first < second < third < reply.index(b"\r\n\r\nOK"), reply


@pytest.mark.parametrize("mode", ["auto", "streaming"])
def test_http_1_0_and_connection_close_end_the_connection(start_watchdog, mode: str) -> None:
    wd = start_watchdog(fprocess="cat", mode=mode)  # streaming: no chunks for HTTP/1.0
    reply = _exchange(wd.port, b"POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\nhi"), reply
    assert b"\r\nConnection: close\r\n" in reply
    reply = _exchange(wd.port, b"GET /_/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"OK"), reply


def test_http_1_0_keep_alive_is_kept(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    ask = b"GET /_/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    with socket.create_connection(("127.0.0.1", wd.port), timeout=10) as sock:
        for _ in range(2):  # the second answer comes on the same connection
            sock.sendall(ask)
            reply = b""
            while not reply.endswith(b"\r\n\r\nOK"):
                reply += sock.recv(4096)
            assert b"\r\nConnection: keep-alive\r\n" in reply, reply


def test_a_chunked_body_reaches_the_handler_whole(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat", mode="serializing")
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    reply = _exchange(wd.port, head + body)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"hello world"), reply


def test_expect_100_continue_is_answered_before_the_body(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat")
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    with socket.create_connection(("127.0.0.1", wd.port), timeout=10) as sock:
        sock.sendall(head)
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(4096)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"body")
        reply = b""
        while not reply.endswith(b"body"):
            reply += sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 200 "), reply


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /" + b"a" * (65 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (65 * 1024) + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: c\r\n" * 100_000 + b"\r\n", b"431"),
    ],
)
def test_oversized_heads_are_refused(start_watchdog, request_head: bytes, status: bytes) -> None:
    wd = start_watchdog(fprocess="cat")
    reply = _exchange(wd.port, request_head)
    assert reply.split(b" ", 2)[1] == status, reply[:200]
    assert wd.request("GET", "/_/health").status == 200


class _Echo(asyncio.Protocol):
    """What an upgraded connection is handed to: echoes bytes until the client closes."""

    def __init__(self, closed: asyncio.Future[None]) -> None:
        self.closed = closed
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raise AssertionError("a detached connection is already made")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _upgrade_round_trip() -> tuple[bytes, bytes]:
    async def handle(request: Request) -> StreamResponse:
        if not request.upgrade:
            return Response(status=400, text="not an upgrade\n")
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        echo = _Echo(closed)
        echo.transport = request.transport
        request.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\r\n")
        early = request.detach(echo)
        request.transport.write(early)
        await closed
        return StreamResponse(status=101)

    server = HttpServer(handle, Limits(None, 1024, 1024, 65536), lambda peer, reason: None)
    await server.listen(0, host="127.0.0.1")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        echoed = await reader.readexactly(len(b"early"))
        writer.write(b"later")
        echoed += await reader.readexactly(len(b"later"))
        writer.close()
        await writer.wait_closed()
    finally:
        await server.shutdown(5)
    return head, echoed


def test_an_upgrade_hands_the_connection_and_its_early_bytes_over() -> None:
    head, echoed = asyncio.run(_upgrade_round_trip())
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert echoed == b"earlylater"


async def _serve_one(handle: Handler, data: bytes, limits: Limits | None = None) -> bytes:
    """``data`` sent to a server running ``handle``; its whole answer, until it closes."""
    limits = limits or Limits(None, 1024, 1024, 65536)
    server = HttpServer(handle, limits, lambda peer, reason: None)
    await server.listen(0, host="127.0.0.1")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(data)
        reply = await reader.read()
        writer.close()
        await writer.wait_closed()
    finally:
        await server.shutdown(5)
    return reply


def test_a_failing_handler_is_a_500_before_its_head_and_a_cut_after() -> None:
    async def fail_early(request: Request) -> StreamResponse:
        raise RuntimeError("boom")

    async def fail_late(request: Request) -> StreamResponse:
        response = StreamResponse()
        await response.prepare(request)
        await response.write(b"partial")
        raise RuntimeError("boom")

    ask = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    early = asyncio.run(_serve_one(fail_early, ask))
    assert early.startswith(b"HTTP/1.1 500 ") and b"\r\nConnection: close\r\n" in early, early
    late = asyncio.run(_serve_one(fail_late, ask))
    assert late.startswith(b"HTTP/1.1 200 ") and late.count(b"HTTP/1.1") == 1, late
    assert b"partial" in late and not late.endswith(b"0\r\n\r\n"), late  # no final chunk


async def _cancelled_on_disconnect() -> bool:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def wait_forever(request: Request) -> StreamResponse:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response()

    server = HttpServer(wait_forever, Limits(None, 1024, 1024, 65536), lambda p, r: None)
    await server.listen(0, host="127.0.0.1")
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await started.wait()
        writer.close()
        await asyncio.wait_for(cancelled.wait(), 10)
    finally:
        await server.shutdown(5)
    return cancelled.is_set()


def test_the_handler_is_cancelled_when_the_client_goes_away() -> None:
    assert asyncio.run(_cancelled_on_disconnect())


async def _unread_body_then_another_request() -> tuple[bytes, bytes]:
    async def ignore_body(request: Request) -> StreamResponse:
        return Response(text=f"{request.method} {request.path}\n")

    server = HttpServer(ignore_body, Limits(None, 1024, 1024, 65536), lambda p, r: None)
    await server.listen(0, host="127.0.0.1")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        first = await reader.readuntil(b"POST /first\n")  # answered before its body came
        writer.write(b"0123456789GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        second = await reader.readuntil(b"GET /second\n")  # the same connection goes on
        writer.close()
        await writer.wait_closed()
    finally:
        await server.shutdown(5)
    return first, second


def test_a_body_the_handler_did_not_read_is_dropped_and_the_connection_kept() -> None:
    first, second = asyncio.run(_unread_body_then_another_request())
    assert first.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in first, first
    assert second.startswith(b"HTTP/1.1 200 "), second


async def _answer_ok(request: Request) -> StreamResponse:
    return Response(text="ok\n")


def test_the_answer_to_a_target_past_the_limit_can_be_chosen() -> None:
    """The gateway answers 400 there, as it always has; the watchdog 414 (the default)."""
    long_target = b"GET /" + b"a" * 2048 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = asyncio.run(
        _serve_one(_answer_ok, long_target, Limits(None, 1024, 1024, 65536, line_status=400))
    )
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"\r\nConnection: close\r\n" in reply


async def _answer_after_cutting(events: list[str]) -> bytes:
    async def cut(request: Request) -> StreamResponse:
        request.transport.abort()
        response = Response(text="never sent\n")
        try:
            await response.prepare(request)
        except ConnectionResetError:
            events.append("refused")
            raise
        return response

    server = HttpServer(cut, Limits(None, 1024, 1024, 65536), lambda p, r: None)
    await server.listen(0, host="127.0.0.1")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = await reader.read()
        except ConnectionResetError:
            reply = b""
        writer.close()
    finally:
        await server.shutdown(5)
    return reply


def test_an_answer_written_after_the_handler_cut_the_connection_is_refused() -> None:
    events: list[str] = []
    assert asyncio.run(_answer_after_cutting(events)) == b""
    assert events == ["refused"]


def test_a_relayed_response_of_header_lines_is_framed_as_any_other() -> None:
    from watchdog.http import RelayedResponse

    async def answer(request: Request) -> StreamResponse:
        status = int(request.path.strip("/"))
        lines, dated, typed = [b"X-One: 1", b"Date: Mon, 07 Dec 2026 12:00:00 GMT"], True, False
        if request.query_string == "undated":
            lines, dated = [b"X-One: 1"], False
        elif request.query_string == "typed":  # a function's own type, never a second one
            lines, typed = [b"content-type: text/csv"], True
        reason = b"No Content" if status == 204 else b"OK"
        body = b"" if status == 204 else b"body"
        return RelayedResponse(status, reason, lines, body, dated=dated, typed=typed)

    close = b"Host: x\r\nConnection: close\r\n\r\n"
    reply = asyncio.run(_serve_one(answer, b"GET /200 HTTP/1.1\r\n" + close))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert body == b"body"
    assert head.split(b"\r\n")[1:] == [
        b"X-One: 1",
        b"Date: Mon, 07 Dec 2026 12:00:00 GMT",  # the given one, not a second
        b"Content-Type: application/octet-stream",
        b"Content-Length: 4",
        b"Connection: close",
    ]
    reply = asyncio.run(_serve_one(answer, b"GET /200?undated HTTP/1.0\r\n\r\n"))
    assert b"\r\nConnection: close\r\nDate: " in reply and reply.endswith(b"\r\n\r\nbody"), reply
    reply = asyncio.run(_serve_one(answer, b"GET /200?typed HTTP/1.1\r\n" + close))
    assert reply.lower().count(b"content-type") == 1, reply
    assert b"\r\ncontent-type: text/csv\r\n" in reply, reply
    reply = asyncio.run(_serve_one(answer, b"GET /204 HTTP/1.1\r\n" + close))
    assert reply.startswith(b"HTTP/1.1 204 No Content\r\n") and b"Content-Length" not in reply
    reply = asyncio.run(_serve_one(answer, b"HEAD /200 HTTP/1.1\r\n" + close))
    assert b"\r\nContent-Length: 4\r\n" in reply and reply.endswith(b"\r\n\r\n"), reply


class _Socket:
    """The transport of one connection, as the protocol writes to it (no network needed: the
    test drives the protocol's events itself, in an order a real loop rarely shows)."""

    def __init__(self) -> None:
        self.closing = False

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8080)}.get(name)

    def abort(self) -> None:
        self.closing = True

    close = abort

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _HandingOff:
    """An express that hands each call straight to the ordinary path, with a note that
    records being abandoned."""

    def __init__(self) -> None:
        self.abandoned = 0

    def take(self, call: Call) -> bool:
        call.hand_off(self)
        return True

    def abandon(self) -> None:
        self.abandoned += 1


async def _dropped_between_hand_off_and_handler() -> tuple[int, int, bool]:
    handled = 0

    async def handle(request: Request) -> StreamResponse:
        nonlocal handled
        handled += 1
        return Response()

    express = _HandingOff()
    state = ServerState(handle, Limits(None, 1024, 1024, 65536), lambda p, r: None, express)
    protocol = HttpProtocol(state)
    protocol.connection_made(_Socket())  # type: ignore[arg-type]
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # handed off: a task made
    protocol.connection_lost(None)  # the client gone before the task's first step
    await asyncio.sleep(0)
    await asyncio.wait_for(protocol.finished, 5)
    return express.abandoned, handled, protocol.finished.done()


def test_a_handed_off_request_dropped_before_its_handler_began_is_abandoned() -> None:
    # The handler never runs (its cancellation comes first), so its clean-up never does:
    # the express's note lets go of what it holds instead, and the connection finishes.
    abandoned, handled, finished = asyncio.run(_dropped_between_hand_off_and_handler())
    assert (abandoned, handled, finished) == (1, 0, True)
