"""`GET /v1/schemas/{name}.json`: the document languages' JSON Schemas (ruleset, journey, segment, plan), open
like /openapi.json, for editors (the console's, or any that reads `$schema`)."""

from __future__ import annotations

import json

from aiohttp import web

from api.wire.languages import language_schemas
from beacon.errors import NotFoundError

# Built once: the schemas are constants of this build, and an editor fetches them on every page it opens.
_BODIES = {f"{name}.json": json.dumps(schema, indent=1) for name, schema in language_schemas().items()}


async def get_schema(request: web.Request) -> web.Response:
    """One language's JSON Schema; 404 naming the ones there are."""
    name = request.match_info["name"]
    body = _BODIES.get(name)
    if body is None:
        raise NotFoundError(f"no schema {name!r} (there are: {', '.join(sorted(_BODIES))})", path="name")
    return web.Response(text=body, content_type="application/schema+json", headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    """Register the schema endpoint."""
    app.router.add_get("/v1/schemas/{name}", get_schema)
