"""`GET /v1/dead-letters` and `POST /v1/dead-letters:replay` over a real socket, with `GET /v1/actions`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from api import routes_dead_letters
from api.app import build_app
from beacon.clock import ManualClock
from tests.connectors.kit import fast_settings, put_actions, record, running_connectors, wait_status
from tests.connectors.providers import FakeMerchant
from tests.harness import Beacon, server_settings

ADMIN, EVENTS = "admin-key", "events-key"


@pytest.fixture
async def beacon(redis_url: str, clock: ManualClock) -> AsyncIterator[Beacon]:
    settings = server_settings(
        redis_url, api_keys={ADMIN: frozenset({"rules", "events", "admin"}), EVENTS: frozenset({"events"})}
    )
    app = build_app(settings, clock)
    if not any(getattr(r, "canonical", "") == "/v1/dead-letters" for r in app.router.resources()):
        routes_dead_letters.add_routes(app)  # until api/app.py registers it
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Beacon(server, session, {"Authorization": f"Bearer {ADMIN}"})
    await server.close()


async def test_list_and_replay_dead_letters(
    beacon: Beacon, redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    merchant.script.append("400")
    coupon = record("dl-user", "coupon", {"coupon_id": "C-9"}, clock.now_ms())
    async with running_connectors(redis_client, fast_settings(merchant), clock):
        await put_actions(redis_client, [coupon])
        await wait_status(redis_client, coupon, {"dead"})

        status, body = await beacon.call("GET", "/v1/dead-letters")
        assert status == 200, body
        (letter,) = body["dead_letters"]
        assert letter["action_id"] == coupon["action_id"] and letter["connector"] == "coupon"
        assert letter["reason"] == "http_4xx" and letter["action"]["status"] == "dead"
        status, body = await beacon.call("GET", "/v1/dead-letters", params={"connector": "sms"})
        assert body["dead_letters"] == []

        status, body = await beacon.call("POST", "/v1/dead-letters:replay", json={"ids": [letter["id"], "1-0"]})
        assert status == 200, body
        assert body == {"replayed": [coupon["action_id"]], "refused": [], "unknown": ["1-0"]}
        await wait_status(redis_client, coupon, {"delivered"})

        actions = await beacon.actions("dl-user")
        assert [(a["action_id"], a["status"], a["replays"]) for a in actions] == [(coupon["action_id"], "delivered", 1)]
        status, body = await beacon.call("POST", "/v1/dead-letters:replay", json={"all": True})
        assert status == 200 and body["replayed"] == []
    assert [r.headers["Idempotency-Key"] for r in merchant.requests] == [coupon["idempotency_key"]] * 2


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({}, "body"),
        ({"ids": "1-0"}, "ids"),
        ({"ids": ["not-an-id"]}, "ids"),
        ({"all": True, "connector": 7}, "connector"),
        ({"all": True, "limit": 0}, "limit"),
        ([], "body"),
    ],
)
async def test_bad_replay_requests_are_422(beacon: Beacon, payload: Any, path: str) -> None:
    status, body = await beacon.call("POST", "/v1/dead-letters:replay", json=payload)
    assert status == 422, body
    assert body["error"]["path"] == path


async def test_dead_letters_need_the_admin_scope(beacon: Beacon) -> None:
    status, body = await beacon.call("GET", "/v1/dead-letters", headers={"Authorization": f"Bearer {EVENTS}"})
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await beacon.call("GET", "/v1/dead-letters", params={"limit": "0"})
    assert status == 422 and body["error"]["path"] == "limit"
    status, body = await beacon.call(
        "POST", "/v1/dead-letters:replay", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and body["error"]["path"] == "body"
