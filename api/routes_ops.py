"""Open operational endpoints: Prometheus metrics, health, and the OpenAPI description (JSON and a page)."""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web

from api import keys
from api.openapi import OPENAPI
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
    """The API described as one self-contained page (no script, no outside asset): each path, its methods,
    what they do, the scope they need and the body they take, from the same document as /openapi.json."""
    return web.Response(text=_DOCS_PAGE, content_type="text/html")


def _docs_page(document: dict[str, Any]) -> str:
    rows = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            scopes = [scope for need in operation.get("security", []) for scope in need.get("bearer", [])]
            content = operation.get("requestBody", {}).get("content", {})
            schemas = sorted({body.get("schema", {}).get("$ref", "").rpartition("/")[2] for body in content.values()})
            rows.append(
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
                    method.upper(),
                    html.escape(path).replace("{", "&#123;").replace("}", "&#125;"),
                    html.escape(operation.get("summary", "")),
                    html.escape(", ".join(scopes) or "open"),
                    html.escape(", ".join(name for name in schemas if name)),
                )
            )
    info = document["info"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>{title} API</title><style>"
        "body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}"
        "td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}</style></head><body>"
        "<h1>{title} API {version}</h1><p>{description}. Machine-readable: <a href='/openapi.json'>/openapi.json</a>"
        " (OpenAPI {openapi}). Authentication: <code>Authorization: Bearer &lt;key&gt;</code> with the scope shown."
        "</p><table><tr><th>method</th><th>path</th><th>what</th><th>scope</th><th>body</th></tr>{rows}</table>"
        "</body></html>"
    ).format(
        title=html.escape(info["title"]),
        version=html.escape(info["version"]),
        description=html.escape(info.get("description", "")),
        openapi=html.escape(document["openapi"]),
        rows="".join(rows),
    )


_DOCS_PAGE = _docs_page(OPENAPI)


def add_routes(app: web.Application) -> None:
    """Register the operational endpoints."""
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", get_health)
    app.router.add_get("/openapi.json", get_openapi)
    app.router.add_get("/docs", get_docs)
