"""The python3-http upstream: an aiohttp server that calls function/handler.py's
handle(event, context) per request, with the OpenFaaS python3-http contract.

The watchdog runs this once (mode=http) and proxies to it at upstream_url; the port it
listens on is taken from upstream_url (or http_port), 5000 by default as in OpenFaaS.
"""

import asyncio
import json
import os
import socket
from urllib.parse import urlsplit

import uvloop
from aiohttp import web

from function import handler


class Event:
    def __init__(self, request, body):
        self.body = body
        self.headers = request.headers
        self.method = request.method
        self.query = request.query
        self.path = request.path


class Context:
    def __init__(self):
        self.hostname = os.getenv("HOSTNAME", "localhost")


def format_response(result):
    """handle()'s return value -> (status, body bytes, headers), as python3-http does."""
    if result is None:
        return 200, b"", {}
    if isinstance(result, web.StreamResponse):
        return result
    if isinstance(result, tuple):
        # Not a dict: the official template hands it to Flask, which takes (body, status),
        # (body, headers) and (body, status, headers).
        status, headers = 200, {}
        for item in result[1:]:
            if isinstance(item, int):
                status = item
            elif isinstance(item, dict):
                headers = dict(item)
        return _formatted(status, result[0] if result else None, headers)
    if not isinstance(result, dict):
        return _formatted(200, result, {})
    status = int(result.get("statusCode", 200))
    return _formatted(status, result.get("body"), dict(result.get("headers") or {}))


def _formatted(status, body, headers):
    if isinstance(body, (dict, list)):
        headers.setdefault("Content-Type", "application/json")
        return status, json.dumps(body).encode(), headers
    if body is None:
        return status, b"", headers
    headers.setdefault("Content-Type", "text/html; charset=utf-8")
    return status, _text(body), headers


def _text(value):
    return value if isinstance(value, bytes) else str(value).encode()


async def call_handler(request):
    body = await request.read()
    event = Event(request, body)
    # Handlers are ordinary (blocking) functions: run them off the event loop.
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(None, handler.handle, event, Context())
    formatted = format_response(result)
    if isinstance(formatted, web.StreamResponse):
        return formatted
    status, payload, headers = formatted
    return web.Response(status=status, body=payload, headers=headers)


def listen_port():
    if os.getenv("http_port"):
        return int(os.environ["http_port"])
    url = os.getenv("upstream_url") or os.getenv("http_upstream_url") or ""
    return urlsplit(url).port or 5000


def main():
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", call_handler)
    sock = socket.create_server(("127.0.0.1", listen_port()))
    web.run_app(app, sock=sock, print=None, access_log=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
