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
from collections.abc import Callable
from typing import TextIO

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
    # The watchdog's server and the gateway's (the same one) report refused heads here.
    server = logging.getLogger(BAD_REQUEST_LOGGER)
    for old in [f for f in server.filters if isinstance(f, MalformedRequests)]:
        server.removeFilter(old)
    server.addFilter(MalformedRequests(BAD_REQUESTS_PER_SECOND))


BAD_REQUEST_LOGGER = "watchdog.http.bad_request"


def bad_request_log() -> Callable[[str | None, str], None]:
    """How the watchdog's server reports a request head it refused (answered 4xx): one
    line, rate-limited by :class:`MalformedRequests`."""
    logger = logging.getLogger(BAD_REQUEST_LOGGER)

    def report(peer: str | None, reason: str) -> None:
        logger.warning("bad request from %s: %s", peer, _one_line(reason))

    return report


class MalformedRequests(logging.Filter):
    """At most ``per_second`` lines a second about malformed requests, so a flood of bad
    requests cannot flood the log: the rest are counted and reported in one line when the
    second is over."""

    def __init__(self, per_second: int) -> None:
        super().__init__()
        self.per_second = per_second
        self._window_end = 0.0
        self._logged = 0
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        return self._within_rate()

    def _within_rate(self) -> bool:
        """Whether one more line fits in this second (else it is counted for the summary)."""
        now = time.monotonic()
        if now >= self._window_end:
            self._window_end, self._logged = now + 1.0, 0
        if self._logged >= self.per_second:
            if self._suppressed == 0:
                self._report_at_window_end(self._window_end - now)
            self._suppressed += 1
            return False
        self._logged += 1
        return True

    def _report_at_window_end(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # the servers log these from their event loop; nothing to schedule on else
        loop.call_later(delay, self._report)

    def _report(self) -> None:
        count, self._suppressed = self._suppressed, 0
        logging.getLogger("watchdog.logs").warning(
            "bad requests: suppressed %d more lines in the last second", count
        )


def _one_line(reason: str) -> str:
    """A parser's message on one printable line (llhttp's may span lines and end in a caret
    under the offending byte), cut at a bounded length."""
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
