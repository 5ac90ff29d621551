"""The web console: one static page (HTML, JS, CSS shipped in this package) that drives the REST
API with the bearer key the user signs in with. It adds no second auth path: its files hold no
data, so they load without a key, and everything shown comes from /v1 calls made with one."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response

from app.errors import NotFoundError

STATIC = Path(__file__).parent / "static"
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}

# Nothing from elsewhere, no inline script or style, no plug-ins, no framing, no form posts:
# data the page shows is text nodes, and even an injected tag could not load or run anything.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def console_page() -> Response:
    return Response((STATIC / "index.html").read_bytes(), 200, HEADERS, "text/html")


@router.get("/console/{name}")
def console_asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFoundError(f"no console file {name!r}")
    return Response((STATIC / name).read_bytes(), 200, HEADERS, ASSETS[name])


def install(app: FastAPI) -> None:
    app.include_router(router)
