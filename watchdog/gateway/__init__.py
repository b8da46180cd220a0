"""A thin OpenFaaS-compatible gateway in front of fwatchdog functions.

``fwatchdog gateway`` runs :class:`Gateway`; :class:`Invoker` is the one synchronous invoke
path (routes and workers alike) and :class:`FunctionRegistry` the interface that fills it.
"""

from __future__ import annotations

from .config import GatewayConfig
from .invoke import Call, Invocation, InvokeError, Invoker
from .registry import Function, FunctionRegistry, InMemoryRegistry
from .server import Gateway

__all__ = [
    "Call",
    "Function",
    "FunctionRegistry",
    "Gateway",
    "GatewayConfig",
    "InMemoryRegistry",
    "Invocation",
    "InvokeError",
    "Invoker",
]
