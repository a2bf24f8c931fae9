"""The seed scenarios of the temporal-pattern issue, driven through the real server with a manual clock."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from beacon.clock import ManualClock
from cep import streams, timers
from cep.outbox import outbox_key
from rules.schema import parse_ruleset
from tests.harness import Beacon, eventually
from tests.scenarios.library import library_names, library_ruleset

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000
DAY = 86_400_000
PARTITIONS = 2


async def settled(redis: aioredis.Redis, *, timers_due_by: int | None = None) -> None:
    """Wait until every stream entry is acknowledged (and, if asked, no timer due by then remains)."""

    async def probe() -> tuple[int, int]:
        due = 0
        if timers_due_by is not None:
            for partition in range(PARTITIONS):
                due += await redis.zcount(timers.timers_key(partition), "-inf", timers_due_by)
        return await streams.backlog(redis, PARTITIONS), due

    assert await eventually(probe, lambda state: state == (0, 0), timeout_s=10) == (0, 0)
    # A claimed timer becomes a stream entry; wait for that entry too.
    assert await eventually(lambda: streams.backlog(redis, PARTITIONS), lambda lag: lag == 0) == 0


async def advance(beacon: Beacon, redis: aioredis.Redis, clock: ManualClock, to_ms: int) -> None:
    """Move the server clock and wait for every timer due by then to be processed."""
    clock.set(to_ms)
    await settled(redis, timers_due_by=to_ms)


def event(user: str, kind: str, ts: int, **attrs: Any) -> dict[str, Any]:
    return {"user_id": user, "type": kind, "ts": ts, "attrs": attrs}


def kinds(actions: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((a["rule_id"], a["type"]) for a in actions)


def test_every_library_ruleset_validates() -> None:
    names = library_names()
    assert len(names) >= 8
    for name in names:
        document = library_ruleset(name)
        assert document["id"] == name
        assert document.get("description"), name
        parse_ruleset(document)


async def test_cart_without_pay_in_30_minutes_sends_one_sms(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await beacon.put_ruleset(library_ruleset("cart-recovery"))
    await beacon.post_events(
        [
            event("abandoner", "add_to_cart", T0, sku="S1"),
            event("payer", "add_to_cart", T0, sku="S1"),
            event("payer", "pay", T0 + 29 * MINUTE, sku="S1"),
            event("other-sku", "add_to_cart", T0, sku="S1"),
            event("other-sku", "pay", T0 + 5 * MINUTE, sku="S2"),
        ]
    )
    await settled(redis_client)
    await advance(beacon, redis_client, clock, T0 + 30 * MINUTE)  # deadline is 30 min + 2 s lateness
    assert await beacon.actions("abandoner") == []
    await advance(beacon, redis_client, clock, T0 + 30 * MINUTE + 2_000)
    abandoner = await beacon.actions("abandoner")
    assert kinds(abandoner) == [("cart-no-pay-30m", "message")]
    assert abandoner[0]["params"] == {"channel": "sms", "template": "cart_reminder", "params": {"sku": "S1"}}
    assert kinds(await beacon.actions("other-sku")) == [("cart-no-pay-30m", "message")]
    assert await beacon.actions("payer") == []
    await advance(beacon, redis_client, clock, T0 + 2 * DAY)
    assert len(await beacon.actions("abandoner")) == 1  # fired once, never again


async def test_pay_arriving_late_but_within_lateness_still_cancels(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await beacon.put_ruleset(library_ruleset("cart-recovery"))
    await beacon.post_events([event("u", "add_to_cart", T0, sku="S1")])
    await settled(redis_client)
    clock.set(T0 + 30 * MINUTE + 1_000)  # past the window, inside the 2 s lateness
    await beacon.post_events([event("u", "pay", T0 + 29 * MINUTE, sku="S1")])
    await settled(redis_client)
    await advance(beacon, redis_client, clock, T0 + DAY)
    assert await beacon.actions("u") == []


async def test_three_views_in_seven_days_then_cart_sends_a_nudge(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await beacon.put_ruleset(library_ruleset("browse-then-cart"))
    views = [event("keen", "view", T0 + offset * DAY, sku="S1") for offset in (0, 2, 6)]
    sparse = [event("sparse", "view", T0 + offset * DAY, sku="S1") for offset in (0, 4, 8)]
    await beacon.post_events(views + sparse)
    await settled(redis_client)
    await beacon.post_events(
        [
            event("keen", "add_to_cart", T0 + 6 * DAY + 1, sku="S1"),
            event("sparse", "add_to_cart", T0 + 8 * DAY + 1, sku="S1"),
        ]
    )
    await settled(redis_client)
    keen = await beacon.actions("keen")
    assert kinds(keen) == [("frequent-viewer", "tag"), ("viewer-carted", "message"), ("viewer-carted", "tag")]
    nudge = next(a for a in keen if a["type"] == "message")
    assert nudge["params"]["params"] == {"sku": "S1"}
    assert await beacon.actions("sparse") == []
    _, profile = await beacon.call("GET", "/v1/users/keen")
    assert profile["tags"] == []  # the nudge removed the marker tag


async def test_first_purchase_invites_to_membership_once(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    await beacon.put_ruleset(library_ruleset("first-purchase"))
    await beacon.call("PATCH", "/v1/users/member", json={"add_tags": ["member"]})
    await beacon.post_events(
        [
            event("newbie", "pay", T0, amount=10),
            event("newbie", "pay", T0 + MINUTE, amount=20),
            event("member", "pay", T0, amount=10),
        ]
    )
    await settled(redis_client)
    newbie = await beacon.actions("newbie")
    assert kinds(newbie) == [("first-pay-join", "message")]
    assert newbie[0]["event_ts"] == T0
    assert await beacon.actions("member") == []


async def test_follow_journey_tags_then_intro_after_3_days_and_coupon_on_day_4(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await beacon.put_ruleset(library_ruleset("welcome-on-follow"))
    await beacon.call("PATCH", "/v1/users/fan", json={"attrs": {"nickname": "Lin"}})
    await beacon.post_events([event("fan", "follow", T0)])
    await settled(redis_client)
    actions = {a["params"].get("template") or a["type"]: a for a in await beacon.actions("fan")}
    assert actions["welcome"]["status"] == "pending" and actions["welcome"]["params"]["params"] == {"nickname": "Lin"}
    assert actions["intro"]["status"] == "scheduled" and actions["intro"]["due_at"] == T0 + 3 * DAY
    assert actions["coupon"]["status"] == "scheduled" and actions["coupon"]["due_at"] == T0 + 4 * DAY
    assert actions["tag"]["status"] == "delivered"
    _, profile = await beacon.call("GET", "/v1/users/fan")
    assert profile["tags"] == ["new"]

    await advance(beacon, redis_client, clock, T0 + 3 * DAY)
    statuses = {a["params"].get("template") or a["type"]: a["status"] for a in await beacon.actions("fan")}
    assert statuses["intro"] == "pending" and statuses["coupon"] == "scheduled"
    await advance(beacon, redis_client, clock, T0 + 4 * DAY)
    statuses = {a["params"].get("template") or a["type"]: a["status"] for a in await beacon.actions("fan")}
    assert statuses["coupon"] == "pending"
    outbox = [await redis_client.xlen(outbox_key(p)) for p in range(PARTITIONS)]
    assert sum(outbox) == 3  # welcome now, intro and coupon when due: each exactly once

    await beacon.post_events([event("fan", "follow", T0 + 5 * DAY)])  # unfollowed and followed again
    await settled(redis_client)
    assert len(await beacon.actions("fan")) == 4


async def test_deleting_a_ruleset_cancels_its_delayed_actions(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await beacon.put_ruleset(library_ruleset("welcome-on-follow"))
    await beacon.post_events([event("fan", "follow", T0)])
    await settled(redis_client)
    status, _ = await beacon.call("DELETE", "/v1/rulesets/welcome-on-follow")
    assert status == 200
    await advance(beacon, redis_client, clock, T0 + 5 * DAY)
    statuses = {a["params"].get("template") or a["type"]: a["status"] for a in await beacon.actions("fan")}
    assert statuses["intro"] == "cancelled" and statuses["coupon"] == "cancelled"


async def test_live_state_shows_pending_absences(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    await beacon.put_ruleset(library_ruleset("cart-recovery"))
    await beacon.post_events([event("u", "add_to_cart", T0, sku="S1")])
    await settled(redis_client)
    _, body = await beacon.call("GET", "/v1/users/u")
    state = body["rules"]["cart-recovery/cart-no-pay-30m"]
    pending = [s for s in state["sets"] if s["kind"] == "pending_absence"]
    assert pending and pending[0]["entries"][0]["ts"] == T0
    assert state["watermark"] == T0


async def test_threshold_with_correlate_counts_per_product(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    ruleset = {
        "id": "product-interest",
        "rules": [
            {
                "id": "same-sku-3-views",
                "when": {"threshold": {"match": {"event": "view"}, "count": 3, "window": "7d", "correlate": ["sku"]}},
                "then": [
                    {"action": "message", "channel": "sms", "template": "interest", "params": {"sku": "{{event.sku}}"}}
                ],
            }
        ],
    }
    await beacon.put_ruleset(ruleset)
    # Three views by day 2 but of two products: only per-product counting waits for A's third view.
    mixed = [event("browser", "view", T0 + i * DAY, sku=sku) for i, sku in enumerate(["B", "C", "B", "A", "A", "A"])]
    await beacon.post_events(mixed)
    await settled(redis_client)
    browser = await beacon.actions("browser")
    assert [(a["params"]["params"], a["event_ts"]) for a in browser] == [({"sku": "A"}, T0 + 5 * DAY)]
