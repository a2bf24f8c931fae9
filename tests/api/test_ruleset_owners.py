"""Ruleset owners and write-only webhook headers (issue 15, finding 10): any `rules` key could overwrite any
ruleset and read other authors' webhook credentials back."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from rules.secret_headers import SECRET_MARKER
from rules.store import JOURNEYS, RulesetStore
from tests.api.test_end_to_end import settled
from tests.harness import Beacon, running_beacon, server_settings

RULES = frozenset({"rules"})
KEYS = {
    "k-alice": RULES,
    "k-alice-2": RULES,
    "k-bob": RULES,
    "k-nobody": RULES,
    "k-admin": frozenset({"rules", "events", "admin"}),
    "k-events": frozenset({"events"}),
}
OWNERS = {"k-alice": "alice", "k-alice-2": "alice", "k-bob": "bob", "k-admin": "ops"}
TOKEN = "Bearer s3cret-token"
HOOK = "https://hooks.example/beacon"
PROMO: dict[str, Any] = {
    "id": "promo",
    "description": "signup -> webhook",
    "rules": [
        {
            "id": "signed-up",
            "when": {"event": "signup"},
            "then": [
                {
                    "action": "webhook",
                    "url": HOOK,
                    "body": {"user": "{{user_id}}"},
                    "headers": {"Authorization": TOKEN, "X-Tenant": "shop-1"},
                }
            ],
        }
    ],
}
JOURNEY: dict[str, Any] = {
    "id": "welcome",
    "entry": {"event": "signup"},
    "start": "hook",
    "nodes": {"hook": {"do": [{"action": "webhook", "url": HOOK, "headers": {"X-Api-Key": "j-secret"}}]}},
}


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    settings = server_settings(redis_url, api_keys=KEYS, api_key_owners=OWNERS)
    async with running_beacon(settings) as running:
        yield running


def as_key(key: str) -> dict[str, dict[str, str]]:
    return {"headers": {"Authorization": f"Bearer {key}"}}


async def put(beacon: Beacon, key: str, document: dict[str, Any], kind: str = "rulesets") -> tuple[int, Any]:
    return await beacon.call("PUT", f"/v1/{kind}/{document['id']}", json=document, **as_key(key))


def assert_forbidden(status: int, body: Any) -> None:
    assert status == 403, body
    assert body["error"]["code"] == "forbidden" and body["error"]["path"] == "id", body


async def test_another_owner_s_key_cannot_replace_or_delete_a_ruleset(beacon: Beacon) -> None:
    assert (await put(beacon, "k-alice", PROMO))[0] == 200
    status, body = await beacon.call("GET", "/v1/rulesets/promo", **as_key("k-bob"))
    assert status == 200 and body["owner"] == "alice"
    for key in ("k-bob", "k-nobody"):
        assert_forbidden(*await put(beacon, key, {**PROMO, "description": "hijacked"}))
        assert_forbidden(*await beacon.call("DELETE", "/v1/rulesets/promo", **as_key(key)))
    status, body = await beacon.call("GET", "/v1/rulesets/promo", **as_key("k-alice"))
    assert (body["version"], body["document"]["description"]) == (1, "signup -> webhook")
    # Any key of the same owner may, and an admin key may while the owner stays.
    assert (await put(beacon, "k-alice-2", PROMO))[1]["version"] == 2
    assert (await put(beacon, "k-admin", PROMO))[1]["version"] == 3
    status, body = await beacon.call("GET", "/v1/rulesets", **as_key("k-nobody"))
    assert [(item["id"], item["owner"]) for item in body["rulesets"]] == [("promo", "alice")]
    # Deleted by its owner, the id is free again.
    assert (await beacon.call("DELETE", "/v1/rulesets/promo", **as_key("k-alice")))[0] == 200
    assert (await put(beacon, "k-bob", PROMO))[0] == 200
    assert (await beacon.call("GET", "/v1/rulesets/promo", **as_key("k-bob")))[1]["owner"] == "bob"
    assert (await beacon.call("DELETE", "/v1/rulesets/promo", **as_key("k-admin")))[0] == 200


async def test_a_ruleset_stored_by_a_key_without_owner_stays_open_until_an_owner_stores_it(beacon: Beacon) -> None:
    """Keys without an owner keep working as before owners existed."""
    assert (await put(beacon, "k-nobody", PROMO))[0] == 200
    assert (await beacon.call("GET", "/v1/rulesets/promo", **as_key("k-bob")))[1]["owner"] is None
    assert (await put(beacon, "k-nobody", PROMO))[0] == 200
    assert (await put(beacon, "k-bob", PROMO))[0] == 200
    assert_forbidden(*await put(beacon, "k-nobody", PROMO))


async def test_webhook_headers_are_never_read_back(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    assert (await put(beacon, "k-alice", PROMO))[0] == 200
    for path in ("/v1/rulesets/promo", "/v1/rulesets/promo?version=1", "/v1/rulesets"):
        status, body = await beacon.call("GET", path, **as_key("k-bob"))
        assert status == 200 and "s3cret" not in json.dumps(body), body
    status, body = await beacon.call("GET", "/v1/rulesets/promo", **as_key("k-alice"))
    headers = body["document"]["rules"][0]["then"][0]["headers"]
    assert headers == {"Authorization": SECRET_MARKER, "X-Tenant": SECRET_MARKER}
    # Fired, the rendered headers stay out of the ledger (an `events` key reads it) and the dry-run.
    status, _ = await beacon.call(
        "POST", "/v1/events", json={"user_id": "u1", "type": "signup", "event_id": "s1"}, **as_key("k-events")
    )
    assert status == 200
    await settled(redis_client)
    status, body = await beacon.call("GET", "/v1/actions", params={"user_id": "u1"}, **as_key("k-events"))
    (action,) = body["actions"]
    assert action["type"] == "webhook" and action["params"]["headers"]["Authorization"] == SECRET_MARKER, body
    assert "s3cret" not in json.dumps(body)
    payload = {"events": [{"user_id": "u2", "type": "signup", "ts": 1_767_225_600_000}]}
    status, body = await beacon.call("POST", "/v1/rulesets/promo:dry-run", json=payload, **as_key("k-bob"))
    assert status == 200 and len(body["firings"]) == 1 and "s3cret" not in json.dumps(body), body
    # The connectors still get the real value: only what the API returns is masked.
    stored = await RulesetStore(redis_client).get("promo")
    assert stored.document["rules"][0]["then"][0]["headers"]["Authorization"] == TOKEN


async def test_a_document_read_edited_and_sent_back_keeps_its_secrets(
    beacon: Beacon, redis_client: aioredis.Redis
) -> None:
    assert (await put(beacon, "k-alice", PROMO))[0] == 200
    status, body = await beacon.call("GET", "/v1/rulesets/promo", **as_key("k-alice"))
    edited = body["document"]
    edited["description"] = "edited"
    edited["rules"][0]["then"][0]["headers"]["X-Tenant"] = "shop-2"
    status, body = await put(beacon, "k-alice", edited)
    assert (status, body["version"]) == (200, 2), body
    stored = await RulesetStore(redis_client).get("promo")
    assert stored.document["description"] == "edited"
    assert stored.document["rules"][0]["then"][0]["headers"] == {"Authorization": TOKEN, "X-Tenant": "shop-2"}


async def test_a_masked_value_is_not_carried_to_another_url_nor_invented(beacon: Beacon) -> None:
    """Pointing the action at one's own server with the marker in place would deliver the stored secret there."""
    assert (await put(beacon, "k-nobody", PROMO))[0] == 200
    moved = copy.deepcopy(PROMO)
    moved["rules"][0]["then"][0]["url"] = "https://attacker.example/collect"
    moved["rules"][0]["then"][0]["headers"] = {"Authorization": SECRET_MARKER}
    status, body = await put(beacon, "k-bob", moved)
    assert status == 422 and body["error"]["path"] == "rules[0].then[0].headers.Authorization", body
    unknown = copy.deepcopy(PROMO)
    unknown["rules"][0]["then"][0]["headers"] = {"X-Other": SECRET_MARKER}
    status, body = await put(beacon, "k-bob", unknown)
    assert status == 422 and body["error"]["path"] == "rules[0].then[0].headers.X-Other", body
    status, body = await put(beacon, "k-bob", {**moved, "id": "new-one"})
    assert status == 422 and body["error"]["path"] == "rules[0].then[0].headers.Authorization", body
    status, body = await beacon.call("GET", "/v1/rulesets/promo", **as_key("k-bob"))
    assert body["version"] == 1  # nothing stored


async def test_journeys_have_owners_and_write_only_headers_too(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    assert (await put(beacon, "k-alice", JOURNEY, "journeys"))[0] == 200
    status, body = await beacon.call("GET", "/v1/journeys/welcome", **as_key("k-alice"))
    assert status == 200 and body["owner"] == "alice" and "j-secret" not in json.dumps(body), body
    assert_forbidden(*await put(beacon, "k-bob", JOURNEY, "journeys"))
    assert_forbidden(*await beacon.call("DELETE", "/v1/journeys/welcome", **as_key("k-bob")))
    assert (await put(beacon, "k-alice", body["document"], "journeys"))[0] == 200
    stored = await RulesetStore(redis_client, JOURNEYS).get("welcome")
    assert stored.document["nodes"]["hook"]["do"][0]["headers"] == {"X-Api-Key": "j-secret"}
