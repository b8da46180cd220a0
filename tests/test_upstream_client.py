"""The http mode's own upstream client and upgrade tunnel (watchdog/http/upstream.py and
tunnel.py), on their own against real servers: the aiohttp app of the http-mode tests, the
standard library's http.server, and small asyncio servers for what those cannot do."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import uvloop
from conftest import (
    FIXTURES,
    PYTHON,
    RunningWatchdog,
    free_port,
    stop_process,
    wait_until_serving,
    watchdog_env,
)

from watchdog.http.tunnel import Tunnel
from watchdog.http.upstream import HIGH_WATER, UpstreamError, UpstreamPool, UpstreamResponse


def _start_upstream(script: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, str(FIXTURES / script), str(port)], stdout=subprocess.PIPE, text=False
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # it says so once it listens
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc)
    assert proc.stdout is not None
    proc.stdout.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    """The aiohttp app of the http-mode tests (its routes are listed in its docstring)."""
    proc, port = _start_upstream("http_upstream.py")
    yield port
    _stop(proc)


@pytest.fixture(scope="module")
def plain_upstream() -> Iterator[int]:
    proc, port = _start_upstream("plain_upstream.py")
    yield port
    _stop(proc)


def run(coroutine: Awaitable[object]) -> object:
    async def main() -> object:
        return await coroutine

    return uvloop.run(main())


async def _answer(
    pool: UpstreamPool, method: str, target: str, body: bytes | None = None
) -> tuple[UpstreamResponse, bytes]:
    response = await pool.request(method, target, [("Host", "test")], body)
    try:
        return response, await response.read()
    finally:
        response.release()


class Chunks:
    """A streamed request body from a list of chunks."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    async def next_chunk(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_a_request_and_its_answer_and_the_connection_is_kept(upstream: int) -> None:
    async def scenario() -> None:
        pool = UpstreamPool("127.0.0.1", upstream)
        response, body = await _answer(pool, "GET", "/inspect/a%7eb?x=1&y=%20z")
        seen = json.loads(body)
        assert response.status == 200 and response.reason == "OK"
        assert seen["raw_path"] == "/inspect/a%7eb?x=1&y=%20z"
        assert ["Host", "test"] in seen["headers"]
        assert not any(name.lower() == "content-length" for name, _ in seen["headers"])
        response, body = await _answer(pool, "POST", "/echo", b"round trip")
        assert body == b"round trip"
        assert [v for n, v in response.headers if n == "Set-Cookie"] == ["a=1", "b=2"]
        assert pool.opened == 1  # the second request went on the first one's connection
        pool.close()

    run(scenario())


def test_a_head_answer_has_no_body_whatever_its_length(upstream: int) -> None:
    async def scenario() -> None:
        pool = UpstreamPool("127.0.0.1", upstream)
        response, body = await _answer(pool, "HEAD", "/pid")
        assert response.status == 200 and body == b""
        assert response.content_length is not None and response.content_length > 0
        _, body = await _answer(pool, "GET", "/status/418")
        assert body == b"status\n"
        assert pool.opened == 1
        pool.close()

    run(scenario())


class _SaysClose(asyncio.Protocol):
    """Answers with ``Connection: close`` but leaves closing to the client."""

    accepted = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        _SaysClose.accepted += 1

    def data_received(self, data: bytes) -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        self.transport.write(answer)  # type: ignore[attr-defined]


def test_a_connection_the_upstream_means_to_close_is_not_reused() -> None:
    async def scenario() -> None:
        server, port = await _serve(_SaysClose)
        async with server:
            pool = UpstreamPool("127.0.0.1", port)
            for _ in range(3):
                response, body = await _answer(pool, "GET", "/")
                assert body == b"ok" and not response.keep_alive
            assert pool.opened == _SaysClose.accepted == 3 and pool.open_connections == 0
            pool.close()

    run(scenario())


def test_streamed_bodies_with_and_without_a_length(plain_upstream: int) -> None:
    async def scenario() -> None:
        pool = UpstreamPool("127.0.0.1", plain_upstream)
        response = await pool.request(
            "PUT", "/p", [("Host", "x")], stream=Chunks(b"abc", b"def"), content_length=6
        )
        seen = json.loads(await response.read())
        response.release()
        assert (response.status, response.reason) == (203, "Custom Reason")
        assert (seen["body"], seen["chunked"], seen["headers"]["Content-Length"]) == (
            "abcdef",
            False,
            "6",
        )
        pool.close()

    run(scenario())


def test_a_body_of_unknown_length_goes_chunked(upstream: int) -> None:
    async def scenario() -> None:
        pool = UpstreamPool("127.0.0.1", upstream)
        response = await pool.request("POST", "/inspect", [("Host", "x")], stream=Chunks(b"ab"))
        seen = json.loads(await response.read())
        response.release()
        assert ["Transfer-Encoding", "chunked"] in seen["headers"]
        assert seen["body_length"] == 2
        response = await pool.request(
            "POST", "/echo", [("Host", "x")], stream=Chunks(b"one ", b"two ", b"three")
        )
        assert await response.read() == b"one two three"
        response.release()
        pool.close()

    run(scenario())


def test_reading_pauses_while_the_consumer_is_behind(upstream: int) -> None:
    size = 32 * 1024 * 1024

    async def scenario() -> None:
        pool = UpstreamPool("127.0.0.1", upstream)
        response = await pool.request("GET", f"/bytes?n={size}", [("Host", "x")])
        received = 0
        while True:
            await _until(lambda: response.complete or response.buffered > HIGH_WATER)
            # Not read for a while: what is held stays near the mark, far below the size.
            assert response.buffered <= HIGH_WATER + 256 * 1024
            chunk = await response.read_chunk()
            if not chunk:
                break
            received += len(chunk)
        response.release()
        assert received == size
        assert pool.opened == 1 and (await _answer(pool, "GET", "/pid"))[0].status == 200
        assert pool.opened == 1
        pool.close()

    run(scenario())


async def _until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def test_a_large_body_streams_both_ways(upstream: int) -> None:
    size = 64 * 1024 * 1024

    class Zeros:
        sent = 0

        async def next_chunk(self) -> bytes:
            if self.sent >= size:
                return b""
            self.sent += 65536
            return bytes(65536)

    async def scenario() -> None:
        pool = UpstreamPool("127.0.0.1", upstream)
        response = await pool.request(
            "POST", "/echo", [("Host", "x")], stream=Zeros(), content_length=size
        )
        received = 0
        while chunk := await response.read_chunk():
            received += len(chunk)
        response.release()
        assert received == size
        pool.close()

    run(scenario())


def test_failures_are_upstream_errors(upstream: int) -> None:
    async def scenario() -> None:
        pool = UpstreamPool("127.0.0.1", upstream)
        with pytest.raises(UpstreamError, match="closed the connection"):
            await pool.request("GET", "/drop", [("Host", "x")])
        response = await pool.request("GET", "/break", [("Host", "x")])
        with pytest.raises(UpstreamError):
            await response.read()
        response.release()
        assert (await _answer(pool, "GET", "/pid"))[0].status == 200
        pool.close()
        with pytest.raises(UpstreamError, match="cannot connect"):
            await UpstreamPool("127.0.0.1", free_port()).request("GET", "/", [])

    run(scenario())


def test_a_cancelled_request_does_not_leave_its_connection_in_the_pool(upstream: int) -> None:
    async def scenario() -> None:
        pool = UpstreamPool("127.0.0.1", upstream)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.request("GET", "/slow?s=5", [("Host", "x")])
        assert (await _answer(pool, "GET", "/pid"))[0].status == 200
        assert pool.opened == 2
        pool.close()

    run(scenario())


class _ClosesEverySecondRequest(asyncio.Protocol):
    """Answers the first request of each connection with keep-alive, then closes the connection
    on the next one without answering: an upstream whose idle timeout hit as it was reused."""

    def __init__(self) -> None:
        self.requests = 0
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        self.buffer = b""
        self.requests += 1
        if self.requests == 1:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # type: ignore[attr-defined]
        else:
            self.transport.close()


async def _serve(factory: Callable[[], asyncio.Protocol]) -> tuple[asyncio.Server, int]:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_a_reused_connection_closed_by_the_upstream_is_retried_once() -> None:
    async def scenario() -> None:
        server, port = await _serve(_ClosesEverySecondRequest)
        async with server:
            pool = UpstreamPool("127.0.0.1", port)
            assert (await _answer(pool, "GET", "/"))[1] == b"ok"
            assert (await _answer(pool, "GET", "/"))[1] == b"ok"  # again, on a new connection
            assert pool.opened == 2
            # A POST might have been acted on: never sent twice.
            with pytest.raises(UpstreamError):
                await _answer(pool, "POST", "/", b"x")
            pool.close()

    run(scenario())


class _TunnelServer(asyncio.Protocol):
    """A stand-in for the watchdog's server: reads an upgrade request's head, sends it to the
    upstream and, on 101, joins the two connections with a Tunnel."""

    def __init__(self, pool: UpstreamPool, write_timeout: float | None) -> None:
        self.pool = pool
        self.write_timeout = write_timeout
        self.buffer = b""
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None and b"\r\n\r\n" in self.buffer:
            self.transport.pause_reading()  # type: ignore[attr-defined]
            self.task = asyncio.ensure_future(self.upgrade())

    async def upgrade(self) -> None:
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        line, *fields = head.decode().split("\r\n")
        method, target, _ = line.split(" ")
        headers = [tuple(f.split(": ", 1)) for f in fields]
        response = await self.pool.open(method, target, headers)  # type: ignore[arg-type]
        assert response.upgraded
        upstream, after = response.detach()
        assert self.pool.open_connections == 0  # the pool lets go of it
        tunnel = Tunnel(self.transport, upstream, self.write_timeout)  # type: ignore[arg-type]
        self.transport.set_protocol(tunnel.client)
        answer = f"HTTP/1.1 101 {response.reason}\r\n"
        answer += "".join(f"{n}: {v}\r\n" for n, v in response.headers) + "\r\n"
        await tunnel.run(answer.encode() + after, rest)


@pytest.fixture
def tunnel_port(upstream: int) -> Iterator[Callable[[], AsyncIterator[int]]]:
    async def serving(write_timeout: float | None = None) -> AsyncIterator[int]:
        pool = UpstreamPool("127.0.0.1", upstream)
        server, port = await _serve(lambda: _TunnelServer(pool, write_timeout))
        async with server:
            yield port
        pool.close()

    yield serving  # type: ignore[misc]


def test_a_websocket_passes_through_the_tunnel(tunnel_port) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> list[object]:
        async for port in tunnel_port():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                    answers: list[object] = []
                    for text in ("one", "two"):
                        await ws.send_str(text)
                        answers.append((await ws.receive(timeout=5)).data)
                    await ws.close()
                    return answers
        raise AssertionError("not served")

    assert run(scenario()) == ["echo:one", "echo:two"]


def test_the_tunnel_relays_a_flood_whole(tunnel_port) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> int:
        async for port in tunnel_port():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"http://127.0.0.1:{port}/wsflood?n=256") as ws:
                    received = 0
                    async for message in ws:
                        received += len(message.data)
                    return received
        raise AssertionError("not served")

    assert run(scenario()) == 256 * 65536


def test_http_mode_never_imports_aiohttp(tmp_path: Path) -> None:
    # The real entry point, reporting at exit whether aiohttp was loaded.
    entry = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('AIOHTTP=%s' % ('aiohttp' in sys.modules), flush=True))\n"
        "runpy.run_module('watchdog', run_name='__main__')\n"
    )
    port = free_port()
    env = watchdog_env(
        tmp_path,
        mode="http",
        fprocess=f"{PYTHON} {FIXTURES / 'http_upstream.py'} {port}",
        upstream_url=f"http://127.0.0.1:{port}",
        kill_grace="2s",
    )
    log_path = tmp_path / "watchdog.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [PYTHON, "-c", entry], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    wd = RunningWatchdog(proc, int(env["port"]), int(env["metrics_port"]), log_path, tmp_path)
    try:
        wait_until_serving(wd)
        # Proxied, a WebSocket included, and the watchdog never loaded aiohttp (its upstream,
        # an aiohttp app, is another process).
        assert wd.request("POST", "/echo", body=b"through").body == b"through"

        async def talk() -> object:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{wd.url}/ws") as ws:
                    await ws.send_str("hi")
                    return (await ws.receive(timeout=5)).data

        assert run(talk()) == "echo:hi"
    finally:
        stop_process(proc)
    assert "AIOHTTP=False" in wd.logs(), wd.logs()
