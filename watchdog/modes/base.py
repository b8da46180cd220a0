"""The seam between the HTTP server and a run mode."""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..http import Request, StreamResponse
from ..http.express import Express
from ..limits import Admission


class Runner(Protocol):
    """A run mode: how a request to the function becomes a response.

    The server owns listening, limits, health and metrics; a runner owns whatever executes the
    function (a process per request, a supervised upstream, a directory of files).
    """

    async def start(self) -> None:
        """Prepare to serve; return once requests can be handled. Raise on a fatal start error."""

    async def handle(self, request: Request, started: float) -> StreamResponse:
        """Answer one request. ``started`` is its ``time.monotonic()`` arrival time."""

    def express(self, admission: Admission) -> Express | None:
        """The mode's hot path for the commonest requests (:mod:`..http.express`), if it has
        one, counting its requests with ``admission``; called once the mode has started."""

    def healthy(self) -> bool:
        """Whether the mode can serve at all (``/_/health``)."""

    async def ready(self) -> bool:
        """Whether the mode should receive traffic now (``/_/ready``); may probe."""

    def exit_status(self) -> asyncio.Future[int] | None:
        """Resolves when the mode cannot go on and the watchdog should exit with that status."""

    async def stop(self, grace: float) -> None:
        """Stop whatever still runs: SIGTERM, then SIGKILL after ``grace`` seconds."""
