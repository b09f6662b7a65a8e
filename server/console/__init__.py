"""The search console: a page at ``/`` and ``/console`` to try queries and see why.

Static HTML, CSS and plain JavaScript kept in this package (no build step, no
CDN: it works offline and ships in the wheel as package data). The page is a
client of the public HTTP API (``/info``, ``/search``, ``/metrics``) like any
other, so the server holds no state for it. The page itself carries no data,
so it stays open when an API key is set; it asks for the key and sends it as
the bearer token, and every answer it shows still passes the key check.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS_URL = "/console/assets"
PAGE_PATHS = ("/", "/console")
# Only our own files: no inline script or style, no third-party origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def mount_console(app: FastAPI) -> None:
    """Serve the page at ``/`` and ``/console`` and its assets under ``/console/assets``."""
    page = resources.files(__name__).joinpath("index.html").read_text(encoding="utf-8")

    async def console_page() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    for path in PAGE_PATHS:
        app.add_api_route(
            path,
            console_page,
            methods=["GET"],
            response_class=HTMLResponse,
            include_in_schema=False,
        )
    app.mount(ASSETS_URL, StaticFiles(packages=[(__name__, "assets")]), name="console-assets")
