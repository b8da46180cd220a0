"""Builds the configured queue backend from the settings that backend takes (a SQLite path,
a NATS URL and name prefix), so the gateway never passes one backend's settings to another."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import backend_class
from .base import QueueBackend

if TYPE_CHECKING:
    from ..config import GatewayConfig

Built = tuple[QueueBackend, str]
"""The backend (not yet opened) and where it keeps calls, for the start-up log."""


def _sqlite(config: GatewayConfig) -> Built:
    path = Path(config.queue_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    queue = backend_class("sqlite")(path, max_depth=config.max_queue_depth)
    return queue, str(path)


def _nats(config: GatewayConfig) -> Built:
    queue = backend_class("nats")(
        config.nats_url,
        prefix=config.nats_prefix,
        replicas=config.nats_replicas,
        start_timeout=config.nats_start_timeout,
        max_depth=config.max_queue_depth,
    )
    return queue, f"{config.nats_url} (streams and buckets {config.nats_prefix}_*)"


_BUILDERS: dict[str, Callable[[GatewayConfig], Built]] = {"sqlite": _sqlite, "nats": _nats}


def build_queue(config: GatewayConfig) -> Built:
    """The backend named by ``config.queue_backend``.

    Raises:
        KeyError: a backend without a builder here.
    """
    return _BUILDERS[config.queue_backend](config)
