"""The playground: a page at ``/`` that posts problems to ``/v1/solve`` and draws the search live.

In: browser requests for ``/`` and ``/static/<file>``. Out: the page's three files (`server/static/`:
``index.html``, ``app.js``, ``style.css``), read from the installed package with `importlib.resources`
so the page works offline and from a wheel. The page talks only to its own origin; every response
carries a Content-Security-Policy that makes the browser refuse anything else. Nothing here touches
the models: the page is a client of the public API like any other (it sends the API key if the user
enters one).
"""

from __future__ import annotations

import re
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

router = APIRouter(tags=["playground"])

STATIC_PACKAGE = __package__ or "server"
STATIC_DIR = "static"

# suffix -> media type; only these files are served
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

# Same-origin only: scripts, styles, fetch; images only inline (the empty favicon).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_NAME = re.compile(r"[A-Za-z0-9_-]+\.[a-z]+")


def _static_file(name: str) -> Response:
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    media_type = MEDIA_TYPES.get(suffix)
    if media_type is None or not _NAME.fullmatch(name):
        raise HTTPException(status_code=404, detail=f"no playground file {name!r}")
    resource = resources.files(STATIC_PACKAGE) / STATIC_DIR / name
    if not resource.is_file():
        raise HTTPException(status_code=404, detail=f"no playground file {name!r}")
    return Response(resource.read_bytes(), media_type=media_type, headers=HEADERS)


@router.get("/", include_in_schema=False)
async def index() -> Response:
    """The playground page."""
    return _static_file("index.html")


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    """One of the page's files (flat folder: no subpaths)."""
    return _static_file(name)
