"""Which request targets the watchdog and the gateway serve: origin-form only.

An upstream's or a function's address comes from its configured URL alone, never from the
request, so anything but ``/path?query`` is refused before any route or network: CONNECT gets
405, absolute-form (``GET http://host/``) and ``OPTIONS *`` get 400, and a request line without
a version (HTTP/0.9, which aiohttp's parser and llhttp accept) gets 400 and a closed connection.

The watchdog's server (:mod:`.http`) applies it, for the watchdog and for the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from multidict import CIMultiDict

ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class Refusable(Protocol):
    """A response of either server: headers, and a way to close the connection after it."""

    @property
    def headers(self) -> CIMultiDict[str]: ...

    def force_close(self) -> None: ...


R = TypeVar("R", bound=Refusable)


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str
    close: bool = False  # end the connection after the answer
    allow: str | None = None  # the Allow header of a 405

    def apply(self, response: R) -> R:
        """``response`` (this refusal's status and message, in the server's own shape) with
        its ``Allow`` header and connection close."""
        if self.allow:
            response.headers["Allow"] = self.allow
        if self.close:
            response.force_close()
        return response


def refuse_target(method: str, raw_path: str, version: tuple[int, ...]) -> Refusal | None:
    """Why this request line is not served, or None when it is."""
    if version < (1, 0):
        return Refusal(400, "HTTP/0.9 requests are not supported", close=True)
    if method == "CONNECT":
        return Refusal(405, "CONNECT is not supported", allow=ALLOWED_METHODS)
    if not raw_path.startswith("/"):
        return Refusal(400, "The request target must be a path starting with /")
    return None
