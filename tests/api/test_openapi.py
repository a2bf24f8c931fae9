"""The OpenAPI document and the /docs page describe every route the app serves."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from api.app import build_app
from api.openapi import OPENAPI
from beacon.settings import Settings
from tests.harness import Beacon, running_beacon, server_settings


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
    assert not missing, f"routes missing from api/openapi.py: {sorted(missing)}"
    stale = documented - app_routes()
    assert not stale, f"documented routes the app does not serve: {sorted(stale)}"


async def test_the_docs_page_lists_every_path(beacon: Beacon) -> None:
    async with beacon.session.get(beacon.url("/docs")) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    for path in OPENAPI["paths"]:
        assert path.replace("{", "&#123;").replace("}", "&#125;") in page or path in page, path
