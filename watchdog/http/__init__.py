"""The per-container watchdog's HTTP/1.1 server: asyncio protocols on uvloop, llhttp parsing.

Lean on purpose (no aiohttp: it costs the watchdog 110 ms of start-up and 12 MB per replica):
:mod:`.protocol` is one connection, :mod:`.request` and :mod:`.response` what handlers see,
:mod:`.server` listening and draining.
"""

from __future__ import annotations

from .protocol import Handler, Limits
from .request import BodyStream, Request
from .response import RelayedResponse, Response, StreamResponse, relayed_head
from .server import HttpServer

__all__ = [
    "BodyStream",
    "Handler",
    "HttpServer",
    "Limits",
    "RelayedResponse",
    "Request",
    "Response",
    "StreamResponse",
    "relayed_head",
]
