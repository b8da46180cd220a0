"""Keeping TLS's libraries out of the per-container watchdog.

The watchdog serves and proxies plain HTTP only: TLS ends at the gateway or the ingress in
front of it. Yet uvloop, asyncio and prometheus-client import :mod:`ssl` when they are
imported, for TLS features the watchdog never uses, and ``ssl`` loads libssl and libcrypto:
4 MB of every replica's memory (a sixth of it) and about 10 ms of its start.

So before the watchdog imports them, :func:`stand_in_for_ssl` registers a stand-in ``ssl``
module carrying only the names they read at import time: exception classes, three error
codes, two protocol numbers, and classes and a function that refuse to make TLS objects. Any
other name asked of the stand-in imports the real module, which takes its place in
``sys.modules``: code in this process that does want TLS still gets it, and pays for it
then. (uvloop keeps the stand-in's ``SSLContext`` it read at import, so a TLS connection
through uvloop would still be refused: nothing in the watchdog makes one.)
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, NoReturn


class SSLError(OSError):
    pass


class SSLWantReadError(SSLError):
    pass


class SSLWantWriteError(SSLError):
    pass


class SSLSyscallError(SSLError):
    pass


class SSLZeroReturnError(SSLError):
    pass


class CertificateError(SSLError, ValueError):
    pass


class _NoTLS:
    """A TLS object this process cannot make: the real ``ssl`` was never loaded here."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        _refuse(type(self).__name__)


class SSLContext(_NoTLS):
    pass


class MemoryBIO(_NoTLS):
    pass


class TLSVersion(_NoTLS):
    pass


def _refuse(what: str) -> NoReturn:
    raise SSLError(f"{what}: the watchdog does not speak TLS (TLS ends at the gateway)")


def create_default_context(*args: object, **kwargs: object) -> NoReturn:
    _refuse("create_default_context")


_NAMES: dict[str, object] = {
    "SSLError": SSLError,
    "SSLWantReadError": SSLWantReadError,
    "SSLWantWriteError": SSLWantWriteError,
    "SSLSyscallError": SSLSyscallError,
    "SSLZeroReturnError": SSLZeroReturnError,
    "CertificateError": CertificateError,
    "SSLContext": SSLContext,
    "MemoryBIO": MemoryBIO,
    "TLSVersion": TLSVersion,
    "create_default_context": create_default_context,
    # The real module's values (uvloop compares OpenSSL's error codes with these).
    "SSL_ERROR_WANT_READ": 2,
    "SSL_ERROR_WANT_WRITE": 3,
    "SSL_ERROR_SYSCALL": 5,
    # prometheus-client's default arguments for its own TLS server and client.
    "PROTOCOL_TLS_CLIENT": 16,
    "PROTOCOL_TLS_SERVER": 17,
}


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        """A name the stand-in does not carry: the real module, from now on everyone's.
        (Not for dunder names: tools probing every module for ``__file__`` and the like.)"""
        if name.startswith("__"):
            raise AttributeError(name)
        if sys.modules.get("ssl") is self:
            del sys.modules["ssl"]
        return getattr(importlib.import_module("ssl"), name)


def stand_in_for_ssl() -> None:
    """Register the stand-in, unless the real ``ssl`` is imported already."""
    if "ssl" in sys.modules:
        return
    stand_in = _StandIn("ssl", __doc__)
    stand_in.__dict__.update(_NAMES)
    sys.modules["ssl"] = stand_in
