"""The header rules of a reverse proxy, free of any HTTP library.

Shared by the watchdog's http mode and the gateway (both on :mod:`.http`, the watchdog's own
client and server): hop-by-hop headers and those named in ``Connection`` are dropped both ways,
the client's Host goes on as ``X-Forwarded-Host`` and ``X-Forwarded-For/Proto`` are added.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The client's Host goes on as X-Forwarded-Host; the proxy's client writes the upstream's own
# Host (or the caller passes one), and the framing of the body is the proxy's to choose.
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}
NOT_RETURNED = HOP_BY_HOP | {"content-length"}
_DROPPED = NOT_FORWARDED | {"x-forwarded-for"}  # the client's goes on inside the proxy's own

Headers = CIMultiDictProxy[str] | CIMultiDict[str]


class ForwardedRequest(Protocol):
    """What the rules read from a client's request (aiohttp's and the lean server's alike)."""

    @property
    def headers(self) -> Headers: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def host(self) -> str: ...

    @property
    def scheme(self) -> str: ...


def connection_tokens(headers: Headers) -> set[str]:
    """The header names listed in ``Connection`` (lower case): hop-by-hop for this message."""
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(","))
    return tokens


def connection_tokens_of(pairs: Iterable[tuple[str, str]]) -> set[str]:
    """:func:`connection_tokens` of headers given as (name, value) pairs."""
    tokens: set[str] = set()
    for name, value in pairs:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(","))
    return tokens


def forwarded_pairs(request: ForwardedRequest, host: str | None = None) -> list[tuple[str, str]]:
    """The request's end-to-end headers plus ``X-Forwarded-For/Host/Proto``, in order, as the
    upstream should get them, and ``Host: host`` when given (else the caller's client writes
    the upstream's own)."""
    source = request.headers
    drop = _DROPPED | connection_tokens(source) if "Connection" in source else _DROPPED
    pairs = [(name, value) for name, value in source.items() if name.lower() not in drop]
    peer = request.remote or ""
    prior = source.get("X-Forwarded-For")
    pairs.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
    # The client's own X-Forwarded-Host/Proto win (an earlier proxy set them).
    if "X-Forwarded-Host" not in source or "x-forwarded-host" in drop:
        pairs.append(("X-Forwarded-Host", request.host))
    if "X-Forwarded-Proto" not in source or "x-forwarded-proto" in drop:
        pairs.append(("X-Forwarded-Proto", request.scheme))
    if host is not None:
        pairs.append(("Host", host))
    return pairs


def forwarded_headers(request: ForwardedRequest) -> CIMultiDict[str]:
    """:func:`forwarded_pairs` as a multidict, for callers that edit them further."""
    return CIMultiDict(forwarded_pairs(request))


def returned_pairs(headers: Iterable[tuple[str, str]], tokens: Set[str]) -> list[tuple[str, str]]:
    """A response's end-to-end headers: without hop-by-hop ones, those named in its
    ``Connection`` (``tokens``, see :func:`connection_tokens`) and Content-Length, which the
    proxy's own framing decides."""
    drop = NOT_RETURNED | tokens if tokens else NOT_RETURNED
    return [(name, value) for name, value in headers if name.lower() not in drop]
