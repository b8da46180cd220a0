"""Front doors: other platforms' APIs served by the gateway (one module per platform).

- :mod:`.openwhisk`: Apache OpenWhisk's REST API, which DigitalOcean Functions serves.
- :mod:`.altair`: Altair IoT Studio's ``/spaces/.../functions/.../invoke`` and ``async-invoke``.
- :mod:`.fc`: Alibaba Cloud Function Compute's invoke and task API (FC 2.0 and 3.0).
"""

from __future__ import annotations

from ..app import Route
from .altair import AltairDoor
from .base import DoorRoute, DoorServices, FrontDoor, guarded
from .fc import FcDoor
from .openwhisk import OpenWhiskDoor

DOORS: tuple[FrontDoor, ...] = (OpenWhiskDoor(), FcDoor(), AltairDoor())


def mount(services: DoorServices) -> tuple[list[Route], list[str]]:
    """The routes of every door its setting leaves on, and the doors' names.

    The routes are unprotected: :func:`.base.guarded` applies the gateway's basic auth per
    request, by kind. State-changing requests another site's page makes are refused as on
    ``/async-function/``.
    """
    routes: list[Route] = []
    mounted: list[str] = []
    for door in DOORS:
        if not getattr(services.config, door.setting):
            continue
        routes += [
            Route(route.prefix, guarded(route, services), protected=False, same_site=True)
            for route in door.routes(services)
        ]
        mounted.append(door.name)
    return routes, mounted


__all__ = ["DOORS", "DoorRoute", "DoorServices", "FrontDoor", "mount"]
