"""The fork modes' contract with a handler: request metadata in, optional CGI header block out."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDict

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Set by the watchdog, never taken from the response block: it frames the body itself.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
MAX_HEADER_BLOCK = 64 * 1024


# Header names seen, memoized: the same few come with every request.
_ENV_NAMES: dict[str, str | None] = {}
_ENV_NAMES_KEPT = 1024  # distinct names remembered; past that, the memo starts over
_ENV_NAME_LONGEST_KEPT = 64  # longer names are worked out each time, never kept


def header_env_name(name: str) -> str | None:
    """``x-call-id`` becomes ``Http_X_Call_Id``; None if the result is no valid variable name."""
    try:
        return _ENV_NAMES[name]
    except KeyError:
        pass
    env_name = _env_name(name)
    if len(name) <= _ENV_NAME_LONGEST_KEPT:
        if len(_ENV_NAMES) >= _ENV_NAMES_KEPT:
            _ENV_NAMES.clear()
        _ENV_NAMES[name] = env_name
    return env_name


def _env_name(name: str) -> str | None:
    canonical = "_".join(part.capitalize() for part in name.split("-"))
    env_name = "Http_" + canonical
    return env_name if _ENV_NAME.match(env_name) else None


def request_variables(
    method: str,
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
) -> dict[str, str]:
    """The ``Http_*`` variables describing a request, added to the handler's environment.

    Repeated headers are joined with ``, `` (RFC 9110 5.3). Names that cannot be variable names and
    values containing NUL bytes are dropped rather than passed on mangled.
    """
    meta: dict[str, str] = {}
    for name, value in headers:
        env_name = header_env_name(name)
        if env_name is None or "\0" in value:
            continue
        previous = meta.get(env_name)
        meta[env_name] = value if previous is None else f"{previous}, {value}"
    # After the headers, so that a header called "Method" cannot impersonate them.
    meta["Http_Method"] = method
    meta["Http_Path"] = path if "\0" not in path else ""
    if query:
        meta["Http_Query"] = query
    else:
        meta.pop("Http_Query", None)
    return meta


class CGIHeaderError(Exception):
    """The handler's output does not begin with a well-formed CGI header block."""


@dataclass(frozen=True, slots=True)
class CGIHead:
    status: int
    reason: str | None
    headers: CIMultiDict[str]
    body_offset: int


def parse_head(output: bytes | bytearray, *, final: bool) -> CGIHead | None:
    """Parse an RFC 3875 header block at the start of ``output``.

    Returns None when more output is needed (``final`` False and no blank line yet).

    Raises:
        CGIHeaderError: malformed line, bad Status, block too long, or output ended before it.
    """
    end, sep = _block_end(output)
    if end < 0:
        if len(output) > MAX_HEADER_BLOCK:
            raise CGIHeaderError(f"no blank line within the first {MAX_HEADER_BLOCK} bytes")
        if final:
            raise CGIHeaderError("output ended before the blank line closing the header block")
        return None
    status, reason = 200, None
    headers: CIMultiDict[str] = CIMultiDict()
    block = bytes(output[:end]).decode("latin-1")
    for line in block.replace("\r\n", "\n").split("\n"):
        name, colon, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not name or " " in name:
            raise CGIHeaderError(f"malformed header line {line[:80]!r}")
        if name.lower() == "status":
            status, reason = _parse_status(value)
        elif name.lower() not in _FRAMING:
            headers.add(name, value)
    if "Location" in headers and status == 200:
        status = 302
    return CGIHead(status, reason, headers, end + sep)


def _block_end(output: bytes | bytearray) -> tuple[int, int]:
    crlf, lf = output.find(b"\r\n\r\n"), output.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return lf, 2


def _parse_status(value: str) -> tuple[int, str | None]:
    code, _, reason = value.partition(" ")
    if not (code.isdigit() and len(code) == 3 and 100 <= int(code) <= 599):
        raise CGIHeaderError(f"Status must be a three-digit code, got {value[:40]!r}")
    return int(code), reason.strip() or None
