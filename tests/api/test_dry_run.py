"""Dry-runs answer what would fire and when, on throwaway state that leaves nothing behind."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.harness import Beacon, running_beacon, server_settings
from tests.scenarios.library import library_ruleset

T0 = 1_767_225_600_000
MINUTE = 60_000


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> Any:
    async with running_beacon(server_settings(redis_url)) as running:
        yield running


def cart(user: str, ts: int, kind: str = "add_to_cart", event_id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"user_id": user, "type": kind, "ts": ts, "attrs": {"sku": "S1"}}
    if event_id:
        event["event_id"] = event_id
    return event


async def test_dry_run_reports_firings_late_events_and_leaves_no_state(
    beacon: Beacon, redis_client: aioredis.Redis
) -> None:
    await beacon.put_ruleset(library_ruleset("cart-recovery"))
    keys_before = set(await redis_client.keys("b:{u:*"))
    events = [
        cart("ann", T0, event_id="a1"),
        cart("bob", T0, event_id="b1"),
        cart("bob", T0 + 10 * MINUTE, kind="pay", event_id="b2"),
        cart("cid", T0 + 40 * MINUTE, event_id="c1"),
        cart("cid", T0 + 10 * MINUTE, kind="pay", event_id="c-late"),  # 30 min behind cid's watermark
    ]
    status, body = await beacon.call("POST", "/v1/rulesets/cart-recovery:dry-run", json={"events": events})
    assert status == 200, body
    fired = [(f["user_id"], f["rule_id"], f["at"]) for f in body["firings"]]
    deadline = 30 * MINUTE + 2_000
    assert fired == [("ann", "cart-no-pay-30m", T0 + deadline), ("cid", "cart-no-pay-30m", T0 + 40 * MINUTE + deadline)]
    assert body["firings"][0]["explanation"] == f"add_to_cart at {T0} and no pay within 30m"
    assert body["firings"][0]["actions"][0]["params"]["params"] == {"sku": "S1"}
    assert body["late"] == [
        {"user_id": "cid", "rule_id": "cart-no-pay-30m", "event_id": "c-late", "ts": T0 + 10 * MINUTE}
    ]
    assert body["pending_timers"] == []
    assert set(await redis_client.keys("b:{u:*")) == keys_before
    assert await beacon.actions("ann") == []


async def test_dry_run_until_leaves_timers_pending_and_accepts_unsaved_documents(beacon: Beacon) -> None:
    document = library_ruleset("cart-recovery")
    body_in = {"document": document, "events": [cart("ann", T0)], "until": T0 + 10 * MINUTE}
    status, body = await beacon.call("POST", "/v1/rulesets/cart-recovery:dry-run", json=body_in)
    assert status == 200, body
    assert body["firings"] == []
    assert body["pending_timers"] == [{"due": T0 + 30 * MINUTE + 2_000, "user_id": "ann"}]


async def test_dry_run_errors(beacon: Beacon) -> None:
    status, body = await beacon.call("POST", "/v1/rulesets/nope:dry-run", json={"events": [cart("a", T0)]})
    assert status == 404 and body["error"]["path"] == "id"
    await beacon.put_ruleset(library_ruleset("cart-recovery"))
    status, body = await beacon.call("POST", "/v1/rulesets/cart-recovery:dry-run", json={"events": []})
    assert status == 422 and body["error"]["path"] == "events"
    status, body = await beacon.call("POST", "/v1/rulesets/cart-recovery:dry-run", json={"events": [{"type": "x"}]})
    assert status == 422 and body["error"]["path"] == "events[0].user_id"
    status, body = await beacon.call("POST", "/v1/rulesets/cart-recovery:dry-run", json={"events": [], "when": 1})
    assert status == 422 and body["error"]["path"] == "when"
