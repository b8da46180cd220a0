"""Responses the gateway writes itself (not relayed from a function)."""

from __future__ import annotations

import json

from aiohttp import web

from .. import __version__

SERVED_BY = f"fwatchdog-gateway/{__version__}"


def text(status: int, body: str) -> web.Response:
    response = web.Response(status=status, text=body + "\n", content_type="text/plain")
    response.headers["X-Served-By"] = SERVED_BY
    return response


def json_response(status: int, body: object) -> web.Response:
    response = web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )
    response.headers["X-Served-By"] = SERVED_BY
    return response


def method_not_allowed(allow: str) -> web.Response:
    response = text(405, "Method Not Allowed")
    response.headers["Allow"] = allow
    return response
