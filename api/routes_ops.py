"""Open operational endpoints: Prometheus metrics, health, and the OpenAPI description (JSON and a page)."""

from __future__ import annotations

from aiohttp import web

from api import keys
from api.openapi import OPENAPI, docs_page
from beacon.ops_server import health_response, metrics_response


async def get_metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    return metrics_response()


async def get_health(request: web.Request) -> web.Response:
    """200 when Redis answers and processing is not stalled, 503 with the problems otherwise (beacon.health)."""
    return await health_response(request.app[keys.SERVICES].services)


async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of the API."""
    return web.json_response(OPENAPI)


async def get_docs(request: web.Request) -> web.Response:
    """The API described as one self-contained page (`api.openapi.docs_page`), from the same document as
    /openapi.json."""
    return web.Response(text=_DOCS_PAGE, content_type="text/html")


_DOCS_PAGE = docs_page(OPENAPI)


def add_routes(app: web.Application) -> None:
    """Register the operational endpoints."""
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", get_health)
    app.router.add_get("/openapi.json", get_openapi)
    app.router.add_get("/docs", get_docs)
