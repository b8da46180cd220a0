"""What a proxy in one Python process on uvloop costs at the least, beside fwatchdog and the Go
of-watchdog, all in front of the same upstream (``bench/upstream.py``):

* ``relay``: bytes from each client connection to its own upstream connection and back, no
  parsing at all: the floor of any proxy process here (its system calls and wake-ups);
* ``proxy``: a minimal HTTP proxy as the watchdog's is built (httptools both ways, a task per
  request, pooled keep-alive upstream connections, the head written anew) with none of its
  features (no limits, timeouts, metrics, streaming or error handling): not for use.

    python -m bench.proxy_floor [--rounds 3] [--seconds 3]

wrk ``-t1`` at concurrency 1 and 16, rounds interleaved; CPU per request is the process's
user and system time from psutil (fwatchdog's with its fork server).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import cast

import httptools
import uvloop

from . import wrk
from .anchors import DEFAULT_DIR, OF_WATCHDOG, find
from .procs import CHECKOUT, Children, Meter, Service, base_env, free_port, wait_port


class _RelayUp(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Relay(asyncio.Protocol):
    """Bytes both ways between a client and an upstream connection of its own."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        asyncio.ensure_future(self._connect(cast(asyncio.Transport, transport)))

    async def _connect(self, client: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_connection(
            lambda: _RelayUp(client), "127.0.0.1", self.upstream_port
        )
        self.upstream = cast(asyncio.Transport, upstream)
        self.upstream.writelines(self.early)

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


class _ProxyUp(asyncio.Protocol):
    """One pooled upstream connection: parses responses, hands each over whole."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers, self.body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.answer is not None
        self.answer.set_result((self.parser.get_status_code(), self.headers, b"".join(self.body)))


class Proxy(asyncio.Protocol):
    """The client side: a task per parsed request, which borrows a pooled connection."""

    pool: list[_ProxyUp] = []

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url, self.headers = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        asyncio.ensure_future(self._forward(method, self.url.decode(), self.headers))

    async def _forward(self, method: str, target: str, headers: list[tuple[str, str]]) -> None:
        upstream = self.pool.pop() if self.pool else await self._connect()
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        lines.append("X-Forwarded-For: 127.0.0.1\r\n\r\n")
        upstream.answer = asyncio.get_running_loop().create_future()
        assert upstream.transport is not None and self.transport is not None
        upstream.transport.write("".join(lines).encode())
        status, answer_headers, body = await upstream.answer
        self.pool.append(upstream)
        head = [f"HTTP/1.1 {status} OK\r\n"]
        head += [f"{n.decode()}: {v.decode()}\r\n" for n, v in answer_headers]
        head.append("\r\n")
        self.transport.write("".join(head).encode() + body)

    async def _connect(self) -> _ProxyUp:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(_ProxyUp, "127.0.0.1", self.upstream_port)
        return upstream


def serve(kind: str, port: int, upstream_port: int) -> None:
    protocol = {"relay": Relay, "proxy": Proxy}[kind]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: protocol(upstream_port), "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


def measure(service: Service, connections: int, seconds: float) -> tuple[float, float, float]:
    """Requests/s and user, system µs per request (of fwatchdog with its fork server, as the
    bench meters it; not the upstream's ``sleep``)."""
    wrk.run(service.url + "/", connections=connections, seconds=1)  # warm-up
    with Meter(service.pid) as meter:
        result = wrk.run(service.url + "/", connections=connections, seconds=seconds)
    assert meter.usage is not None
    n = max(result.requests, 1)
    system = meter.usage.system_cpu_seconds
    user = meter.usage.cpu_seconds - system
    return result.requests / result.seconds, user / n * 1e6, system / n * 1e6


Subject = tuple[list[str], dict[str, str]]
"""A proxy under test: its command line and environment ("{port}" is its port)."""


def subjects(upstream_port: int) -> dict[str, Subject]:
    python = sys.executable
    floor = [python, "-m", "bench.proxy_floor", "serve"]
    http_mode = {
        "mode": "http",
        "upstream_url": f"http://127.0.0.1:{upstream_port}",
        "fprocess": "sleep 1000000",
        "healthcheck_interval": "1",
    }
    chosen = {
        "relay": (floor + ["relay", "{port}", str(upstream_port)], {}),
        "proxy": (floor + ["proxy", "{port}", str(upstream_port)], {}),
        "fwatchdog": ([python, "-m", "watchdog"], {**http_mode, "metrics_port": str(free_port())}),
    }
    of_watchdog = find(DEFAULT_DIR, OF_WATCHDOG)
    if of_watchdog is not None:
        chosen["of-watchdog"] = ([str(of_watchdog)], http_mode)
    return chosen


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve(argv[1], int(argv[2]), int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.proxy_floor", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    wrk.ensure_wrk()
    with tempfile.TemporaryDirectory() as run_dir, Children(Path(run_dir)) as children:
        upstream_port = free_port()
        upstream = [sys.executable, "-m", "bench.upstream", str(upstream_port)]
        wait_port(children.start("upstream", upstream, base_env(Path(run_dir)), upstream_port))
        started = {}
        for name, (command, settings) in subjects(upstream_port).items():
            port = free_port()
            env = base_env(Path(run_dir), **settings, port=str(port))
            argv = [arg.replace("{port}", str(port)) for arg in command]
            started[name] = children.start(name, argv, env, port, cwd=CHECKOUT)
        for service in started.values():
            wait_port(service)
        for connections in (1, 16):
            for round_ in range(args.rounds):
                for name, service in started.items():
                    rate, user, system = measure(service, connections, args.seconds)
                    print(
                        f"c{connections} round {round_ + 1} {name:12s} {rate:8.0f} req/s "
                        f"user {user:6.1f} µs  system {system:6.1f} µs  per request",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
