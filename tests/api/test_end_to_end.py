"""Issue 2's acceptance path: a ruleset over HTTP, events in JSON and msgpack, actions and tags out."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import redis.asyncio as aioredis

from cep import streams
from cep.outbox import outbox_key
from tests.harness import Beacon, eventually, running_beacon, server_settings

BIG_SPEND: dict[str, Any] = {
    "id": "big-spend",
    "description": "paid >= 1000 at store S1 -> coupon and tag",
    "rules": [
        {
            "id": "paid-1000-s1",
            "when": {
                "event": "pay",
                "where": {
                    "all": [
                        {"field": "amount", "op": ">=", "value": 1000},
                        {"field": "store", "op": "==", "value": "S1"},
                    ]
                },
            },
            "then": [
                {"action": "coupon", "coupon_id": "C-1000"},
                {"action": "tag", "add": ["big_spender"]},
            ],
        }
    ],
}

CHAINED: dict[str, Any] = {
    "id": "welcome-big-spender",
    "rules": [
        {
            "id": "on-big-spender-tag",
            "when": {"event": "tag_added", "where": {"field": "tag", "op": "==", "value": "big_spender"}},
            "then": [{"action": "message", "channel": "sms", "template": "vip_welcome"}],
        }
    ],
}


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> Any:
    async with running_beacon(server_settings(redis_url)) as running:
        yield running


async def settled(redis_client: aioredis.Redis) -> None:
    """Wait until the workers have acknowledged every stream entry (chained events included)."""
    lag = await eventually(lambda: streams.backlog(redis_client, 2), lambda backlog: backlog == 0)
    assert lag == 0


def pay(user: str, amount: float, store: str = "S1", event_id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"user_id": user, "type": "pay", "attrs": {"amount": amount, "store": store}}
    if event_id:
        event["event_id"] = event_id
    return event


async def test_paid_at_store_fires_coupon_tag_and_chained_message(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    assert await beacon.put_ruleset(BIG_SPEND) == 1
    assert await beacon.put_ruleset(CHAINED) == 1

    status, body = await beacon.post_events(
        [pay("alice", 1000), pay("bob", 999), pay("carol", 5000, store="S2"), {"user_id": "dan", "type": "view"}]
    )
    assert status == 200 and len(body["accepted"]) == 4 and body["errors"] == []
    status, body = await beacon.post_events([pay("erin", 1200.5)], msgpack_body=True)
    assert status == 200 and len(body["accepted"]) == 1

    alice = await beacon.wait_actions("alice", 3, timeout_s=1.0)
    assert sorted(action["type"] for action in alice) == ["coupon", "message", "tag"]
    coupon = next(action for action in alice if action["type"] == "coupon")
    assert coupon["params"] == {"coupon_id": "C-1000"}
    assert coupon["status"] == "pending" and coupon["ruleset_id"] == "big-spend" and coupon["rule_id"] == "paid-1000-s1"
    assert coupon["created_at"] - coupon["received_ms"] < 1000
    message = next(action for action in alice if action["type"] == "message")
    assert message["ruleset_id"] == "welcome-big-spender" and message["params"]["template"] == "vip_welcome"

    erin = await beacon.wait_actions("erin", 3, timeout_s=1.0)
    assert sorted(action["type"] for action in erin) == ["coupon", "message", "tag"]

    await settled(redis_client)
    for user in ("bob", "carol", "dan"):
        assert await beacon.actions(user) == [], user
    status, profile = await beacon.call("GET", "/v1/users/alice")
    assert status == 200 and profile["tags"] == ["big_spender"]
    status, profile = await beacon.call("GET", "/v1/users/bob")
    assert profile["tags"] == []

    by_rule = await beacon.actions(rule="paid-1000-s1")
    assert sorted({action["user_id"] for action in by_rule}) == ["alice", "erin"]


async def test_pending_actions_reach_the_outbox_once(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    await beacon.put_ruleset(BIG_SPEND)
    await beacon.post_events([pay("u1", 1500, event_id="e-1")])
    await beacon.wait_actions("u1", 2)
    # The same event again (a producer retry): no new action, no second outbox entry.
    await beacon.post_events([pay("u1", 1500, event_id="e-1")])
    await settled(redis_client)
    assert len(await beacon.actions("u1")) == 2
    outbox_entries = sum([await redis_client.xlen(outbox_key(p)) for p in range(2)])
    assert outbox_entries == 1  # the coupon; the tag applies to the profile, not the outbox


async def test_replacing_a_ruleset_changes_what_fires_without_restart(
    beacon: Beacon, redis_client: aioredis.Redis
) -> None:
    await beacon.put_ruleset(BIG_SPEND)
    stricter = copy.deepcopy(BIG_SPEND)
    stricter["rules"][0]["when"]["where"]["all"][0]["value"] = 2000
    stricter["rules"][0]["then"] = [{"action": "coupon", "coupon_id": "C-2000"}]
    assert await beacon.put_ruleset(stricter) == 2

    await beacon.post_events([pay("frank", 1500), pay("gina", 2500)])
    gina = await beacon.wait_actions("gina", 1)
    assert [(a["params"]["coupon_id"], a["ruleset_version"]) for a in gina] == [("C-2000", 2)]
    await settled(redis_client)
    assert await beacon.actions("frank") == []

    status, _ = await beacon.call("DELETE", "/v1/rulesets/big-spend")
    assert status == 200
    await beacon.post_events([pay("hank", 5000)])
    await settled(redis_client)
    assert await beacon.actions("hank") == []


async def test_profile_conditions_gate_the_rule(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    ruleset = {
        "id": "vip-pay",
        "rules": [
            {
                "id": "vip-in-sh",
                "when": {"event": "pay"},
                "if": {"all": [{"tag": "vip"}, {"profile": "region", "op": "in", "value": ["SH", "BJ"]}]},
                "then": [{"action": "points", "amount": 100}],
            }
        ],
    }
    await beacon.put_ruleset(ruleset)
    status, _ = await beacon.call("PATCH", "/v1/users/ivy", json={"attrs": {"region": "SH"}, "add_tags": ["vip"]})
    assert status == 200
    await beacon.call("PATCH", "/v1/users/jack", json={"attrs": {"region": "GZ"}, "add_tags": ["vip"]})
    await beacon.call("PATCH", "/v1/users/kim", json={"attrs": {"region": "BJ"}})
    await beacon.post_events([pay("ivy", 1), pay("jack", 1), pay("kim", 1)])
    assert [a["type"] for a in await beacon.wait_actions("ivy", 1)] == ["points"]
    await settled(redis_client)
    assert await beacon.actions("jack") == [] and await beacon.actions("kim") == []
