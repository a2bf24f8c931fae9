"""From an event over HTTP to a coupon at the merchant: the worker's real outbox records, delivered."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from beacon.clock import ManualClock, SystemClock
from tests.connectors.kit import PARTITIONS, fast_settings, running_connectors
from tests.connectors.providers import FakeMerchant
from tests.harness import eventually, running_beacon, server_settings

RULESET: dict[str, Any] = {
    "id": "big-spend",
    "rules": [
        {
            "id": "paid-1000",
            "when": {"event": "pay", "where": {"field": "amount", "op": ">=", "value": 1000}},
            "then": [
                {"action": "coupon", "coupon_id": "C-1000", "params": {"order": "{{event.order}}"}},
                {"action": "tag", "add": ["big_spender"]},
            ],
        }
    ],
}


async def test_event_to_delivered_coupon(redis_client: aioredis.Redis, redis_url: str, merchant: FakeMerchant) -> None:
    clock = SystemClock()
    async with (
        running_beacon(server_settings(redis_url, partitions=PARTITIONS), clock) as beacon,
        running_connectors(redis_client, fast_settings(merchant), clock),
    ):
        assert await beacon.put_ruleset(RULESET) == 1
        event = {"user_id": "alice", "type": "pay", "event_id": "pay-1", "attrs": {"amount": 1200, "order": "O-7"}}
        status, body = await beacon.post_events([event, event])  # a producer retry in the same batch
        assert status == 200, body

        async def coupon() -> list[dict[str, Any]]:
            return [a for a in await beacon.actions("alice") if a["type"] == "coupon" and a["status"] == "delivered"]

        (delivered,) = await eventually(coupon, lambda found: len(found) == 1)
    assert delivered["attempts"] == 1 and delivered["connector"] == "coupon"
    (request,) = merchant.requests
    assert request.headers["Idempotency-Key"] == delivered["idempotency_key"]
    assert request.body["coupon_id"] == "C-1000" and request.body["params"] == {"order": "O-7"}
    assert request.body["user_id"] == "alice" and request.body["rule_id"] == "paid-1000"


async def test_serve_delivers_with_its_own_consumer(
    redis_client: aioredis.Redis, redis_url: str, merchant: FakeMerchant
) -> None:
    """`beacon serve` wires the outbox consumer in: no separate consumer runs in this test."""
    settings = server_settings(
        redis_url, partitions=PARTITIONS, run_connectors=True, connectors=fast_settings(merchant)
    )
    async with running_beacon(settings) as beacon:
        await beacon.put_ruleset(RULESET)
        event = {"user_id": "bob", "type": "pay", "event_id": "pay-2", "attrs": {"amount": 5000, "order": "O-8"}}
        await beacon.post_events([event])

        async def delivered() -> list[dict[str, Any]]:
            return [a for a in await beacon.actions("bob") if a["type"] == "coupon" and a["status"] == "delivered"]

        assert len(await eventually(delivered, lambda found: len(found) == 1)) == 1
    assert [request.body["user_id"] for request in merchant.requests] == ["bob"]


async def test_a_replayed_payment_hours_old_is_stale_unless_the_action_allows_it(
    redis_client: aioredis.Redis, redis_url: str, merchant: FakeMerchant
) -> None:
    """Events replayed from a producer's backlog fire their rules, but a coupon two hours overdue is skipped as
    `stale` (and reported as such), while an action with its own `max_staleness` still goes out."""
    hour = 3_600_000
    ruleset = {
        "id": "replayed",
        "rules": [
            {
                "id": "coupon-fresh-only",
                "when": {"event": "pay"},
                "then": [{"action": "coupon", "coupon_id": "C-FRESH"}],
            },
            {
                "id": "points-always",
                "when": {"event": "pay"},
                "then": [{"action": "points", "amount": 10, "max_staleness": "1d"}],
            },
        ],
    }
    clock = SystemClock()
    async with (
        running_beacon(server_settings(redis_url, partitions=PARTITIONS), clock) as beacon,
        running_connectors(redis_client, fast_settings(merchant, max_staleness_ms=hour), clock),
    ):
        await beacon.put_ruleset(ruleset)
        paid = clock.now_ms() - 2 * hour
        event = {"user_id": "replayed-user", "type": "pay", "event_id": "pay-old", "ts": paid, "attrs": {}}
        assert (await beacon.post_events([event]))[0] == 200

        async def settled() -> dict[str, dict[str, Any]]:
            return {a["type"]: a for a in await beacon.actions("replayed-user")}

        final = await eventually(
            settled, lambda found: {a["status"] for a in found.values()} == {"skipped", "delivered"}
        )
    assert (final["coupon"]["status"], final["coupon"]["reason"]) == ("skipped", "stale")
    assert final["coupon"]["event_due_at"] == paid
    assert final["points"]["status"] == "delivered" and final["points"]["max_staleness_ms"] == 86_400_000
    assert [request.path for request in merchant.requests] == ["/points"]


async def test_an_absence_fired_after_a_long_lateness_is_not_stale(
    redis_client: aioredis.Redis, redis_url: str, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """An absence fires at its deadline plus the rule's lateness: with a lateness longer than the staleness
    bound, its actions were stale the moment they fired (counted from the deadline alone)."""
    minute = 60_000
    ruleset = {
        "id": "late-absence",
        "rules": [
            {
                "id": "cart-no-pay",
                "when": {"absence": {"first": {"event": "cart"}, "missing": {"event": "pay"}, "within": "30m"}},
                "lateness": "90m",
                "then": [{"action": "coupon", "coupon_id": "C-COME-BACK"}],
            }
        ],
    }
    connectors = fast_settings(merchant, max_staleness_ms=60 * minute)
    async with (
        running_beacon(server_settings(redis_url, partitions=PARTITIONS), clock) as beacon,
        running_connectors(redis_client, connectors, clock),
    ):
        await beacon.put_ruleset(ruleset)
        carted = clock.now_ms()
        event = {"user_id": "slow-payer", "type": "cart", "event_id": "cart-1", "ts": carted}
        assert (await beacon.post_events([event]))[0] == 200
        clock.advance(120 * minute + 1_000)  # the deadline (30m) plus the lateness (90m)

        async def coupon() -> list[dict[str, Any]]:
            return [a for a in await beacon.actions("slow-payer") if a["status"] in ("delivered", "skipped")]

        (settled,) = await eventually(coupon, lambda found: len(found) == 1)
    assert settled["status"] == "delivered", settled
    assert settled["event_due_at"] == carted + 120 * minute
