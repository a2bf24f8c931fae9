"""Live segment membership through the real server on a real Redis (single and cluster), on a manual clock:
membership flips on events, on profile patches and at the exact moment a behaviour window changes, with
no event arriving; sizes and member lists follow; rules and journeys act on `segment_entered` /
`segment_exited`."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from beacon.clock import ManualClock
from tests.harness import Beacon
from tests.scenarios.journeys_kit import put_journey
from tests.scenarios.test_seed_scenarios import MINUTE, T0, advance, event, settled

HOUR = 60 * MINUTE
ACTIVE = {
    "id": "active-viewer",
    "description": "viewed at least twice in the last hour",
    "where": {"did": {"event": "view"}, "within": "1h", "count": {"op": ">=", "value": 2}},
}
VIP = {"id": "vip", "where": {"tag": "vip"}}
ON_SEGMENTS = {
    "id": "on-segments",
    "rules": [
        {
            "id": "left-active",
            "when": {"event": "segment_exited", "where": {"field": "segment", "op": "==", "value": "active-viewer"}},
            "then": [{"action": "message", "channel": "sms", "template": "come_back"}],
        }
    ],
}


async def put_segment(beacon: Beacon, document: dict[str, Any]) -> None:
    status, body = await beacon.call("PUT", f"/v1/segments/{document['id']}", json=document)
    assert status == 200, body


async def size(beacon: Beacon, segment_id: str) -> int:
    status, body = await beacon.call("GET", f"/v1/segments/{segment_id}")
    assert status == 200, body
    return int(body["size"])


async def members(beacon: Beacon, segment_id: str) -> list[str]:
    found: list[str] = []
    cursor = ""
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        status, body = await beacon.call("GET", f"/v1/segments/{segment_id}/members", params=params)
        assert status == 200, body
        found += body["members"]
        cursor = body["cursor"]
        if not cursor:
            return sorted(found)


async def test_membership_flips_when_the_window_expires_with_no_event(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await put_segment(beacon, ACTIVE)
    await beacon.put_ruleset(ON_SEGMENTS)
    await beacon.post_events(
        [
            event("a", "view", T0),
            event("a", "view", T0 + 10 * MINUTE),
            event("b", "view", T0 + 5 * MINUTE),
            event("c", "view", T0 + 20 * MINUTE),
            event("c", "view", T0 + 30 * MINUTE),
            event("c", "view", T0 + 40 * MINUTE),
        ]
    )
    await settled(redis_client)
    assert (await size(beacon, "active-viewer"), await members(beacon, "active-viewer")) == (2, ["a", "c"])
    # a's first view leaves the window [t - 1h, t] at T0 + 1h + 1 ms: a is out then, not a millisecond before.
    await advance(beacon, redis_client, clock, T0 + HOUR)
    assert await members(beacon, "active-viewer") == ["a", "c"]
    await advance(beacon, redis_client, clock, T0 + HOUR + 1)
    assert (await size(beacon, "active-viewer"), await members(beacon, "active-viewer")) == (1, ["c"])
    [come_back] = await beacon.actions("a")
    assert (come_back["rule_id"], come_back["event_ts"]) == ("left-active", T0 + HOUR + 1)
    # c keeps two views in the window until its second one leaves (T0 + 30 min + 1 h + 1 ms).
    await advance(beacon, redis_client, clock, T0 + 30 * MINUTE + HOUR)
    assert await members(beacon, "active-viewer") == ["c"]
    await advance(beacon, redis_client, clock, T0 + 30 * MINUTE + HOUR + 1)
    assert (await size(beacon, "active-viewer"), await members(beacon, "active-viewer")) == (0, [])
    assert [a["rule_id"] for a in await beacon.actions("c")] == ["left-active"]
    assert await beacon.actions("b") == []  # never a member: never left
    # A new view brings c back at once (views at 40 min and now, within the hour).
    clock.set(T0 + 90 * MINUTE)
    await beacon.post_events([event("c", "view", T0 + 90 * MINUTE)])
    await settled(redis_client)
    assert await members(beacon, "active-viewer") == ["c"]


async def test_a_tag_patch_enters_a_segment_and_a_journey_starts_on_it(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await put_segment(beacon, VIP)
    await put_journey(
        beacon,
        {
            "id": "vip-welcome",
            "entry": {"segment": "vip"},
            "reentry": {"policy": "once"},
            "start": "gift",
            "nodes": {"gift": {"do": [{"action": "coupon", "coupon_id": "VIP-GIFT"}]}},
        },
    )
    status, _ = await beacon.call("PATCH", "/v1/users/u1", json={"add_tags": ["vip"]})
    assert status == 200
    await settled(redis_client)
    assert await members(beacon, "vip") == ["u1"]
    [gift] = await beacon.actions("u1")
    assert (gift["journey_id"], gift["params"]) == ("vip-welcome", {"coupon_id": "VIP-GIFT"})
    status, body = await beacon.call("GET", "/v1/users/u1")
    assert status == 200 and list(body["segments"]) == ["vip"], body
    # A tag action of a rule changes membership too (tag_removed), in the same evaluation.
    await beacon.put_ruleset(
        {
            "id": "downgrade",
            "rules": [
                {"id": "refund-drops-vip", "when": {"event": "refund"}, "then": [{"action": "tag", "remove": ["vip"]}]}
            ],
        }
    )
    await beacon.post_events([event("u1", "refund", T0 + MINUTE)])
    await settled(redis_client)
    assert (await size(beacon, "vip"), await members(beacon, "vip")) == (0, [])
    # Back in: `once` keeps the journey from acting twice, membership comes back all the same.
    status, _ = await beacon.call("PATCH", "/v1/users/u1", json={"add_tags": ["vip"]})
    await settled(redis_client)
    assert await members(beacon, "vip") == ["u1"] and len(await beacon.actions("u1")) == 2  # gift + tag action


async def test_deleting_a_segment_forgets_its_members(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await put_segment(beacon, VIP)
    for user in ("u1", "u2"):
        await beacon.call("PATCH", f"/v1/users/{user}", json={"add_tags": ["vip"]})
    await settled(redis_client)
    assert await size(beacon, "vip") == 2
    status, _ = await beacon.call("DELETE", "/v1/segments/vip")
    assert status == 200
    await put_segment(beacon, VIP)  # a new segment of the same id starts empty
    assert (await size(beacon, "vip"), await members(beacon, "vip")) == (0, [])


BUYERS = {"id": "buyers", "where": {"did": {"event": "pay"}, "within": "30d"}}
REPEAT = {"id": "repeat", "where": {"did": {"event": "pay"}, "within": "30d", "count": {"op": ">=", "value": 2}}}
FANS = {
    "id": "fans-no-order",
    "where": {"all": [{"did": {"event": "follow"}, "within": "30d"}, {"did_not": {"event": "pay"}, "within": "30d"}]},
}
ON_ENTERED = {
    "id": "on-entered",
    "rules": [
        {
            "id": "welcome",
            "when": {"event": "segment_entered"},
            "then": [{"action": "message", "channel": "sms", "template": "hi"}],
        },
        {"id": "paid", "when": {"event": "pay"}, "then": [{"action": "points", "amount": 1}]},
    ],
}


async def test_backfill_fills_history_and_membership_silently(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    for document in (BUYERS, REPEAT, FANS):
        await put_segment(beacon, document)
    await beacon.put_ruleset(ON_ENTERED)
    day = 24 * HOUR
    history = [
        event("a", "pay", T0 - 10 * day, amount=5),
        event("b", "follow", T0 - 5 * day),
        event("c", "pay", T0 - 40 * day),  # older than every window: recorded, and never counts
        event("d", "view", T0 - day),  # no segment reads views: ignored
        {"user_id": "e", "ts": T0},  # no type: refused alone
    ]
    for _ in range(2):  # the same file twice: recorded once (ids from the content)
        status, body = await beacon.call("POST", "/v1/segments/buyers:backfill", json={"events": history})
        assert status == 200, body
        # Only the types this segment reads are taken (follow feeds another segment: backfill that one).
        assert (body["accepted"], body["ignored"], body["error_count"]) == (2, {"follow": 1, "view": 1}, 1), body
        assert body["errors"][0]["path"] == "events[4].type", body
    status, body = await beacon.call("POST", "/v1/segments/fans-no-order:backfill", json={"events": history[1:2]})
    assert (status, body["accepted"]) == (200, 1), body
    await settled(redis_client)
    assert await members(beacon, "buyers") == ["a"]
    assert await members(beacon, "repeat") == []  # the second feed was a duplicate, not a second payment
    assert await members(beacon, "fans-no-order") == ["b"]
    assert await beacon.actions() == []  # nothing acted on the past: no rule saw an event or an entry
    # The windows go on live: a's payment leaves the 30-day window at T0 - 10d + 30d + 1 ms, with no event.
    await advance(beacon, redis_client, clock, T0 + 20 * day)
    assert await members(beacon, "buyers") == ["a"]
    await advance(beacon, redis_client, clock, T0 + 20 * day + 1)
    assert await members(beacon, "buyers") == []
    # And live events count together with the backfilled ones.
    await beacon.post_events([event("b", "pay", T0 + 21 * day)])
    await settled(redis_client)
    assert await members(beacon, "fans-no-order") == []
    assert sorted(a["rule_id"] for a in await beacon.actions("b")) == ["paid", "welcome"]


async def test_backfill_does_not_count_again_what_live_history_holds(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    """Regression: a backfilled event the behaviour history already held, processed live once the segment
    existed, was kept twice: one payment made a repeat buyer (a backfill window overlapping live history)."""
    await put_segment(beacon, REPEAT)
    paid = event("a", "pay", T0 - HOUR, amount=5)
    assert (await beacon.post_events([{**paid, "event_id": "live-pay"}]))[0] == 200
    await settled(redis_client)
    status, body = await beacon.call("POST", "/v1/segments/repeat:backfill", json={"events": [paid]})
    assert (status, body["accepted"]) == (200, 1), body
    await settled(redis_client)
    assert await members(beacon, "repeat") == []
    # A payment the history does not hold counts: the second one.
    earlier = event("a", "pay", T0 - 2 * HOUR, amount=5)
    status, body = await beacon.call("POST", "/v1/segments/repeat:backfill", json={"events": [earlier]})
    assert (status, body["accepted"]) == (200, 1), body
    await settled(redis_client)
    assert await members(beacon, "repeat") == ["a"]


async def test_backfill_refuses_bad_calls(beacon: Beacon, clock: ManualClock) -> None:
    status, body = await beacon.call("POST", "/v1/segments/nope:backfill", json={"events": [event("a", "pay", T0)]})
    assert status == 404, body
    await put_segment(beacon, BUYERS)
    for payload, path in (({"events": []}, "events"), ({"events": "x"}, "events"), ({"evts": []}, "evts")):
        status, body = await beacon.call("POST", "/v1/segments/buyers:backfill", json=payload)
        assert (status, body["error"]["path"]) == (422, path), body
