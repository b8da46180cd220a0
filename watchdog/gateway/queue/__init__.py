"""Queue backends for asynchronous calls, all behind :class:`~.base.QueueBackend`.

Backends are named here and imported lazily, so an optional dependency (NATS) costs nothing
until it is chosen.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import (
    ActivationPage,
    ActivationRecord,
    ActivationStore,
    AttemptInfo,
    AttemptResult,
    CallbackAttempt,
    CallbackJob,
    CallbackOutbox,
    CallIntake,
    CallRequest,
    CallRunQueue,
    EnqueueResult,
    LeasedCall,
    ListQuery,
    QueueBackend,
    QueueClosed,
    QueueError,
    QueueFull,
    QueueUnavailable,
)

BACKENDS: dict[str, str] = {
    "sqlite": ".sqlite:SqliteQueue",
    "nats": ".nats:NatsQueue",
}


def backend_class(name: str) -> Any:
    """The class registered as ``name`` in :data:`BACKENDS`.

    Raises:
        KeyError: no such backend.
    """
    module, _, attr = BACKENDS[name].partition(":")
    # Relative to this package: it is ``fwatchdog.gateway.queue`` once installed.
    return getattr(importlib.import_module(module, __package__), attr)


__all__ = [
    "ActivationPage",
    "ActivationRecord",
    "ActivationStore",
    "AttemptInfo",
    "AttemptResult",
    "BACKENDS",
    "CallIntake",
    "CallRequest",
    "CallRunQueue",
    "CallbackAttempt",
    "CallbackJob",
    "CallbackOutbox",
    "EnqueueResult",
    "LeasedCall",
    "ListQuery",
    "QueueBackend",
    "QueueClosed",
    "QueueError",
    "QueueFull",
    "QueueUnavailable",
    "backend_class",
]
