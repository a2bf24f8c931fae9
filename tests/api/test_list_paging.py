"""The document lists a page at a time (`api.paging`) over a real socket and a real Redis: a walk by `next`
lists each document once in id order, documents added or deleted between pages do not upset it, `q` filters
ids, bad parameters are 422s naming them, and every list (rulesets, journeys, segments, audiences, plans)
pages the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from api.paging import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX
from rules.store import RulesetStore
from tests.harness import Beacon, running_beacon, server_settings

TAG = [{"action": "tag", "add": ["payer"]}]
RULESET = {"rules": [{"id": "r", "when": {"event": "pay"}, "then": TAG}]}
JOURNEY = {"entry": {"event": "follow"}, "start": "tag", "nodes": {"tag": {"do": TAG}}}
SEGMENT = {"where": {"tag": "vip"}}
AUDIENCE = {"ids": ["u1", "u2"]}
PLAN = {"audience": "aud:a-1", "schedule": {"cron": "0 10 * * 1"}, "then": TAG}


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    # No workers: nothing here processes events, and each would compile every stored ruleset for nothing.
    async with running_beacon(server_settings(redis_url, run_workers=False)) as running:
        yield running


async def store_rulesets(redis: aioredis.Redis, ids: list[str]) -> None:
    """Store rulesets as PUT does, without compiling each (a few hundred of them)."""
    store = RulesetStore(redis)
    for start in range(0, len(ids), 50):  # within the client's connection pool
        await asyncio.gather(*(store.put(item, {"id": item, **RULESET}, 0) for item in ids[start : start + 50]))


async def page(beacon: Beacon, collection: str, **params: Any) -> dict[str, Any]:
    status, body = await beacon.call("GET", f"/v1/{collection}", params={k: str(v) for k, v in params.items()})
    assert status == 200, body
    return dict(body)


async def walk(beacon: Beacon, collection: str, **params: Any) -> list[str]:
    """Every id of a list, following `next` from the first page."""
    seen: list[str] = []
    after = None
    while True:
        body = await page(beacon, collection, **params, **({"after": after} if after else {}))
        seen += [item["id"] for item in body[collection]]
        after = body["next"]
        if after is None:
            return seen


async def test_a_walk_by_next_lists_each_ruleset_once_in_id_order(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    ids = [f"rs-{n:03d}" for n in range(250)]
    await store_rulesets(redis_client, ids[::-1])  # stored out of order: the list sorts
    first = await page(beacon, "rulesets")
    assert [item["id"] for item in first["rulesets"]] == ids[:LIST_LIMIT_DEFAULT]
    assert (first["next"], first["total"]) == (ids[LIST_LIMIT_DEFAULT - 1], 250)
    assert first["rulesets"][0] == {
        "id": "rs-000", "version": 1, "description": "", "rules": 1, "updated_ms": 0, "owner": None,
    }  # fmt: skip
    assert await walk(beacon, "rulesets", limit=7) == ids
    last = await page(beacon, "rulesets", limit=50, after="rs-199")
    assert ([item["id"] for item in last["rulesets"]], last["next"]) == (ids[200:], None)  # exactly a page: no next
    assert await walk(beacon, "rulesets", limit=LIST_LIMIT_MAX) == ids


async def test_documents_added_or_deleted_between_pages_do_not_upset_the_walk(
    beacon: Beacon, redis_client: aioredis.Redis
) -> None:
    """The cursor is an id: a change elsewhere in the list shifts no page, so nothing present throughout is
    skipped or listed twice (an offset cursor would do both)."""
    await store_rulesets(redis_client, [f"rs-{n:02d}" for n in range(0, 40, 2)])  # rs-00, rs-02 ... rs-38
    body = await page(beacon, "rulesets", limit=5)
    seen = [item["id"] for item in body["rulesets"]]
    assert seen == ["rs-00", "rs-02", "rs-04", "rs-06", "rs-08"]
    # Between pages: delete one already listed, the page's last (the cursor itself) and one not yet listed; add
    # one before the cursor (it is not listed: the walk is past it) and two after it (they are).
    for gone in ("rs-02", "rs-08", "rs-20"):
        assert (await beacon.call("DELETE", f"/v1/rulesets/{gone}"))[0] == 200
    await store_rulesets(redis_client, ["rs-05", "rs-09", "rs-99"])
    after = body["next"]
    while after is not None:
        body = await page(beacon, "rulesets", limit=5, after=after)
        seen += [item["id"] for item in body["rulesets"]]
        after = body["next"]
    later = sorted({f"rs-{n:02d}" for n in range(10, 40, 2)} - {"rs-20"} | {"rs-09", "rs-99"})
    assert seen == ["rs-00", "rs-02", "rs-04", "rs-06", "rs-08", *later]


async def test_q_filters_ids_in_any_case_and_pages_too(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    await store_rulesets(redis_client, ["Cart-Recovery", "cart-vip", "welcome", "abandoned-cart", "pay"])
    body = await page(beacon, "rulesets", q="CART")
    assert [item["id"] for item in body["rulesets"]] == ["Cart-Recovery", "abandoned-cart", "cart-vip"]
    assert (body["next"], body["total"]) == (None, 3)
    assert await walk(beacon, "rulesets", q="cart", limit=1) == ["Cart-Recovery", "abandoned-cart", "cart-vip"]
    assert await page(beacon, "rulesets", q="nothing like it") == {"rulesets": [], "next": None, "total": 0}
    assert (await page(beacon, "rulesets", q=""))["total"] == 5


@pytest.mark.parametrize(
    ("name", "value", "path"),
    [
        ("limit", "0", "limit"),
        ("limit", str(LIST_LIMIT_MAX + 1), "limit"),
        ("limit", "-1", "limit"),
        ("limit", "ten", "limit"),
        ("limit", "1.5", "limit"),
        ("limit", "", "limit"),
        ("after", "not an id", "after"),
        ("after", "-starts-with-a-dash", "after"),
        ("after", "x" * 65, "after"),
    ],
)
async def test_a_bad_limit_or_cursor_is_a_422_naming_it(beacon: Beacon, name: str, value: str, path: str) -> None:
    for collection in ("rulesets", "journeys", "segments", "audiences", "plans"):
        status, body = await beacon.call("GET", f"/v1/{collection}", params={name: value})
        assert (status, body["error"]["code"], body["error"]["path"]) == (422, "invalid", path), (collection, body)


async def test_every_document_list_pages_the_same_way(beacon: Beacon) -> None:
    """Journeys, segments, audiences and plans: the same parameters, the same `next` and `total`, each
    item its list's own summary."""
    documents = {"journeys": JOURNEY, "segments": SEGMENT, "audiences": AUDIENCE, "plans": PLAN}
    for collection, document in documents.items():
        for n in (3, 1, 2):
            status, body = await beacon.call("PUT", f"/v1/{collection}/{collection[0]}-{n}", json=document)
            assert status == 200, body
    for collection in documents:
        ids = [f"{collection[0]}-{n}" for n in (1, 2, 3)]
        first = await page(beacon, collection, limit=2)
        assert ([item["id"] for item in first[collection]], first["next"], first["total"]) == (ids[:2], ids[1], 3)
        assert await walk(beacon, collection, limit=2) == ids
        assert await walk(beacon, collection, q="-3") == ids[2:]
    listed = (await page(beacon, "segments", limit=1))["segments"][0]
    assert (listed["id"], listed["size"]) == ("s-1", 0)
    assert (await page(beacon, "audiences", limit=1))["audiences"][0]["size"] == 2
    assert (await page(beacon, "journeys", limit=1))["journeys"][0]["nodes"] == 1
    assert (await page(beacon, "plans", limit=1))["plans"][0]["state"] == "active"
