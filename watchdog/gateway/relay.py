"""A synchronous call's answer streamed to its caller: the one way ``/function/`` and the front
doors' synchronous routes (Altair's invoke, OpenWhisk's web actions) send a function's answer."""

from __future__ import annotations

import logging

from ..http import Request, Response, StreamResponse
from .answers import SERVED_BY
from .invoke import CLIENT_GONE, Call, InvokeError, Invoker, Sent
from .proxy import Extra, UpstreamError, abort_connection, relay
from .registry import Function

log = logging.getLogger("watchdog.gateway")

SERVED: Extra = (("X-Served-By", SERVED_BY),)
"""What the gateway adds to every function's answer it relays."""


async def answer_call(
    invoker: Invoker,
    request: Request,
    function: Function,
    call: Call,
    content_type: str | None = None,
    sent: Sent | None = None,
) -> StreamResponse:
    """Run ``call`` on ``function`` and send its status, headers and body to ``request``'s
    client as they come (a small body in one write); ``content_type`` replaces the
    function's. ``sent``: the call was sent by the express already (see
    :meth:`.Invoker.resume`).

    Once the status is out only a cut connection can tell the caller that the rest is not
    coming: a function that breaks off or runs out of time mid-body is answered that way.

    Raises:
        InvokeError: the call was refused or failed before its answer started (the caller
            answers it in its own shape).
    """
    try:
        invoking = invoker.invoke(function, call) if sent is None else invoker.resume(sent)
        async with invoking as invocation:
            served = SERVED
            if content_type is not None:
                served += (("Content-Type", content_type),)
            try:
                return await relay(request, invocation, served)
            except UpstreamError as exc:  # broke off before anything was sent
                invocation.status = 502
                message = f"function {function.key} broke off its response: {exc}"
                raise InvokeError(502, message, function=function) from None
            except ConnectionError:
                # The caller went away while its answer was being written.
                invocation.status = CLIENT_GONE
                abort_connection(request)
                return Response(status=CLIENT_GONE)  # never sent: the connection is cut
    except TimeoutError:
        log.warning("function %s timed out while answering", function.key)
        abort_connection(request)
        return Response(status=504)  # never sent: the connection is cut already
