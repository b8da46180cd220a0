"""Fixtures of the asynchronous-call tests (load with ``pytest_plugins = ("async_fixtures",)``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from async_helpers import BACKENDS, BackendPlace, ManualClock, Receiver

from watchdog.gateway.queue.base import QueueBackend


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """``receiver(answers=[(500, {}), ...])`` starts a recording HTTP receiver."""
    started: list[Receiver] = []

    def start(answers: list[tuple[int, dict[str, str]]] | None = None) -> Receiver:
        rec = Receiver(answers)
        started.append(rec)
        return rec

    yield start
    for rec in started:
        rec.close()


@pytest.fixture
def clock() -> ManualClock:
    """The clock of the queues ``make_queue`` makes: still until the test moves it."""
    return ManualClock()


@pytest.fixture(params=sorted(BACKENDS))
def make_queue(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> Callable[..., QueueBackend]:
    """``make_queue(**options)``: a new (unopened) queue of the parametrized backend, on the
    test's ``clock``."""
    factory = BACKENDS[request.param]
    place = BackendPlace(tmp_path)
    if request.param == "nats":  # the server starts only when a NATS test runs
        server = request.getfixturevalue("nats_server")
        place = BackendPlace(tmp_path, server.url, f"t{uuid.uuid4().hex[:12]}")
    return lambda **opts: factory(place, **{"clock": clock, **opts})
