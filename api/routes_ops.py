"""Open operational endpoints: Prometheus metrics, health, and the OpenAPI description."""

from __future__ import annotations

from aiohttp import web

from api import keys
from api.openapi import OPENAPI
from beacon import metrics


async def get_metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    body, content_type = metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def get_health(request: web.Request) -> web.Response:
    """200 when Redis answers, 503 otherwise."""
    try:
        await keys.redis(request).ping()
    except Exception as exc:
        return web.json_response({"status": "unavailable", "redis": str(exc)}, status=503)
    return web.json_response({"status": "ok"})


async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of the API."""
    return web.json_response(OPENAPI)


def add_routes(app: web.Application) -> None:
    """Register the operational endpoints."""
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", get_health)
    app.router.add_get("/openapi.json", get_openapi)
