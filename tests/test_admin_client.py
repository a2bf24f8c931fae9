"""The admin client against a real server: rulesets, journeys, segments, users, actions, dead letters, errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from beacon.admin_client import BeaconAdmin, BeaconAPIError
from tests.harness import Beacon, running_beacon, server_settings

LIBRARY = Path(__file__).resolve().parent.parent / "rules" / "library"
TS = 1_700_000_000_000
KEYS = {"k-all": frozenset({"rules", "events", "admin"}), "k-events": frozenset({"events"})}


def library(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((LIBRARY / name).read_text())
    return document


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    async with running_beacon(server_settings(redis_url, api_keys=KEYS), api_key="k-all") as running:
        yield running


@pytest.fixture
async def admin(beacon: Beacon) -> AsyncIterator[BeaconAdmin]:
    async with BeaconAdmin(beacon.url("/"), api_key="k-all") as client:
        yield client


async def test_ruleset_round_trip(admin: BeaconAdmin) -> None:
    document = library("welcome-on-follow.json")
    assert (await admin.validate_ruleset(document))["valid"] is True
    assert await admin.put_ruleset(document) == {"id": "welcome-on-follow", "version": 1, "rules": 1}
    assert (await admin.put_ruleset(document))["version"] == 2
    stored = await admin.get_ruleset("welcome-on-follow", version=1)
    assert stored["document"]["rules"] == document["rules"]
    assert [item["id"] for item in await admin.list_rulesets()] == ["welcome-on-follow"]
    dry = await admin.dry_run_ruleset("welcome-on-follow", [{"user_id": "u1", "type": "follow", "ts": TS}])
    assert [firing["rule_id"] for firing in dry["firings"]] == ["follow-journey"]
    await admin.delete_ruleset("welcome-on-follow")
    assert await admin.list_rulesets() == []
    with pytest.raises(BeaconAPIError) as missing:
        await admin.get_ruleset("welcome-on-follow")
    assert missing.value.status == 404


async def test_invalid_ruleset_raises_with_the_servers_path(admin: BeaconAdmin) -> None:
    document = library("welcome-on-follow.json")
    document["rules"][0]["then"][0]["action"] = "teleport"
    for call in (admin.validate_ruleset(document), admin.put_ruleset(document)):
        with pytest.raises(BeaconAPIError) as refused:
            await call
        error = refused.value
        assert error.status == 422
        assert error.path is not None and error.path.startswith("rules[0].then[0]")
        assert error.code and error.message
        assert f"HTTP 422 {error.code}: {error.path}: " in str(error)


async def test_journey_round_trip(admin: BeaconAdmin) -> None:
    document = library("journeys/new-fan.json")
    assert (await admin.put_journey(document))["id"] == "new-fan"
    assert (await admin.get_journey("new-fan"))["document"]["start"] == "welcome"
    assert [item["id"] for item in await admin.list_journeys()] == ["new-fan"]
    assert (await admin.journey_stats("new-fan"))["id"] == "new-fan"
    dry = await admin.dry_run_journey("new-fan", [{"user_id": "u1", "type": "follow", "ts": TS}])
    assert dry["journey_id"] == "new-fan"
    await admin.delete_journey("new-fan")
    assert await admin.list_journeys() == []


async def test_lists_follow_the_servers_pages_to_the_end(admin: BeaconAdmin) -> None:
    """The server answers a page at a time: a list call still returns every document, in id order."""
    document = library("welcome-on-follow.json")
    ids = [f"welcome-{n}" for n in range(5)]
    for item in reversed(ids):
        await admin.put_ruleset({**document, "id": item})
    assert [item["id"] for item in await admin.list_rulesets(page_size=2)] == ids
    assert [item["id"] for item in await admin.list_rulesets()] == ids


async def test_segment_round_trip_members_and_estimate(admin: BeaconAdmin) -> None:
    document = library("segments/new-fans-no-order.json")
    assert await admin.put_segment(document) == {"id": "new-fans-no-order", "version": 1}
    stored = await admin.get_segment("new-fans-no-order")
    assert stored["document"]["where"] == document["where"] and "size" in stored
    assert [item["id"] for item in await admin.list_segments()] == ["new-fans-no-order"]
    members = [member async for member in admin.segment_members("new-fans-no-order", page_size=10)]
    assert members == []  # a new segment starts empty
    estimate = await admin.estimate_segment(document["where"])
    assert estimate["estimate"] == 0 and estimate["exact"] is True
    await admin.delete_segment("new-fans-no-order")
    assert await admin.list_segments() == []


async def test_user_patch_get_trace_and_actions(admin: BeaconAdmin, beacon: Beacon) -> None:
    patched = await admin.patch_user("u 1/é", attrs={"region": "SH"}, add_tags=["vip"])
    assert patched["attrs"] == {"region": "SH"} and patched["tags"] == ["vip"]
    user = await admin.get_user("u 1/é")
    assert user["attrs"] == {"region": "SH"} and user["tags"] == ["vip"]
    await admin.patch_user("u 1/é", attrs={"region": None}, remove_tags=["vip"])
    assert (await admin.get_user("u 1/é"))["attrs"] == {}
    assert isinstance((await admin.user_trace("u 1/é", limit=5))["trace"], list)
    assert await admin.list_actions(user_id="u 1/é") == []
    assert await admin.list_dead_letters(limit=10) == []
    assert (await admin.replay_dead_letters(all=True))["unknown"] == []


async def test_bearer_key_and_scopes(beacon: Beacon) -> None:
    async with BeaconAdmin(beacon.url(""), api_key="k-events") as events_only:
        assert await events_only.list_actions() == []
        with pytest.raises(BeaconAPIError) as forbidden:
            await events_only.list_rulesets()
        assert forbidden.value.status == 403
    async with BeaconAdmin(beacon.url("")) as anonymous:
        with pytest.raises(BeaconAPIError) as unauthorized:
            await anonymous.get_user("u1")
        assert unauthorized.value.status == 401
