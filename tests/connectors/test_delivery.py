"""The outbox consumer against a fake merchant API: delivery, dedupe, retries, Retry-After, dead letters."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from beacon.clock import ManualClock
from cep.events import partition_of
from cep.outbox import outbox_key
from connectors import delivery_ledger
from connectors.consumer import GROUP, ensure_outbox_groups
from connectors.dead_letters import list_dead_letters, replay
from tests.connectors.kit import (
    PARTITIONS,
    deliveries,
    fast_settings,
    put_actions,
    record,
    running_connectors,
    stored,
    wait_status,
)
from tests.connectors.providers import FakeMerchant
from tests.harness import eventually


async def test_coupon_is_posted_once_with_its_idempotency_key(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    coupon = record("alice", "coupon", {"coupon_id": "C-10", "quantity": 2, "params": {"sku": "A1"}}, clock.now_ms())
    before = deliveries("coupon", "delivered")
    # Three outbox copies of one action: a worker batch retried twice.
    await put_actions(redis_client, [coupon], copies=3)
    async with running_connectors(redis_client, fast_settings(merchant), clock):
        status = await wait_status(redis_client, coupon, {"delivered"})
        # Every copy is acknowledged, and none was delivered again.
        pending = await eventually(lambda: _unacked(redis_client), lambda count: count == 0)
        assert pending == 0
    assert status["attempts"] == 1 and status["connector"] == "coupon"
    assert status["reply"] == {"ok": True, "id": "E1"}
    assert len(merchant.requests) == 1
    sent = merchant.requests[0]
    assert sent.path == "/coupons"
    assert sent.headers["Idempotency-Key"] == coupon["idempotency_key"]
    assert sent.headers["Authorization"] == "Bearer shop"
    assert sent.body["coupon_id"] == "C-10" and sent.body["quantity"] == 2 and sent.body["user_id"] == "alice"
    assert sent.body["params"] == {"sku": "A1"} and sent.body["merchant_id"] == "M1"
    assert deliveries("coupon", "delivered") == before + 1


async def test_tag_actions_are_left_alone(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    tag = record("bob", "tag", {"add": ["vip"]}, clock.now_ms())
    points = record("bob", "points", {"amount": 50, "reason": "welcome"}, clock.now_ms())
    await put_actions(redis_client, [tag, points])
    async with running_connectors(redis_client, fast_settings(merchant), clock):
        await wait_status(redis_client, points, {"delivered"})
    assert [r.path for r in merchant.requests] == ["/points"]
    assert merchant.requests[0].body["amount"] == 50
    assert (await stored(redis_client, tag))["status"] == "delivered"


async def test_server_errors_retry_until_delivered(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    merchant.script.extend(["500", "apply+503"])
    coupon = record("carol", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    await put_actions(redis_client, [coupon])
    async with running_connectors(redis_client, fast_settings(merchant), clock):
        failed = await wait_status(redis_client, coupon, {"failed"})
        assert failed["reason"] == "http_5xx" and failed["attempts"] == 1
        # Backoff follows the injected clock: move it past each retry's due time.
        clock.advance(1_000)
        await wait_status(redis_client, coupon, {"failed"}, attempts=2)
        clock.advance(1_000)
        status = await wait_status(redis_client, coupon, {"delivered"})
    assert status["attempts"] == 3
    assert len(merchant.requests) == 3
    # The second failure had applied the effect: the third request got it back, not a second coupon.
    assert merchant.effect_count[coupon["idempotency_key"]] == 1


async def test_retry_after_is_honoured(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    merchant.script.append("429:30")
    coupon = record("dan", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    await put_actions(redis_client, [coupon])
    async with running_connectors(redis_client, fast_settings(merchant), clock):
        failed = await wait_status(redis_client, coupon, {"failed"})
        # Backoff alone would retry within 40 ms; the provider asked for 30 s.
        assert failed["reason"] == "http_429"
        assert failed["next_attempt_at"] >= clock.now_ms() + 30_000
        clock.advance(29_000)
        assert (await stored(redis_client, coupon))["status"] == "failed"
        clock.advance(1_000)
        await wait_status(redis_client, coupon, {"delivered"})
    assert len(merchant.requests) == 2


async def test_client_errors_are_not_retried_and_dead_letters_replay(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    merchant.script.append("400")
    coupon = record("erin", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    before = deliveries("coupon", "dead")
    await put_actions(redis_client, [coupon])
    async with running_connectors(redis_client, fast_settings(merchant), clock):
        dead = await wait_status(redis_client, coupon, {"dead"})
        assert dead["reason"] == "http_4xx" and dead["attempts"] == 1
        assert len(merchant.requests) == 1

        async def dead_count() -> float:
            return deliveries("coupon", "dead")

        # The status turns dead before the deliverer's last awaits and its metric: poll, do not race it.
        assert await eventually(dead_count, lambda count: count == before + 1) == before + 1
        letters = await list_dead_letters(redis_client, PARTITIONS, 10)
        assert [(row["action_id"], row["reason"]) for row in letters] == [(coupon["action_id"], "http_4xx")]
        assert letters[0]["action"]["params"] == {"coupon_id": "C-1"}

        result = await replay(redis_client, clock, PARTITIONS, letters)
        assert result == {"replayed": [coupon["action_id"]], "refused": []}
        status = await wait_status(redis_client, coupon, {"delivered"})
        assert status["replays"] == 1 and status["attempts"] == 1
        assert await list_dead_letters(redis_client, PARTITIONS, 10) == []
        # A second replay of a delivered action changes nothing.
        again = await replay(redis_client, clock, PARTITIONS, letters)
        assert again["replayed"] == [] and again["refused"] == [
            {"action_id": coupon["action_id"], "reason": "not_dead"}
        ]
    assert [r.headers["Idempotency-Key"] for r in merchant.requests] == [coupon["idempotency_key"]] * 2


async def test_retries_exhausted_go_to_dead_letters(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    merchant.script.extend(["500"] * 4)
    points = record("fay", "points", {"amount": 5}, clock.now_ms())
    await put_actions(redis_client, [points])
    settings = fast_settings(merchant)
    async with running_connectors(redis_client, settings, clock):
        for attempt in range(1, settings.retry.max_attempts):
            await wait_status(redis_client, points, {"failed"}, attempts=attempt)
            clock.advance(1_000)
        dead = await wait_status(redis_client, points, {"dead"})
    assert dead["attempts"] == settings.retry.max_attempts == len(merchant.requests)
    assert merchant.effect_count[points["idempotency_key"]] == 0


async def test_an_abandoned_claim_is_taken_over_after_its_lease(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    coupon = record("gus", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    await put_actions(redis_client, [coupon])
    settings = fast_settings(merchant)
    stored_action = await delivery_ledger.read_action(redis_client, PARTITIONS, "gus", coupon["action_id"])
    assert stored_action is not None
    # A consumer claimed it (waking it at the lease's end, as every claim does) and died: its lease runs for
    # another second.
    lease_until = clock.now_ms() + 1_000
    claimed = delivery_ledger.transition(stored_action.status, clock.now_ms(), "delivering", lease_until=lease_until)
    swapped = await delivery_ledger.swap_status(redis_client, PARTITIONS, stored_action, claimed, wake_at=lease_until)
    assert swapped is not None
    async with running_connectors(redis_client, settings, clock):
        # The outbox entry finds it busy and leaves the wake-up at the lease's end.
        due_key = delivery_ledger.due_key(partition_of("gus", PARTITIONS))
        score = await eventually(lambda: redis_client.zscore(due_key, _member(coupon)), lambda found: found is not None)
        assert score == lease_until
        assert merchant.requests == []
        clock.advance(1_000)
        await wait_status(redis_client, coupon, {"delivered"})
    assert len(merchant.requests) == 1


async def _unacked(redis: aioredis.Redis) -> int:
    total = 0
    for partition in range(PARTITIONS):
        total += (await redis.xpending(outbox_key(partition), GROUP))["pending"]
    return total


def _member(rec: dict[str, object]) -> str:
    return delivery_ledger.hint_member(str(rec["user_id"]), str(rec["action_id"]))


async def test_an_entry_read_by_a_dead_consumer_is_reclaimed(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    coupon = record("hal", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    await ensure_outbox_groups(redis_client, PARTITIONS)
    await put_actions(redis_client, [coupon])
    key = outbox_key(partition_of("hal", PARTITIONS))
    # Another process read the entry and died before acknowledging it.
    read: Any
    (read,) = await redis_client.xreadgroup(GROUP, "dead-consumer", {key: ">"}, count=10)
    assert len(read[1]) == 1
    # A short lease so the entry is reclaimed soon; the HTTP timeout must fit 3/4 of it.
    async with running_connectors(redis_client, fast_settings(merchant, lease_ms=400), clock):
        await wait_status(redis_client, coupon, {"delivered"})
        assert await eventually(lambda: _unacked(redis_client), lambda count: count == 0) == 0
    assert len(merchant.requests) == 1


async def test_stopping_lets_the_delivery_in_flight_finish(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    merchant.script.append("timeout")
    coupon = record("ivy", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    stopping = asyncio.Event()
    async with running_connectors(redis_client, fast_settings(merchant), clock, stopping=stopping) as task:
        await put_actions(redis_client, [coupon])
        await eventually(lambda: _requests(merchant), lambda count: count == 1)
        stopping.set()
        await asyncio.wait_for(task, 2)
    # The attempt ran to its end (a timeout) and was recorded, rather than abandoned mid-call.
    status = await stored(redis_client, coupon)
    assert status["status"] == "failed" and status["reason"] == "timeout"


async def _requests(merchant: FakeMerchant) -> int:
    return len(merchant.requests)
