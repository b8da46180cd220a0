"""A file as a response: content type, ETag and Last-Modified, conditional GET (304) and one
byte range (206, or 416 when it lies outside the file)."""

from __future__ import annotations

import mimetypes
import os
import time
from pathlib import Path
from typing import BinaryIO

from .request import Request
from .response import StreamResponse

_CHUNK = 256 * 1024


class FileResponse(StreamResponse):
    """Sends ``path``; what of it, and whether at all, is decided in :meth:`prepare`."""

    __slots__ = ("_path",)

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path

    async def prepare(self, request: Request) -> None:
        if self.prepared:
            return
        with open(self._path, "rb") as file:
            stat = os.fstat(file.fileno())
            self._describe(stat)
            if _not_modified(request, self.headers["ETag"], stat.st_mtime):
                self.set_status(304)
                await super().prepare(request)
                return
            span = self._span(request, stat.st_size)
            if span is None:
                return await self._unsatisfiable(request, stat.st_size)
            start, end = span
            self.content_length = end - start
            await super().prepare(request)
            if request.method != "HEAD":
                await self._send(file, start, end)
        await self.write_eof()

    def _describe(self, stat: os.stat_result) -> None:
        content_type, encoding = mimetypes.guess_type(self._path.name)
        self.headers["Content-Type"] = content_type or "application/octet-stream"
        if encoding:
            self.headers["Content-Encoding"] = encoding
        self.headers["ETag"] = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        self.headers["Last-Modified"] = _http_date(stat.st_mtime)
        self.headers["Accept-Ranges"] = "bytes"

    def _span(self, request: Request, size: int) -> tuple[int, int] | None:
        """The bytes to send, [start, end); None when the range asked for is outside them."""
        wanted = request.headers.get("Range")
        if wanted is None or not _if_range_holds(request, self.headers["ETag"]):
            return 0, size
        span = _parse_range(wanted, size)
        if span is None:
            return 0, size  # not one byte range we understand: the whole file, as RFC 9110 lets
        start, end = span
        if start >= size or start >= end:
            return None
        self.set_status(206)
        self.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return start, end

    async def _unsatisfiable(self, request: Request, size: int) -> None:
        self.set_status(416)
        self.headers["Content-Range"] = f"bytes */{size}"
        self.content_length = 0
        await super().prepare(request)
        await self.write_eof()

    async def _send(self, file: BinaryIO, start: int, end: int) -> None:
        # Local reads from the page cache are short enough to make in the loop; each write
        # waits for the client to take the previous ones (bounded memory, write_timeout).
        fd = file.fileno()
        offset = start
        while offset < end:
            chunk = os.pread(fd, min(_CHUNK, end - offset), offset)
            if not chunk:
                break  # the file shrank: the client sees a short body and a closed connection
            await self.write(chunk)
            offset += len(chunk)


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``bytes=2-5``, ``bytes=2-`` or ``bytes=-3`` as [start, end); None for anything else."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        return None
    if not first.isdigit():
        return max(size - int(last), 0), size  # a suffix: the last N bytes
    if last and not last.isdigit():
        return None
    return int(first), min(int(last) + 1, size) if last else size


def _not_modified(request: Request, etag: str, mtime: float) -> bool:
    if request.method not in ("GET", "HEAD"):
        return False
    matches = request.headers.get("If-None-Match")
    if matches is not None:
        tags = [tag.strip().removeprefix("W/") for tag in matches.split(",")]
        return "*" in tags or etag in tags
    since = _parse_date(request.headers.get("If-Modified-Since"))
    return since is not None and int(mtime) <= since


def _if_range_holds(request: Request, etag: str) -> bool:
    """Without If-Range a Range applies; with it, only if the file is still the one named."""
    condition = request.headers.get("If-Range")
    return condition is None or condition.strip() == etag


def _parse_date(value: str | None) -> float | None:
    if not value:
        return None
    from email.utils import parsedate_to_datetime  # only conditional requests pay for it

    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _http_date(seconds: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(seconds))
