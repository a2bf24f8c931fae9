"""The OpenAPI document and the /docs page describe every route the app serves."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import pytest
import redis.asyncio as aioredis
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestServer

from api.app import build_app
from api.openapi import OPENAPI, docs_page
from api.wire.routes import ROUTES
from beacon.settings import Settings
from cep.identities import ALIAS_TYPES
from tests.harness import Beacon, running_beacon, server_settings
from tests.wire_check import watch

COUPON = {"action": "coupon", "coupon_id": "C-1"}


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    async with running_beacon(server_settings(redis_url)) as running:
        yield running


def app_routes() -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every route of the app, `{name:regex}` placeholders as `{name}`."""
    app = build_app(Settings(redis_url="redis://127.0.0.1:1"))
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method in ("HEAD", "*"):
            continue
        found.add((re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", path), route.method.lower()))
    return found


def test_every_route_is_in_the_openapi_document() -> None:
    documented = {
        (path, method) for path, item in OPENAPI["paths"].items() for method in item if method != "parameters"
    }
    missing = app_routes() - documented
    assert not missing, f"routes missing from the route table (api/wire/routes.py): {sorted(missing)}"
    stale = documented - app_routes()
    assert not stale, f"documented routes the app does not serve: {sorted(stale)}"


async def test_the_docs_page_lists_every_path(beacon: Beacon) -> None:
    async with beacon.session.get(beacon.url("/docs")) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    for path in OPENAPI["paths"]:
        assert path.replace("{", "&#123;").replace("}", "&#125;") in page or path in page, path


def refs_in(node: Any) -> list[str]:
    """Every `$ref` inside a JSON value."""
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [ref for value in node.values() for ref in refs_in(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in refs_in(item)]
    return []


def test_the_document_resolves_and_its_schemas_are_valid() -> None:
    schemas = OPENAPI["components"]["schemas"]
    missing = {ref for ref in refs_in(OPENAPI) if ref.removeprefix("#/components/schemas/") not in schemas}
    assert not missing, missing
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    loaded = schemathesis.openapi.from_dict(OPENAPI)
    operations = [result.ok() for result in loaded.get_all_operations()]
    assert len(operations) == len(ROUTES)


def test_every_json_route_names_its_request_and_reply_models() -> None:
    for route in ROUTES:
        operation = OPENAPI["paths"][route.path][route.method]
        for status, reply in operation["responses"].items():
            if "content" in reply and "application/json" in reply["content"] and route.path != "/openapi.json":
                assert "$ref" in reply["content"]["application/json"]["schema"], (route.path, route.method, status)
        if route.method in ("put", "patch") or route.body:
            assert "requestBody" in operation, (route.path, route.method)
        assert operation["responses"].keys() >= {str(status) for status in route.statuses()}


def test_the_docs_page_shows_each_routes_models_and_errors() -> None:
    page = docs_page(OPENAPI)
    row = next(line for line in page.split("<tr>") if "/v1/events</code>" in line)
    assert "Event, EventsBatch" in row and "200 Accepted" in row and "422" in row and "events" in row


def test_alias_types_in_the_document_are_the_engines() -> None:
    parameters = OPENAPI["paths"]["/v1/identities/{type}/{id}"]["get"]["parameters"]
    assert next(p for p in parameters if p["name"] == "type")["schema"]["enum"] == list(ALIAS_TYPES)
    assert OPENAPI["components"]["schemas"]["Alias"]["properties"]["type"]["enum"] == sorted(ALIAS_TYPES)


async def test_the_wire_check_reports_a_reply_that_drifted_from_its_model() -> None:
    """The check the tests' servers run can fail: a handler sending a field its model lacks, and a body its
    model refuses, are both reported (here by an app whose handlers drifted on purpose)."""

    async def drifted_list(request: web.Request) -> web.Response:
        return web.json_response({"rulesets": [], "next_page": "x"})

    async def lenient_patch(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"user_id": "u", "attrs": {}, "tags": []})

    app = web.Application()
    app.router.add_get("/v1/rulesets", drifted_list)
    app.router.add_patch("/v1/users/{user_id}", lenient_patch)
    problems = watch(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url("/v1/rulesets")) as response:
                assert response.status == 200
            async with session.patch(server.make_url("/v1/users/u"), json={"tags": ["x"]}) as response:
                assert response.status == 200
    finally:
        await server.close()
    assert any("unknown field `next_page`" in problem for problem in problems), problems
    assert any("ProfilePatch" in problem and "`tags`" in problem for problem in problems), problems


async def test_the_routes_other_tests_leave_alone_answer_their_models(beacon: Beacon) -> None:
    """Item indexes listed, read and dropped; a plan validated: the wire check holds these replies too."""
    index = {"events": ["add_to_cart"], "window": "30d"}
    status, body = await beacon.call("PUT", "/v1/items/indexes/sku", json=index)
    assert status == 200, body
    status, body = await beacon.call("GET", "/v1/items/indexes")
    assert status == 200 and body["indexes"][0]["attr"] == "sku", body
    status, body = await beacon.call("GET", "/v1/items/indexes/sku", params={"version": "1"})
    assert status == 200 and body["document"]["window"] == "30d", body
    status, body = await beacon.call("DELETE", "/v1/items/indexes/sku")
    assert status == 200 and body == {"attr": "sku", "deleted": True}
    status, body = await beacon.call("PUT", "/v1/audiences/vips", json={"ids": ["u1", "u2"]})
    assert status == 200, body
    plan = {"id": "weekly", "audience": "aud:vips", "schedule": {"cron": "0 10 * * 1"}, "then": [COUPON]}
    status, body = await beacon.call("POST", "/v1/plans:validate", json=plan)
    assert status == 200 and body["valid"] is True and body["next_occurrence"]["id"], body
