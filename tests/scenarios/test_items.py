"""Item events through the real server on a real Redis (single and cluster): a price drop reaches exactly
the users who carted the item in the window and did not pay for it, once, whatever the retries."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from tests.harness import Beacon
from tests.scenarios.test_seed_scenarios import DAY, MINUTE, T0, event, settled

HOUR = 60 * MINUTE
PRICE_DROP_RULES = {
    "id": "price-drops",
    "rules": [
        {
            "id": "tell-carters",
            "when": {"event": "price_drop"},
            "then": [
                {
                    "action": "message",
                    "channel": "sms",
                    "template": "price_drop",
                    "params": {"sku": "{{event.sku}}", "pct": "{{event.drop_pct}}"},
                }
            ],
        }
    ],
}
DROP = {
    "type": "price_drop",
    "item": {"sku": "SKU-X"},
    "attrs": {"drop_pct": 25},
    "users": {"did": {"event": "add_to_cart"}, "did_not": {"event": "pay"}, "within": "30d"},
}


async def told(beacon: Beacon, users: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each user's price-drop messages' params."""
    return {user: [a["params"]["params"] for a in await beacon.actions(user)] for user in users}


async def test_a_price_drop_reaches_exactly_the_carters_who_did_not_pay(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    status, body = await beacon.call(
        "PUT", "/v1/items/indexes/sku", json={"events": ["add_to_cart", "pay"], "window": "30d"}
    )
    assert (status, body["events"], body["window_ms"]) == (200, ["add_to_cart", "pay"], 30 * DAY), body
    await beacon.put_ruleset(PRICE_DROP_RULES)
    await beacon.post_events(
        [
            event("carted", "add_to_cart", T0, sku="SKU-X"),
            event("paid", "add_to_cart", T0, sku="SKU-X"),
            event("paid", "pay", T0 + HOUR, sku="SKU-X"),
            event("other-item", "add_to_cart", T0, sku="SKU-Y"),
            event("long-ago", "add_to_cart", T0 - 40 * DAY, sku="SKU-X"),
            event("paid-long-ago", "pay", T0 - 40 * DAY, sku="SKU-X"),
            event("paid-long-ago", "add_to_cart", T0, sku="SKU-X"),
            event("paid-other", "add_to_cart", T0, sku="SKU-X"),
            event("paid-other", "pay", T0 + HOUR, sku="SKU-Y"),
        ]
    )
    await settled(redis_client)
    clock.set(T0 + 2 * HOUR)
    status, body = await beacon.call("POST", "/v1/items/events", json={**DROP, "id": "drop-1"})
    assert (status, body["users"]) == (200, 3), body
    await settled(redis_client)
    everyone = ["carted", "paid", "other-item", "long-ago", "paid-long-ago", "paid-other"]
    expected = {"sku": "SKU-X", "pct": 25}
    assert await told(beacon, everyone) == {
        "carted": [expected],
        "paid": [],
        "other-item": [],
        "long-ago": [],
        "paid-long-ago": [expected],
        "paid-other": [expected],
    }
    # The same request again (a client retry): the events are duplicates, nobody is told twice.
    status, body = await beacon.call("POST", "/v1/items/events", json={**DROP, "id": "drop-1"})
    assert (status, body["users"]) == (200, 3)
    await settled(redis_client)
    assert [len(found) for found in (await told(beacon, everyone)).values()] == [1, 0, 0, 0, 1, 1]
    # Without did_not, whoever carted it in the window.
    unfiltered = {**DROP, "id": "drop-2", "users": {"did": {"event": "add_to_cart"}, "within": "30d"}}
    status, body = await beacon.call("POST", "/v1/items/events", json=unfiltered)
    assert (status, body["users"]) == (200, 4)


@pytest.mark.parametrize("redis_url", ["single"], indirect=True)
async def test_a_bad_item_event_is_a_4xx_naming_the_field(beacon: Beacon) -> None:
    await beacon.call("PUT", "/v1/items/indexes/sku", json={"events": ["add_to_cart", "pay"], "window": "30d"})
    cases = [
        ({**DROP, "item": {"color": "red"}}, 404, "item.color"),
        ({**DROP, "item": {"sku": "X", "size": 1}}, 422, "item"),
        ({**DROP, "item": {"sku": 1.5}}, 422, "item.sku"),
        ({**DROP, "users": {**DROP["users"], "did": {"event": "view"}}}, 422, "users.did"),
        ({**DROP, "users": {**DROP["users"], "within": "31d"}}, 422, "users.within"),
        ({**DROP, "users": {**DROP["users"], "extra": 1}}, 422, "users.extra"),
        ({**DROP, "type": "no spaces"}, 422, "type"),
        ({**DROP, "attrs": {"x": 2**70}}, 422, "attrs.x"),
        ({k: v for k, v in DROP.items() if k != "users"}, 422, "users"),
        ({**DROP, "id": "a{b}"}, 422, "id"),
    ]
    for body, status, path in cases:
        got, reply = await beacon.call("POST", "/v1/items/events", json=body)
        assert (got, reply.get("error", {}).get("path")) == (status, path), (body, reply)
    status, reply = await beacon.call("PUT", "/v1/items/indexes/sku", json={"events": ["pay", "pay"], "window": "1x"})
    assert status == 422 and {e["path"] for e in reply["error"]["errors"]} == {"window", "events"}
