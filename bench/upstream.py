"""The fastest upstream the project's own dependencies can build: a raw uvloop protocol that
answers every HTTP/1.1 request with one fixed keep-alive response.

    python -m bench.upstream PORT

It parses only what it must to find request boundaries (the header block, then a
Content-Length body or a chunked one), so the proxy in front of it, not the upstream, is what
a benchmark measures. wrk sends Content-Length; the Go of-watchdog relays request bodies
chunked, and an upstream that took those bytes for further requests would answer requests
nobody sent.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop

BODY = b"Hello from the bench upstream\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)


class FixedResponse(asyncio.Protocol):
    """Answers each complete request (headers + Content-Length or chunked body) with
    ``RESPONSE``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.body_left = 0
        self.chunked = False  # in a chunked body: its chunks are in (or coming to) buffer
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.body_left:  # the rest of a body: skip it without copying
            skipped = min(self.body_left, len(data))
            self.body_left -= skipped
            data = data[skipped:]
            if self.body_left:
                return
            self.transport.write(RESPONSE)
        self.buffer += data
        replies = 0
        while True:
            if self.chunked:
                if not self._chunks_ended():
                    break
                self.chunked = False
                replies += 1
                continue
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(self.buffer[:end])
            if _is_chunked(head):
                del self.buffer[: end + 4]
                self.chunked = True
                continue
            length = _content_length(head)
            available = len(self.buffer) - end - 4
            if available < length:
                self.body_left = length - available
                del self.buffer[:]
                break
            del self.buffer[: end + 4 + length]
            replies += 1
        if replies:
            self.transport.write(RESPONSE * replies)

    def _chunks_ended(self) -> bool:
        """Drop the complete chunks at the buffer's start; True once the last (size 0) and
        its trailer section are dropped too."""
        while (line_end := self.buffer.find(b"\r\n")) >= 0:
            size = int(bytes(self.buffer[:line_end]).split(b";")[0], 16)
            if size == 0:
                if self.buffer[line_end + 2 : line_end + 4] == b"\r\n":  # no trailers
                    del self.buffer[: line_end + 4]
                    return True
                trailers_end = self.buffer.find(b"\r\n\r\n", line_end + 2)
                if trailers_end < 0:
                    return False
                del self.buffer[: trailers_end + 4]
                return True
            if len(self.buffer) < line_end + 2 + size + 2:
                return False
            del self.buffer[: line_end + 2 + size + 2]
        return False


def _is_chunked(head: bytes) -> bool:
    lower = head.lower()
    start = lower.find(b"\r\ntransfer-encoding:")
    if start < 0:
        return False
    end = lower.find(b"\r\n", start + 2)
    return b"chunked" in lower[start : end if end >= 0 else None]


def _content_length(head: bytes) -> int:
    lower = head.lower()
    start = lower.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    end = lower.find(b"\r\n", start + 2)
    return int(lower[start + 17 : end if end >= 0 else None])


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FixedResponse, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
