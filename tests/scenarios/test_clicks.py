"""Tracked links through the real server on a real Redis (single and cluster): `{{link "..."}}` renders a
short link per action and link, `GET /c/{token}` redirects only to the template's URL and records one
`click` event that rules match, with the action's rule / journey / plan ids."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from beacon.clock import ManualClock
from cep.links import link_key, token_partition
from tests.harness import Beacon
from tests.scenarios.journeys_kit import put_journey
from tests.scenarios.test_seed_scenarios import PARTITIONS, T0, event, settled

SALE = "https://shop.example/sale?utm=beacon&x=1"
OTHER = "https://shop.example/b"
RULES = {
    "id": "links",
    "rules": [
        {
            "id": "welcome",
            "when": {"event": "follow"},
            "then": [
                {
                    "action": "message",
                    "channel": "sms",
                    "template": "welcome",
                    "params": {"text": 'Sale: {{link "' + SALE + '"}} and {{ link "' + OTHER + '" }}'},
                }
            ],
        },
        {
            "id": "clicked",
            "when": {"event": "click", "where": {"field": "rule_id", "op": "==", "value": "welcome"}},
            "then": [{"action": "tag", "add": ["clicked"]}],
        },
    ],
}


async def follow(beacon: Beacon, token: str) -> tuple[int, str | None]:
    """GET /c/<token> without following the redirect: (status, Location)."""
    async with beacon.session.get(beacon.url(f"/c/{token}"), allow_redirects=False) as response:
        return response.status, response.headers.get("Location")


def tokens(text: str) -> list[str]:
    """The tokens of the short links in a rendered text, in order."""
    return [urlsplit(word).path.removeprefix("/c/") for word in text.split() if "/c/" in word]


async def test_a_link_redirects_to_its_url_and_records_one_click(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await beacon.put_ruleset(RULES)
    await beacon.post_events([event("u1", "follow", T0), event("u2", "follow", T0)])
    await settled(redis_client)
    (action,) = await beacon.actions("u1")
    text = action["params"]["params"]["text"]
    assert SALE not in text and OTHER not in text, text  # the message carries short links only
    first, second = tokens(text)
    assert action["links"] == [SALE, OTHER]
    (other_user,) = await beacon.actions("u2")
    assert set(tokens(other_user["params"]["params"]["text"])).isdisjoint({first, second})  # a link per action
    assert await follow(beacon, first) == (302, SALE)
    assert await follow(beacon, first) == (302, SALE)  # a second click still redirects
    assert await follow(beacon, second) == (302, OTHER)
    await settled(redis_client)
    _, user = await beacon.call("GET", "/v1/users/u1")
    assert "clicked" in user["tags"], user
    tag_actions = [a for a in await beacon.actions("u1") if a["rule_id"] == "clicked"]
    assert len(tag_actions) == 2  # one per link clicked (each link's click once, however often clicked)
    _, trace = await beacon.call("GET", "/v1/users/u1/trace")
    clicks = [e for e in trace["trace"] if e.get("kind") == "rule" and e.get("rule") == "links/clicked"]
    assert {e["what"] for e in clicks} == {"fired"}, clicks
    _, u2 = await beacon.call("GET", "/v1/users/u2")
    assert "clicked" not in u2["tags"]


async def test_unknown_and_forged_tokens_are_404(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    await beacon.put_ruleset(RULES)
    await beacon.post_events([event("u1", "follow", T0)])
    await settled(redis_client)
    (action,) = await beacon.actions("u1")
    token = tokens(action["params"]["params"]["text"])[0]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (forged, "0-" + "A" * 16, "zzzz-" + "A" * 16, "nodash", "1-short", token + "x"):
        async with beacon.session.get(beacon.url(f"/c/{bad}"), allow_redirects=False) as response:
            body: Any = await response.json(content_type=None)
            assert (response.status, body["error"]["path"]) == (404, "token"), (bad, body)


async def test_journey_and_plan_links_name_their_source(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    webhook = {
        "action": "webhook",
        "url": "https://hooks.example/x",
        "body": {"l": '{{link "https://shop.example/j"}}'},
    }
    journey = {"id": "fan", "entry": {"event": "follow"}, "start": "hi", "nodes": {"hi": {"do": [webhook]}}}
    await put_journey(beacon, journey)
    status, body = await beacon.call("PUT", "/v1/audiences/vip", json={"ids": ["p1"]})
    assert status == 200, body
    sms = {"action": "message", "channel": "sms", "template": "t", "params": {"u": '{{link "https://shop.example/p"}}'}}
    plan = {"id": "push", "audience": "aud:vip", "schedule": {"at": "2026-01-01T00:00:00+00:00"}, "then": [sms]}
    status, body = await beacon.call("PUT", "/v1/plans/push", json=plan)
    assert status == 200, body
    await beacon.post_events([event("j1", "follow", T0)])
    (journey_action,) = await beacon.wait_actions("j1", 1)
    (plan_action,) = await beacon.wait_actions("p1", 1)
    await settled(redis_client)
    for short, url, source in (
        (journey_action["params"]["body"]["l"], "https://shop.example/j", {"journey_id": "fan", "node_id": "hi"}),
        (plan_action["params"]["params"]["u"], "https://shop.example/p", {"plan_id": "push", "source": "plan"}),
    ):
        (token,) = tokens(short)
        assert await follow(beacon, token) == (302, url)
        partition = token_partition(token, PARTITIONS)
        assert partition is not None
        stored = json.loads(await redis_client.get(link_key(partition, token)) or "{}")
        assert {name: stored.get(name) for name in source} == source, stored
    await settled(redis_client)
    status, trace = await beacon.call("GET", "/v1/users/p1/trace")
    assert status == 200, trace
