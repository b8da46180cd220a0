"""Front doors: other platforms' APIs served by the gateway (one module per platform).

- :mod:`.openwhisk`: Apache OpenWhisk's REST API, which DigitalOcean Functions serves.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import DoorRoute, DoorServices, FrontDoor, guarded
from .openwhisk import OpenWhiskDoor

DOORS: tuple[FrontDoor, ...] = (OpenWhiskDoor(),)

AddRoute = Callable[..., None]


def mount(add_route: AddRoute, services: DoorServices) -> list[str]:
    """Add the routes of every door its setting leaves on; returns the doors' names.

    Routes are added unprotected: :func:`.base.guarded` applies the gateway's basic auth per
    request, by kind. State-changing requests another site's page makes are refused as on
    ``/async-function/``.
    """
    mounted: list[str] = []
    for door in DOORS:
        if not getattr(services.config, door.setting):
            continue
        for route in door.routes(services):
            add_route(route.prefix, guarded(route, services), protected=False, same_site=True)
        mounted.append(door.name)
    return mounted


__all__ = ["DOORS", "DoorRoute", "DoorServices", "FrontDoor", "mount"]
