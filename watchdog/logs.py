"""Log output: the watchdog's own lines (text or JSON) and handler output relayed line by line.

Handler output is never allowed to stop logging or block the handler: a line longer than
``log_buffer_size`` is cut into pieces, each marked as continued, and a last line without a
newline is still emitted when the pipe closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import TextIO

from aiohttp.http_exceptions import HttpProcessingError

CONTINUED = " [...]"
BAD_REQUESTS_PER_SECOND = 10
_REASON_MAX = 200


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _iso(created: float) -> str:
    millis = int((created % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


def setup_logging(log_format: str) -> None:
    """Send the watchdog's own lines to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    for old in [f for f in server.filters if isinstance(f, MalformedRequests)]:
        server.removeFilter(old)
    server.addFilter(MalformedRequests(BAD_REQUESTS_PER_SECOND))


class MalformedRequests(logging.Filter):
    """aiohttp logs every request its parser refuses (answered 400) with a traceback of its own
    code, twelve lines that say nothing about ours. This filter makes each one line, ``bad
    request from PEER: REASON``, and lets at most ``per_second`` through per second, so a flood
    of bad requests cannot flood the log: the rest are counted and reported in one line when
    the second is over. Every other aiohttp record (a real 500 included) passes unchanged."""

    def __init__(self, per_second: int) -> None:
        super().__init__()
        self.per_second = per_second
        self._window_end = 0.0
        self._logged = 0
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        now = time.monotonic()
        if now >= self._window_end:
            self._window_end, self._logged = now + 1.0, 0
        if self._logged >= self.per_second:
            if self._suppressed == 0:
                self._report_at_window_end(self._window_end - now)
            self._suppressed += 1
            return False
        self._logged += 1
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        record.msg, record.args = "bad request from %s: %s", (peer, _one_line(error.message))
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True

    def _report_at_window_end(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # aiohttp logs these from its event loop; nothing to schedule on otherwise
        loop.call_later(delay, self._report)

    def _report(self) -> None:
        count, self._suppressed = self._suppressed, 0
        logging.getLogger("watchdog.logs").warning(
            "bad requests: suppressed %d more lines in the last second", count
        )


def _one_line(reason: str) -> str:
    """aiohttp's parser messages span lines and end in a caret under the offending byte."""
    text = " ".join(reason.split()).removesuffix(" ^")
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= _REASON_MAX else text[:_REASON_MAX] + CONTINUED


class LineSplitter:
    """Turns a byte stream into lines of at most ``max_line`` bytes (-1: unbounded)."""

    __slots__ = ("_max", "_partial")

    def __init__(self, max_line: int) -> None:
        self._max = max_line
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self._partial += data
        lines: list[str] = []
        while True:
            end = self._partial.find(b"\n")
            if end < 0:
                break
            lines.extend(self._cut(bytes(self._partial[:end])))
            del self._partial[: end + 1]
        if self._max > 0:
            while len(self._partial) > self._max:
                lines.append(_decode(self._partial[: self._max]) + CONTINUED)
                del self._partial[: self._max]
        return lines

    def flush(self) -> list[str]:
        rest, self._partial = bytes(self._partial), bytearray()
        return self._cut(rest) if rest else []

    def _cut(self, line: bytes) -> list[str]:
        line = line.removesuffix(b"\r")
        if self._max <= 0 or len(line) <= self._max:
            return [_decode(line)]
        pieces = [line[i : i + self._max] for i in range(0, len(line), self._max)]
        return [_decode(p) + CONTINUED for p in pieces[:-1]] + [_decode(pieces[-1])]


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


class FunctionLog:
    """Writes the handler's output lines to the watchdog's matching stream."""

    def __init__(self, *, prefix: bool, json_format: bool, max_line: int) -> None:
        self._prefix = prefix
        self._json = json_format
        self.max_line = max_line

    def splitter(self) -> LineSplitter:
        return LineSplitter(self.max_line)

    def write(self, stream_name: str, lines: list[str]) -> None:
        if not lines:
            return
        out: TextIO = sys.stdout if stream_name == "stdout" else sys.stderr
        now = time.time()
        if self._json:
            stamp = _iso(now)
            text = "".join(
                json.dumps({"time": stamp, "stream": stream_name, "msg": line}, ensure_ascii=False)
                + "\n"
                for line in lines
            )
        elif self._prefix:
            head = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now)) + f" {stream_name}: "
            text = "".join(head + line + "\n" for line in lines)
        else:
            text = "".join(line + "\n" for line in lines)
        out.write(text)
        out.flush()
