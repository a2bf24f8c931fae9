"""The OpenAPI 3.1 document served at /openapi.json, and the /docs page, generated from the route table
(`api.wire.routes`) and its typed models (msgspec's JSON Schema), with the document languages' schemas."""

from __future__ import annotations

import html
import re
from typing import Any

import msgspec

from api.wire import common, events, languages, routes
from api.wire.route_spec import JSON, BodyType, Route
from cep.identities import ALIAS_TYPES

VERSION = "0.1.0"
_REF = "#/components/schemas/{name}"
_LANGUAGE = {name: name.capitalize() for name in languages.NAMES}  # language -> component name
_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"},
    "attr": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"},
    "user_id": {"type": "string", "minLength": 1, "maxLength": 128},
    "type": {"enum": list(ALIAS_TYPES)},
    "token": {"type": "string"},
    "name": {"type": "string", "enum": [f"{name}.json" for name in languages.NAMES]},
    "path": {"type": "string"},
}
_STATUS_TEXT = {
    101: "Switching to a WebSocket",
    200: "OK",
    202: "Accepted, not yet applied",
    302: "A redirect",
    400: "Malformed body (not JSON / msgpack, or nested too deeply)",
    401: "Missing or unknown API key",
    403: "The key lacks the scope (or does not own the document)",
    404: "Not found",
    409: "Conflict with other stored documents, or the event archive is not in this process",
    413: "Body, batch or list over its limit",
    415: "A content type the route does not take",
    422: "Invalid input: `error.path` names the field, `error.message` the reason",
    503: "Redis unavailable or processing stalled: retry",
}


def _models() -> list[type]:
    """Every model the table names, plus the WebSocket frames (documented, not routed)."""
    found: dict[str, type] = {"Error": common.Error}
    for route in routes.ROUTES:
        for candidate in (*route.body, *route.replies.values(), *route.error_models.values()):
            if isinstance(candidate, type):
                found[candidate.__name__] = candidate
    found |= {"IngestFrame": events.IngestFrame, "FrameAck": events.FrameAck}
    return list(found.values())


def _language_components() -> dict[str, Any]:
    """Each language's schema as a component, its `$defs` moved beside it (`Ruleset_rule`, ...): a `#/$defs` ref
    inside a component would resolve against the OpenAPI document's root."""
    components: dict[str, Any] = {}
    for name, schema in languages.language_schemas().items():
        prefix = _LANGUAGE[name]

        def moved(node: Any, prefix: str = prefix) -> Any:
            if isinstance(node, dict):
                return {
                    key: (
                        _REF.format(name=f"{prefix}_{value.removeprefix('#/$defs/')}")
                        if key == "$ref" and isinstance(value, str)
                        else moved(value)
                    )
                    for key, value in node.items()
                }
            if isinstance(node, list):
                return [moved(item) for item in node]
            return node

        top = {key: value for key, value in schema.items() if key not in ("$defs", "$schema", "$id")}
        components[prefix] = moved(top)
        for def_name, definition in schema["$defs"].items():
            components[f"{prefix}_{def_name}"] = moved(definition)
    return components


def _body_schema(body: tuple[BodyType, ...]) -> dict[str, Any]:
    refs = [{"$ref": _REF.format(name=_LANGUAGE[item] if isinstance(item, str) else item.__name__)} for item in body]
    return refs[0] if len(refs) == 1 else {"oneOf": refs}


def _parameters(route: Route) -> list[dict[str, Any]]:
    found = [
        {"name": name, "in": "path", "required": True, "schema": _PATH_PARAMS[name]}
        for name in re.findall(r"\{(\w+)\}", route.path)
    ]
    if route.query is not None:
        _, components = msgspec.json.schema_components([route.query], ref_template=_REF)
        schema = components[route.query.__name__]
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if prop.get("type") == "array":
                parameter |= {"style": "form", "explode": True}
            found.append(parameter)
    return found


def _content(model: type | None, media: str) -> dict[str, Any]:
    if model is None:
        return {media: {}} if media != JSON else {media: {"schema": {"type": "object"}}}
    return {media: {"schema": {"$ref": _REF.format(name=model.__name__)}}}


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{route.method}_" + re.sub(r"\W+", "_", route.path).strip("_"),
        "summary": route.summary,
    }
    if route.description:
        operation["description"] = route.description
    if route.scope is not None:
        operation["security"] = [{"bearer": [route.scope]}]
    parameters = _parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.body or route.text_media:
        content: dict[str, Any] = {media: {"schema": _body_schema(route.body)} for media in route.body_media}
        content |= {media: {"schema": {"type": "string"}} for media in route.text_media}
        operation["requestBody"] = {"required": True, "content": content}
    responses: dict[str, Any] = {}
    for status, model in route.replies.items():
        responses[str(status)] = {
            "description": _STATUS_TEXT.get(status, "OK"),
            "content": _content(model, route.reply_media),
        }
        if model is None and status in (101, 302):
            del responses[str(status)]["content"]
        else:
            responses[str(status)]["content"] |= {media: {"schema": {"type": "string"}} for media in route.reply_text}
    for status in route.statuses():
        model = route.error_models.get(status, common.Error)
        responses[str(status)] = {
            "description": _STATUS_TEXT.get(status, "Error"),
            "content": _content(model, JSON),
        }
    operation["responses"] = responses
    return operation


def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route."""
    _, components = msgspec.json.schema_components(_models(), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes.ROUTES:
        paths.setdefault(route.path, {})[route.method] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Beacon",
            "version": VERSION,
            "description": (
                "Real-time marketing trigger server. Every error is "
                '{"error": {"code", "message", "path"}}; the document languages\' JSON Schemas are also served'
                " at /v1/schemas/{ruleset,journey,segment,plan}.json"
            ),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {**components, **_language_components()},
        },
    }


OPENAPI: dict[str, Any] = build_document()


def _names(schema: dict[str, Any]) -> list[str]:
    refs = [schema] if "$ref" in schema else schema.get("oneOf", [])
    return [ref["$ref"].rpartition("/")[2] for ref in refs if "$ref" in ref] or (
        [schema["type"]] if "type" in schema else []
    )


def docs_page(document: dict[str, Any]) -> str:
    """The document as one self-contained page (no script, no outside asset): per route its method, path,
    summary, scope, request body (by media type), replies and error statuses."""
    rows = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            scopes = [scope for need in operation.get("security", []) for scope in need.get("bearer", [])]
            content = operation.get("requestBody", {}).get("content", {})
            bodies = sorted({name for body in content.values() for name in _names(body.get("schema", {}))})
            query = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            replies: list[str] = []
            errors: list[str] = []
            for status, reply in operation["responses"].items():
                media: dict[str, Any] = next(iter(reply.get("content", {}).values()), {})
                schema = media.get("schema", {})
                named = f"{status} {', '.join(_names(schema))}".strip()
                (errors if int(status) >= 400 else replies).append(named if int(status) < 400 else status)
            cells = (
                f"<code>{method.upper()}</code>",
                "<code>{}</code>".format(html.escape(path).replace("{", "&#123;").replace("}", "&#125;")),
                html.escape(operation.get("summary", "")),
                html.escape(", ".join(scopes) or "open"),
                html.escape(", ".join(bodies) + (f" (query: {', '.join(query)})" if query else "")),
                html.escape("; ".join(replies)),
                html.escape(", ".join(errors)),
            )
            rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    info = document["info"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>{title} API</title><style>"
        "body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}"
        "td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}</style></head><body>"
        "<h1>{title} API {version}</h1><p>{description}. Machine-readable: <a href='/openapi.json'>/openapi.json</a>"
        " (OpenAPI {openapi}); models are its components. Authentication: <code>Authorization: Bearer"
        " &lt;key&gt;</code> with the scope shown.</p><table><tr><th>method</th><th>path</th><th>what</th>"
        "<th>scope</th><th>request</th><th>replies</th><th>errors</th></tr>{rows}</table></body></html>"
    ).format(
        title=html.escape(info["title"]),
        version=html.escape(info["version"]),
        description=html.escape(info.get("description", "")),
        openapi=html.escape(document["openapi"]),
        rows="".join(rows),
    )
