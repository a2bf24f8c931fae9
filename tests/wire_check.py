"""Holds the API to its route table (`api.wire.routes`) while the tests run: a middleware on the tests' servers
checks each request body and query a handler accepted (2xx) against the route's request model, and each JSON
reply against the reply model of its status, with every error status declared. Mismatches are collected and
the harness fails the test that produced them (`tests.harness.running_beacon`), so the OpenAPI document,
generated from the same table, cannot drift from what the handlers take and send."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
import msgpack
import msgspec
from aiohttp import web

from api.bodies import MSGPACK_TYPES
from api.wire import common, languages
from api.wire.route_spec import Route
from api.wire.routes import route_table

WIRE_PROBLEMS = web.AppKey("wire_problems", list[str])
Handler = Any


@functools.cache
def _language_validators() -> dict[str, jsonschema.protocols.Validator]:
    return {name: jsonschema.Draft202012Validator(schema) for name, schema in languages.language_schemas().items()}


def _route(request: web.Request) -> Route | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return route_table().get((resource.canonical, request.method.lower()))


def _decode_as(raw: bytes, media: str, model: Any) -> Any:
    if media in MSGPACK_TYPES:
        return msgspec.msgpack.decode(raw, type=model, strict=True)
    return msgspec.json.decode(raw, type=model, strict=True)


def body_problem(route: Route, raw: bytes, media: str) -> str | None:
    """Why a body the handler accepted fits none of the route's body shapes (None: it fits one)."""
    reasons = []
    for shape in route.body:
        if isinstance(shape, str):
            document = msgpack.unpackb(raw, raw=False) if media in MSGPACK_TYPES else json.loads(raw)
            errors = sorted(_language_validators()[shape].iter_errors(document), key=lambda e: e.json_path)
            if not errors:
                return None
            reasons.append(f"{shape}: {errors[0].json_path}: {errors[0].message[:300]}")
            continue
        try:
            _decode_as(raw, media, shape)
            return None
        except msgspec.ValidationError as exc:
            reasons.append(f"{shape.__name__}: {exc}")
    return "; ".join(reasons)


def query_problem(route: Route, request: web.Request) -> str | None:
    """Why an accepted query string does not fit the route's query model."""
    if route.query is None:
        return None
    lists = {
        field.encode_name
        for field in msgspec.structs.fields(route.query)
        if str(field.type).startswith("list") or "list[" in str(field.type)
    }
    values = {key: request.query.getall(key) if key in lists else request.query.getone(key) for key in request.query}
    try:
        msgspec.convert(values, type=route.query, strict=False)
    except msgspec.ValidationError as exc:
        return f"query {dict(request.query)}: {exc}"
    return None


def reply_problem(route: Route, status: int, response: web.StreamResponse) -> str | None:
    """Why a reply does not fit the model of its status (or the status is not the route's)."""
    if status in route.replies:
        model = route.replies[status]
    elif status >= 400:
        if status not in route.statuses():
            return f"error status {status} is not declared"
        model = route.error_models.get(status, common.Error)
    else:
        return f"status {status} is not declared"
    if model is None or not isinstance(response, web.Response) or response.content_type != "application/json":
        return None
    try:
        msgspec.json.decode(response.body, type=model, strict=True)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        return f"{status} reply does not fit {model.__name__}: {exc}"
    return None


@web.middleware
async def wire_check_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: sees the final status and body (errors already mapped to JSON)."""
    response: web.StreamResponse = await handler(request)
    route = _route(request)
    if route is None or response.status == 101:
        return response
    problems = []
    if 200 <= response.status < 300:
        # aiohttp keeps the body a handler read with read()/json() here; streamed bodies (CSV, NDJSON) are not kept.
        raw = getattr(request, "_read_bytes", None)
        if raw and route.body and request.content_type not in route.text_media:
            problems.append(body_problem(route, raw, request.content_type))
        problems.append(query_problem(route, request))
    problems.append(reply_problem(route, response.status, response))
    found = [problem for problem in problems if problem]
    if found:
        where = f"{request.method} {route.path} -> {response.status}"
        recorded = request.app[WIRE_PROBLEMS]
        recorded.extend(
            f"{where}: {problem} (e.g. {request.path_qs})"
            for problem in found
            if not any(seen.startswith(f"{where}: {problem} (") for seen in recorded)  # once per kind
        )
    return response


def watch(app: web.Application) -> list[str]:
    """Check every request and reply of `app` (before it starts); returns the list the problems go to."""
    problems: list[str] = []
    app[WIRE_PROBLEMS] = problems
    app.middlewares.insert(0, wire_check_middleware)
    return problems
