"""GET /v1/map: a page that draws the receivers, an estimate and its ellipse.

The page is static (heimdall/serving/map/): it reads the receivers from GET /v1/model,
posts the example capture set (or a body the user drops on it) to POST /predict and
draws the answer on a Web Mercator SVG. It needs nothing outside this service unless
HEIMDALL_MAP_TILE_URL names a tile server, the one origin its policy then lets images
come from.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from functools import cache
from importlib import resources
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from heimdall.serving.settings import Settings

# What the page is made of: name -> media type. Nothing else under map/ is served.
_ASSETS = {
    "map.js": "text/javascript; charset=utf-8",
    "map.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
    # the one example capture set (heimdall.training.examples), a POST /predict body
    "example.json": "application/json",
}


@cache
def _read(name: str) -> bytes:
    return resources.files("heimdall.serving").joinpath("map", name).read_bytes()


def content_security_policy(tile_url: str | None) -> str:
    """Scripts, styles and requests from this service only; images also from the tile server."""
    images = "'self'"
    if tile_url:
        parts = urlsplit(tile_url)
        images += f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        f"img-src {images}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings.map_tile_url),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def map_routes(settings: Callable[[], Settings]) -> list[Route]:
    """The page and its assets, for the app mounted at /v1. `settings` returns the worker's settings."""

    async def page(_: Request) -> Response:
        s = settings()
        # The tile settings travel as data attributes, escaped, so the page needs no inline script.
        body = (
            _read("index.html")
            .decode()
            .replace("{tile_url}", html.escape(s.map_tile_url or ""))
            .replace("{tile_attribution}", html.escape(s.map_tile_attribution))
        )
        return Response(body, media_type="text/html; charset=utf-8", headers=_headers(s))

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _ASSETS:
            expected = f"one of {', '.join(sorted(_ASSETS))}"
            error = {"error": f"map/{name}: received a name the page does not have; expected {expected}"}
            detail = {"field": "path", "received": name, "expected": expected, "reason": "not_found"}
            return JSONResponse({**error, **detail}, status_code=404)
        return Response(_read(name), media_type=_ASSETS[name], headers=_headers(settings()))

    return [
        Route("/map", page, methods=["GET"]),
        Route("/map/{name}", asset, methods=["GET"]),
    ]
