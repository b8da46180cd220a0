"""The seam every front door plugs into.

A front door serves another platform's API (its routes, names, record and error shapes) over
the gateway's own machinery: the one registry, the one synchronous invoke path, the one queue
and its worker. It owns no state of its own, so a call made through a door is an ordinary
call: ``GET /system/activations/ID`` shows it, the metrics count it.

Authentication stays the gateway's: every door route says which kind of route it is for a
request (``invoke`` or ``records``) and the seam applies the gateway's basic auth to it
exactly as to ``/function/`` (``basic_auth_invoke``) and ``/system/activations``
(``basic_auth``), before the door's handler runs. A door only chooses how the refusal looks,
and whether its own credentials, when it has some configured, stand in for the gateway's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from ...http import Request, StreamResponse
from ..config import GatewayConfig
from ..invoke import Invoker
from ..queue.base import QueueBackend
from ..registry import FunctionRegistry
from ..worker import AsyncWorker

Handler = Callable[[Request, str], Awaitable[StreamResponse]]
RouteKind = Literal["invoke", "records", "open"]
"""``invoke`` runs a function (guarded by ``basic_auth_invoke``), ``records`` reads or changes
call records (guarded by ``basic_auth``), ``open`` is neither (an unknown path, say)."""


@dataclass(frozen=True, slots=True)
class DoorServices:
    """What the gateway shares with its doors."""

    config: GatewayConfig
    registry: FunctionRegistry
    invoker: Invoker
    queue: QueueBackend
    worker: AsyncWorker
    authorized: Callable[[Request], bool]
    """The gateway's basic-auth check (True when auth is off)."""

    def needs_credentials(self, kind: RouteKind) -> bool:
        if kind == "invoke":
            return self.config.basic_auth_invoke
        if kind == "records":
            return self.config.basic_auth
        return False


@dataclass(frozen=True, slots=True)
class DoorRoute:
    """A path prefix of a door and its handler (given the raw path after the prefix).

    ``kind_of`` classifies a request (method and the rest of the path) for authentication;
    ``unauthorized`` is the 401 in the platform's own shape; ``accepts`` tells whether the
    request carries the door's own credentials (configured by the operator), which then do
    instead of the gateway's.
    """

    prefix: str
    handler: Handler
    kind_of: Callable[[Request, str], RouteKind]
    unauthorized: Callable[[Request], StreamResponse]
    accepts: Callable[[Request], bool] | None = None


class FrontDoor(Protocol):
    """One platform's API. ``setting`` names the :class:`GatewayConfig` attribute (a bool)
    that turns the door off."""

    name: str
    setting: str

    def routes(self, services: DoorServices) -> list[DoorRoute]: ...


def guarded(route: DoorRoute, services: DoorServices) -> Handler:
    """``route``'s handler behind the gateway's basic auth for the kind of each request."""

    async def handle(request: Request, rest: str) -> StreamResponse:
        kind = route.kind_of(request, rest)
        if services.needs_credentials(kind) and not services.authorized(request):
            if route.accepts is None or not route.accepts(request):
                return route.unauthorized(request)
        return await route.handler(request, rest)

    return handle
