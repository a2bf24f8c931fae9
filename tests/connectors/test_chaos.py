"""Issue 5's acceptance: a provider that fails 30% of requests and times out on 10% of them."""

from __future__ import annotations

from collections import Counter, defaultdict

import redis.asyncio as aioredis

from beacon.clock import SystemClock
from connectors.dead_letters import list_dead_letters
from connectors.policy import RetryPolicy
from tests.connectors.kit import (
    PARTITIONS,
    deliveries,
    fast_settings,
    put_actions,
    record,
    running_connectors,
    wait_all,
)
from tests.connectors.providers import FakeMerchant

ACTIONS = 200


async def test_flaky_provider_gets_each_effect_at_most_once_and_the_books_agree(
    redis_client: aioredis.Redis,
) -> None:
    merchant = await FakeMerchant(fail_rate=0.3, timeout_rate=0.1, seed=20240501).start()
    clock = SystemClock()
    now = clock.now_ms()
    records = [
        record(f"user-{i % 37}", "coupon", {"coupon_id": f"C-{i}"}, now)
        if i % 5
        else record(f"user-{i % 37}", "points", {"amount": i}, now)
        for i in range(ACTIONS)
    ]
    # Three attempts: 0.4^3 ≈ 6% of actions exhaust them, so both endings happen in one run.
    settings = fast_settings(merchant, retry=RetryPolicy(3, 5, 40, 0.5), http_timeout_ms=500)
    outcomes = ("delivered", "failed", "dead")
    before = {(c, o): deliveries(c, o) for c in ("coupon", "points") for o in outcomes}
    try:
        # Every action twice in the outbox, as after a retried worker batch.
        await put_actions(redis_client, records, copies=2)
        async with running_connectors(redis_client, settings, clock):
            final = await wait_all(redis_client, records, {"delivered", "dead"}, timeout_s=40)
    finally:
        await merchant.close()

    by_key: dict[str, list[str]] = defaultdict(list)
    for request in merchant.requests:
        by_key[request.headers["Idempotency-Key"]].append(request.mode)
    status = {rec["idempotency_key"]: current for rec, current in zip(records, final, strict=True)}
    delivered = {key for key, current in status.items() if current["status"] == "delivered"}
    dead = set(status) - delivered
    assert len(delivered) > ACTIONS * 0.8 and dead, (len(delivered), len(dead))

    # At most one effect per key, and every delivered action's effect happened.
    assert max(merchant.effect_count.values()) == 1
    assert delivered <= set(merchant.effects)
    # Effects without a delivery are dead actions whose effect landed on a failed or timed-out attempt.
    assert set(merchant.effects) - delivered <= dead
    # The ledger's attempts are exactly the requests the provider saw, key by key, and the last one decided.
    for key, current in status.items():
        assert current["attempts"] == len(by_key[key]), (key, current, by_key[key])
        last_ok = by_key[key][-1] == "ok"
        assert last_ok == (key in delivered)
        assert all(mode != "ok" for mode in by_key[key][:-1])

    # Dead letters list exactly the dead actions.
    letters = await list_dead_letters(redis_client, PARTITIONS, 1000)
    assert {row["action_id"] for row in letters} == dead

    # Metrics agree with the provider: one delivery per ok reply, one failure or death per failed request.
    replies = Counter(
        ("coupon" if request.path == "/coupons" else "points", request.mode.removeprefix("apply+"))
        for request in merchant.requests
    )
    for connector in ("coupon", "points"):
        delta = {o: deliveries(connector, o) - before[(connector, o)] for o in outcomes}
        assert delta["delivered"] == replies[(connector, "ok")]
        assert delta["failed"] + delta["dead"] == replies[(connector, "500")] + replies[(connector, "timeout")]
        assert delta["dead"] == sum(1 for rec in records if rec["type"] == connector and rec["idempotency_key"] in dead)
    assert replies[("coupon", "timeout")] + replies[("points", "timeout")] > 0
