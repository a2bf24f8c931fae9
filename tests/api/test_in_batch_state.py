"""Everything a user's events change is visible to that user's next event, even inside one request.

Regressions of engine v1: a tag added by one event was invisible to the `if` of the next event of the
same request, a `tag_added` whose cause shared a batch with later events was dropped as late, two
rules flipping tags looped for ever, and a profile PATCH raced the events around it.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from beacon import metrics
from cep.layout import LAYOUT_KEY
from tests.api.test_end_to_end import settled
from tests.harness import Beacon, running_beacon, server_settings

T0 = 1_767_225_600_000
HOUR = 3_600_000


def event(user: str, kind: str, ts: int, event_id: str, **attrs: Any) -> dict[str, Any]:
    return {"user_id": user, "type": kind, "ts": ts, "event_id": event_id, "attrs": attrs}


VIP_FLOW: dict[str, Any] = {
    "id": "vip-flow",
    "rules": [
        {
            "id": "big-pay-makes-vip",
            "when": {"event": "pay", "where": {"field": "amount", "op": ">=", "value": 1000}},
            "then": [{"action": "tag", "add": ["vip"]}],
        },
        {
            "id": "vip-view-coupon",
            "when": {"event": "view"},
            "if": {"tag": "vip"},
            "then": [{"action": "coupon", "coupon_id": "C-VIP"}],
        },
        {
            # A windowed rule on the chained event: with lateness 0, a tag_added processed after the
            # later view (engine v1) was late by an hour.
            "id": "vip-then-view",
            "when": {"sequence": {"first": {"event": "tag_added"}, "then": {"event": "view"}, "within": "2h"}},
            "lateness": "0s",
            "then": [{"action": "points", "amount": 10}],
        },
    ],
}


async def fired(beacon: Beacon, user: str) -> list[tuple[str, str]]:
    return sorted((action["rule_id"], action["trigger_id"]) for action in await beacon.actions(user))


async def test_a_tag_is_visible_to_the_next_event_of_the_same_request(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    async with running_beacon(server_settings(redis_url)) as beacon:
        await beacon.put_ruleset(VIP_FLOW)
        status, body = await beacon.post_events(
            [
                event("ann", "view", T0, "v0"),  # before the tag: no coupon
                event("ann", "pay", T0 + 1, "p1", amount=1500),
                event("ann", "view", T0 + HOUR, "v1"),  # the tag from p1, an hour later in event time
            ]
        )
        assert status == 200, body
        await settled(redis_client)
        assert await fired(beacon, "ann") == [
            ("big-pay-makes-vip", "p1"),
            ("vip-then-view", "v1"),
            ("vip-view-coupon", "v1"),
        ]
        _, profile = await beacon.call("GET", "/v1/users/ann")
        assert profile["tags"] == ["vip"]


PING_PONG: dict[str, Any] = {
    "id": "ping-pong",
    "rules": [
        {
            "id": "ping",
            "when": {"event": "tag_added", "where": {"field": "tag", "op": "==", "value": "a"}},
            "then": [{"action": "tag", "add": ["b"], "remove": ["a"]}],
        },
        {
            "id": "pong",
            "when": {"event": "tag_added", "where": {"field": "tag", "op": "==", "value": "b"}},
            "then": [{"action": "tag", "add": ["a"], "remove": ["b"]}],
        },
        {
            "id": "start",
            "when": {"event": "signup"},
            "then": [{"action": "tag", "add": ["a"]}],
        },
    ],
}


async def test_two_rules_flipping_tags_stop_at_the_hop_limit(redis_url: str, redis_client: aioredis.Redis) -> None:
    before = metrics.REGISTRY.get_sample_value("beacon_events_hop_limited_total") or 0
    async with running_beacon(server_settings(redis_url)) as beacon:
        await beacon.put_ruleset(PING_PONG)
        await beacon.post_events([event("bob", "signup", T0, "s1"), event("bob", "view", T0 + 1, "after")])
        await settled(redis_client)
        actions = await beacon.actions("bob")
        # start, then 8 hops of ping/pong; the 9th hop's events (a tag_added and a tag_removed) are
        # dropped and counted.
        assert len(actions) == 1 + 8
        after = metrics.REGISTRY.get_sample_value("beacon_events_hop_limited_total") or 0
        assert after - before == 2
    status, body = await beacon_dry_run(redis_url, PING_PONG)
    assert status == 200 and len(body["firings"]) == 9, body


async def beacon_dry_run(redis_url: str, document: dict[str, Any]) -> tuple[int, Any]:
    async with running_beacon(server_settings(redis_url, run_workers=False)) as beacon:
        payload = {"document": document, "events": [event("bob", "signup", T0, "s1")]}
        return await beacon.call("POST", f"/v1/rulesets/{document['id']}:dry-run", json=payload)


async def test_a_profile_patch_applies_between_the_events_around_it(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    gated = {
        "id": "gated",
        "rules": [
            {
                "id": "gold-view",
                "when": {"event": "view"},
                "if": {"profile": "level", "op": "==", "value": "gold"},
                "then": [{"action": "coupon", "coupon_id": "C-GOLD"}],
            }
        ],
    }
    async with running_beacon(server_settings(redis_url)) as beacon:
        await beacon.put_ruleset(gated)
        await beacon.post_events([event("cid", "view", T0, "before")])
        status, body = await beacon.call("PATCH", "/v1/users/cid", json={"attrs": {"level": "gold"}})
        assert status == 200 and body["attrs"] == {"level": "gold"}, body
        await beacon.post_events([event("cid", "view", T0 + 1, "after")])
        await settled(redis_client)
        assert await fired(beacon, "cid") == [("gold-view", "after")]


async def test_a_changed_partition_count_is_refused(redis_url: str, redis_client: aioredis.Redis) -> None:
    async with running_beacon(server_settings(redis_url, partitions=2)):
        assert await redis_client.get(LAYOUT_KEY) is not None
    try:
        async with running_beacon(server_settings(redis_url, partitions=3)):
            raise AssertionError("a server with another partition count started")
    except Exception as exc:  # the app's start-up fails with the layout error
        assert "BEACON_PARTITIONS=2" in str(exc), exc
