"""The dashboard's files: our ES modules, and plotly.js from the installed plotly package.

Nothing comes from a CDN, so the page works on air-gapped clusters. plotly.js (~4.8 MB) is
gzipped once in memory and served compressed to browsers that accept it.
"""

from __future__ import annotations

import gzip
import mimetypes
from functools import cache
from importlib import resources
from pathlib import PurePosixPath

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

__all__ = ["build_router"]

CACHE = "public, max-age=300"


@cache
def _plotly_js() -> tuple[bytes, bytes]:
    """plotly.min.js, plain and gzipped."""
    raw = resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()
    return raw, gzip.compress(raw, compresslevel=6)


def _frontend_file(name: str) -> bytes:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not name:
        raise HTTPException(404)
    target = resources.files("trainvitals.frontend").joinpath(*path.parts)
    if not target.is_file() or path.suffix not in (".html", ".js", ".css", ".svg", ".json"):
        raise HTTPException(404)
    return target.read_bytes()


def build_router() -> APIRouter:
    """Routes for ``/`` and ``/static/...``."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(_frontend_file("index.html"), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    @router.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js(request: Request) -> Response:
        raw, packed = _plotly_js()
        headers = {"Cache-Control": CACHE, "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(packed, media_type="text/javascript", headers=headers)
        return Response(raw, media_type="text/javascript", headers=headers)

    @router.get("/static/{name:path}", include_in_schema=False)
    def static(name: str) -> Response:
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if media == "application/javascript":
            media = "text/javascript"
        return Response(_frontend_file(name), media_type=media,
                        headers={"Cache-Control": "no-cache"})

    return router
