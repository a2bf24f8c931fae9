"""The console: the built single-page app in `api/console_dist` (sources in `console/`), served under /console/.

The files are open like /docs: they hold no data, and every call the page makes goes through the public API
with the key the user signs in with. Only files listed at start-up are served (no path from a request ever
reaches the file system), and a content security policy keeps the page to this origin: no CDN, no inline script.
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path

from aiohttp import web

log = logging.getLogger("beacon.api")

DIST = Path(__file__).with_name("console_dist")
INDEX = "index.html"
# Vite names every asset by a hash of its content: a name never changes meaning, so browsers may keep it.
IMMUTABLE = "public, max-age=31536000, immutable"
# CodeMirror and React Flow add <style> elements at run time, hence the inline styles; scripts stay 'self'.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
CONSOLE_FILES = web.AppKey("console_files", dict[str, Path])


def bundle_files(root: Path = DIST) -> dict[str, Path]:
    """Every file of the built console by its path under /console/ (empty when the bundle is missing)."""
    if not root.is_dir():
        return {}
    return {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*")) if path.is_file()}


async def get_console_root(request: web.Request) -> web.StreamResponse:
    """`/console` → `/console/`, so the page's relative asset paths resolve under it."""
    raise web.HTTPFound("/console/")


async def get_console_file(request: web.Request) -> web.StreamResponse:
    """The console page (for `/console/`) or one of its assets."""
    files = request.app[CONSOLE_FILES]
    name = request.match_info["path"] or INDEX
    path = files.get(name)
    if path is None:
        if not files:
            raise web.HTTPNotFound(reason="the console is not built: run `npm ci && npm run build` in console/")
        raise web.HTTPNotFound()
    response = web.FileResponse(path)
    response.content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    # The page itself is revalidated, so a new release's page (naming new assets) is seen at once.
    response.headers["Cache-Control"] = "no-cache" if name == INDEX else IMMUTABLE
    return response


def add_routes(app: web.Application) -> None:
    """Register the console's routes."""
    app[CONSOLE_FILES] = bundle_files()
    if not app[CONSOLE_FILES]:
        log.warning("the console bundle is missing (%s): /console answers 404", DIST.name)
    app.router.add_get("/console", get_console_root)
    app.router.add_get("/console/{path:.*}", get_console_file)
