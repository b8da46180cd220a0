"""mode=static: serve the files under ``static_path``, and nothing outside it.

:mod:`..http.files` supplies content types, ETag/Last-Modified with conditional requests, and
Range. Containment is ours: the decoded path is resolved (symlinks included) and must stay
under the root, so ``..``, ``%2e%2e``, absolute paths and symlinks leaving the tree all get 404.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

from ..config import WatchdogConfig
from ..http import Request, Response, StreamResponse
from ..http.files import FileResponse
from ..limits import Admission


class StaticRootError(Exception):
    """static_path is missing or not a directory."""


class StaticRunner:
    def __init__(self, config: WatchdogConfig) -> None:
        self._root = Path(config.static_path)

    async def start(self) -> None:
        if not self._root.is_dir():
            raise StaticRootError(f"static_path={str(self._root)!r} is not a directory")
        self._root = self._root.resolve()

    def express(self, admission: Admission) -> None:
        return None  # every request takes the ordinary path

    def healthy(self) -> bool:
        return True

    async def ready(self) -> bool:
        return True

    def exit_status(self) -> asyncio.Future[int] | None:
        return None

    async def stop(self, grace: float) -> None:
        return None

    async def handle(self, request: Request, started: float) -> StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return Response(status=405, headers={"Allow": "GET, HEAD"})
        target = self._contained(request.path)
        if target is not None and target.is_dir():
            if not request.path.endswith("/"):
                location = _directory_location(request.path)
                moved = {"Location": location}
                return Response(status=301, text="301: Moved Permanently", headers=moved)
            target = target / "index.html"
        if target is None or not target.is_file():
            return Response(status=404, text="404 page not found\n")
        return FileResponse(target)

    def _contained(self, path: str) -> Path | None:
        if "\0" in path:
            return None
        try:
            target = (self._root / path.lstrip("/")).resolve()
        except (OSError, RuntimeError):  # symlink loops
            return None
        return target if target.is_relative_to(self._root) else None


def _directory_location(path: str) -> str:
    """Where a directory without its trailing slash is redirected (so that relative links in its
    index page resolve against it). One leading slash only, and percent-encoded: ``//host/`` or
    ``/\\host/`` would be taken by browsers as another site (an open redirect)."""
    return quote("/" + path.lstrip("/") + "/")
