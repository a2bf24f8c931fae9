"""Segment endpoints over a real socket and a real Redis: CRUD and versions, every bad input a 4xx naming
its field, member paging and sizes (read from what the partition owners would have written), and the
estimate of an unsaved definition, exact and sampled, over user records written directly.

Membership here is written by hand (`cep.segment_members`), and no worker runs: these tests check the
reading side, not the runtime that keeps membership live.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from api import keys
from api.routes_segments import ESTIMATE_FIELDS
from beacon.clock import ManualClock
from cep import segment_estimate
from cep.events import partition_of
from cep.segment_estimate import error_bound, estimate_segment
from cep.segment_members import members_key, sizes_key
from cep.user_record import PatternState, UserState, encode_user_state
from cep.user_state import STATE, TRACE, user_key
from rules.segments import CompiledSegment, load_segment
from tests.conftest import flushed_client
from tests.harness import Beacon, running_beacon, server_settings

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the server's (manual) clock
DAY = 86_400_000
PARTITIONS = 2
LIBRARY = Path(__file__).resolve().parents[2] / "rules" / "library" / "segments"
VIP = {"where": {"tag": "vip"}}
PAID_30D = {"did": {"event": "pay"}, "within": "30d"}
STORE_SUM = {
    "sum": "amount",
    "of": {"event": "pay", "where": {"field": "channel", "op": "==", "value": "store"}},
    "within": "30d",
    "op": ">=",
    "value": 1000,
}


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> Any:
    settings = server_settings(redis_url, partitions=PARTITIONS, run_workers=False)
    async with running_beacon(settings, ManualClock(T0)) as running:
        yield running


def library(name: str) -> dict[str, Any]:
    return dict(json.loads((LIBRARY / f"{name}.json").read_text()))


async def error(beacon: Beacon, status: int, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """The error body of a call expected to fail with `status`."""
    found, body = await beacon.call(method, path, **kwargs)
    assert found == status, body
    assert set(body) == {"error"}, body
    return dict(body["error"])


def paths(found: dict[str, Any]) -> list[str]:
    return [item["path"] for item in found.get("errors", [found])]


def shape_of(condition: dict[str, Any]) -> str:
    """The history shape id a one-behaviour condition reads."""
    (shape,) = CompiledSegment.build(
        load_segment({"id": "s", "where": condition}, segment_id=None, lateness_ms=0)
    ).shapes
    return shape.id


# -- storage ------------------------------------------------------------------------------------------


async def test_segments_are_stored_in_versions_listed_and_deleted(beacon: Beacon) -> None:
    document = library("new-fans-no-order")
    status, body = await beacon.call("PUT", "/v1/segments/new-fans-no-order", json=document)
    assert (status, body) == (200, {"id": "new-fans-no-order", "version": 1})
    changed = {"description": "v2", "where": document["where"]}  # no id: the URL's is stored with it
    status, body = await beacon.call("PUT", "/v1/segments/new-fans-no-order", json=changed)
    assert (status, body) == (200, {"id": "new-fans-no-order", "version": 2})

    status, body = await beacon.call("GET", "/v1/segments/new-fans-no-order")
    assert status == 200, body
    assert body["version"] == 2 and body["versions"] == [1, 2] and body["size"] == 0
    assert body["document"] == {"id": "new-fans-no-order", **changed}
    status, body = await beacon.call("GET", "/v1/segments/new-fans-no-order", params={"version": "1"})
    assert status == 200 and body["version"] == 1 and body["document"] == document
    assert paths(await error(beacon, 404, "GET", "/v1/segments/new-fans-no-order", params={"version": "7"})) == [
        "version"
    ]
    assert paths(await error(beacon, 422, "GET", "/v1/segments/new-fans-no-order", params={"version": "x"})) == [
        "version"
    ]

    # The PUT refreshed this process's registry: the partition owners here keep the new version.
    registry = beacon.server.app[keys.SERVICES].services.registry  # type: ignore[index, union-attr]
    assert [(c.segment.id, c.segment.version, c.segment.description) for c in registry.segments()] == [
        ("new-fans-no-order", 2, "v2")
    ]

    await beacon.call("PUT", "/v1/segments/vip", json=VIP)
    status, body = await beacon.call("GET", "/v1/segments")
    assert status == 200
    assert [(item["id"], item["version"], item["description"], item["size"]) for item in body["segments"]] == [
        ("new-fans-no-order", 2, "v2", 0),
        ("vip", 1, "", 0),
    ]

    status, body = await beacon.call("DELETE", "/v1/segments/new-fans-no-order")
    assert (status, body) == (200, {"id": "new-fans-no-order", "deleted": True})
    assert paths(await error(beacon, 404, "GET", "/v1/segments/new-fans-no-order")) == ["id"]
    assert paths(await error(beacon, 404, "DELETE", "/v1/segments/new-fans-no-order")) == ["id"]
    assert [c.segment.id for c in registry.segments()] == ["vip"]
    # Versions are never reused, even after a delete.
    status, body = await beacon.call("PUT", "/v1/segments/new-fans-no-order", json=document)
    assert (status, body["version"]) == (200, 3)


async def test_every_bad_definition_is_a_422_naming_its_path(beacon: Beacon) -> None:
    field_leaf = {"where": {"all": [{"tag": "vip"}, {"not": {"field": "amount", "op": ">", "value": 1}}]}}
    found = await error(beacon, 422, "PUT", "/v1/segments/s", json=field_leaf)
    assert paths(found) == ["where.all[1].not"] and "no event of its own" in found["message"]
    found = await error(beacon, 422, "PUT", "/v1/segments/s", json={**VIP, "colour": "red"})
    assert paths(found) == ["colour"]
    found = await error(beacon, 422, "PUT", "/v1/segments/s", json={"where": {**PAID_30D, "within": "30x"}})
    assert paths(found) == ["where.within"]
    found = await error(beacon, 422, "PUT", "/v1/segments/s", json={"where": {"did": {"event": "pay"}}})
    assert paths(found) == ["where.within"]
    found = await error(beacon, 422, "PUT", "/v1/segments/s", json={"id": "t", **VIP})
    assert paths(found) == ["id"]
    assert paths(await error(beacon, 422, "PUT", "/v1/segments/s", json={})) == ["where"]
    assert paths(await error(beacon, 422, "PUT", "/v1/segments/s", json=[1])) == ["body"]
    assert paths(await error(beacon, 422, "PUT", "/v1/segments/-bad", json=VIP)) == ["id"]
    assert paths(await error(beacon, 400, "PUT", "/v1/segments/s", data=b"{")) == ["body"]
    assert paths(await error(beacon, 404, "GET", "/v1/segments/s")) == ["id"]
    status, body = await beacon.call("GET", "/v1/segments")
    assert (status, body) == (200, {"segments": [], "next": None, "total": 0})  # nothing bad was stored

    status, body = await beacon.call("POST", "/v1/segments:validate", json=library("repurchase-due"))
    assert (status, body) == (200, {"valid": True, "id": "repurchase-due"})
    found = await error(beacon, 422, "POST", "/v1/segments:validate", json={"id": "x", **field_leaf})
    assert paths(found) == ["where.all[1].not"]
    found = await error(beacon, 422, "POST", "/v1/segments:validate", json=VIP)
    assert paths(found) == ["id"]  # an unsaved document names itself


async def test_segments_need_the_rules_scope(redis_url: str, redis_client: aioredis.Redis) -> None:
    api_keys = {"k-events": frozenset({"events"}), "k-rules": frozenset({"rules"})}
    settings = server_settings(redis_url, partitions=PARTITIONS, run_workers=False, api_keys=api_keys)
    async with running_beacon(settings, api_key="k-events") as beacon:
        for method, path, body in (
            ("PUT", "/v1/segments/vip", VIP),
            ("GET", "/v1/segments", None),
            ("GET", "/v1/segments/vip/members", None),
            ("POST", "/v1/segments:estimate", VIP),
        ):
            assert paths(await error(beacon, 403, method, path, json=body)) == ["Authorization"]
        rules = {"Authorization": "Bearer k-rules"}
        status, _ = await beacon.call("PUT", "/v1/segments/vip", json=VIP, headers=rules)
        assert status == 200


# -- members and sizes --------------------------------------------------------------------------------


async def test_members_are_paged_with_a_cursor_and_sizes_summed(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    await beacon.call("PUT", "/v1/segments/vip", json=VIP)
    # A large SET (paged by SSCAN) in partition 0 and a small one (returned whole) in partition 1.
    large = {f"big-{i}" for i in range(700)}
    small = {f"small-{i}" for i in range(5)}
    await redis_client.sadd(members_key(0, "vip"), *large)
    await redis_client.sadd(members_key(1, "vip"), *small)
    await redis_client.hset(sizes_key(0), "vip", 700)
    await redis_client.hset(sizes_key(1), "vip", 5)
    await redis_client.sadd(members_key(0, "other"), "not-vip")

    listed: list[str] = []
    pages = 0
    cursor = ""
    while True:
        status, body = await beacon.call("GET", "/v1/segments/vip/members", params={"cursor": cursor, "limit": "100"})
        assert status == 200, body
        assert set(body) == {"members", "cursor"}
        listed += body["members"]
        pages += 1
        cursor = body["cursor"]
        if not cursor:
            break
        assert pages < 100, "the cursor does not advance"
    assert len(listed) == len(set(listed)) and set(listed) == large | small
    assert pages >= 7  # 700 members 100 at a time: the limit is honoured (about)

    status, body = await beacon.call("GET", "/v1/segments/vip/members")
    assert status == 200 and body["cursor"] and 0 < len(body["members"]) < 705  # default limit 100

    status, body = await beacon.call("GET", "/v1/segments/vip")
    assert status == 200 and body["size"] == 705
    status, body = await beacon.call("GET", "/v1/segments")
    assert [(item["id"], item["size"]) for item in body["segments"]] == [("vip", 705)]

    for cursor in ("x", "0", "2:0", "0:-1", "1:x"):
        found = await error(beacon, 422, "GET", "/v1/segments/vip/members", params={"cursor": cursor})
        assert paths(found) == ["cursor"], cursor
    for limit in ("0", "1001", "ten", "-1", "1.5"):
        found = await error(beacon, 422, "GET", "/v1/segments/vip/members", params={"limit": limit})
        assert paths(found) == ["limit"], limit
    assert paths(await error(beacon, 404, "GET", "/v1/segments/nobody/members")) == ["id"]

    status, _ = await beacon.call("DELETE", "/v1/segments/vip")
    assert status == 200
    assert await redis_client.exists(members_key(0, "vip"), members_key(1, "vip")) == 0
    assert await redis_client.hget(sizes_key(0), "vip") is None and await redis_client.hget(sizes_key(1), "vip") is None
    assert await redis_client.scard(members_key(0, "other")) == 1  # other segments untouched


# -- estimates ----------------------------------------------------------------------------------------


def population(count: int) -> dict[str, UserState]:
    """`count` users: every third tagged vip, `points` = index, and pay history for every fifth (10 days
    ago, 1,200 in store) and every seventh (40 days ago, online)."""
    paid, summed = shape_of(PAID_30D), shape_of(STORE_SUM)
    online = shape_of(
        {"did_not": {"event": "pay", "where": {"field": "channel", "op": "==", "value": "online"}}, "within": "30d"}
    )
    users = {}
    for i in range(count):
        state = UserState(profile={"points": i}, tags={"vip"} if i % 3 == 0 else set())
        stamps = [T0 - 40 * DAY] * (i % 7 == 0) + [T0 - 10 * DAY] * (i % 5 == 0)
        if stamps:
            state.patterns[paid] = PatternState(stamps[-1], T0 + DAY, {"h": {"_": stamps}})
        if i % 5 == 0:
            state.patterns[summed] = PatternState(T0, T0 + DAY, {"h": {"_": [[T0 - 10 * DAY, 1200]]}})
        if i % 7 == 0:
            state.patterns[online] = PatternState(T0, T0 + DAY, {"h": {"_": [T0 - 40 * DAY]}})
        users[f"user-{i}"] = state
    return users


async def write_users(redis: aioredis.Redis, users: dict[str, UserState]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for user_id, state in users.items():
            pipe.set(user_key(partition_of(user_id, PARTITIONS), user_id, STATE), encode_user_state(state))
        await pipe.execute()


async def test_estimates_are_exact_over_a_small_population(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    await write_users(redis_client, population(300))
    # Not users' records: another family of a user, a record of a partition not configured, and one in a
    # partition that does not own its user.
    await redis_client.rpush(user_key(0, "user-0", TRACE), "{}")
    await redis_client.set(user_key(5, "ghost", STATE), encode_user_state(UserState(tags={"vip"})))
    stray = next(f"stray-{i}" for i in range(100) if partition_of(f"stray-{i}", PARTITIONS) == 0)
    await redis_client.set(user_key(1, stray, STATE), encode_user_state(UserState(tags={"vip"})))
    unreadable = "user-broken"
    await redis_client.set(user_key(partition_of(unreadable, PARTITIONS), unreadable, STATE), b"\xc1junk")

    cases: list[tuple[dict[str, Any], Callable[[int], bool]]] = [
        ({"where": {"tag": "vip"}}, lambda i: i % 3 == 0),
        (
            {"where": {"all": [{"tag": "vip"}, {"profile": "points", "op": ">=", "value": 150}]}},
            lambda i: i % 3 == 0 and i >= 150,
        ),
        ({"where": PAID_30D}, lambda i: i % 5 == 0),
        (
            {"where": {"did": {"event": "pay"}, "within": "60d", "count": {"op": ">=", "value": 2}}},
            lambda i: i % 35 == 0,
        ),
        ({"where": {"not": PAID_30D}}, lambda i: i % 5 != 0),
        ({"segment": library("store-not-online")}, lambda i: i % 5 == 0),
        ({"segment": library("repurchase-due")}, lambda i: i % 7 == 0 and i % 5 != 0),
    ]
    for body, member in cases:
        status, found = await beacon.call("POST", "/v1/segments:estimate", json=body)
        assert status == 200, found
        expected = sum(1 for i in range(300) if member(i))
        # The unreadable record is in the population and counted as a non-member (`not` included).
        assert {key: found[key] for key in ("estimate", "exact", "population", "sampled", "unreadable")} == {
            "estimate": expected,
            "exact": True,
            "population": 301,
            "sampled": 301,
            "unreadable": 1,
        }, body
        assert "error_bound" not in found and found["elapsed_ms"] >= 0


async def test_estimates_beyond_the_limit_come_from_a_hash_sample(
    beacon: Beacon, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    count, limit = 900, 100
    await write_users(redis_client, population(count))
    status, found = await beacon.call("POST", "/v1/segments:estimate", json={**VIP, "exact_limit": limit})
    assert status == 200, found

    # The sample, worked out independently: users whose 64-bit blake2b falls in the first 2**-k of the
    # space, for the smallest k leaving at most `limit` of them.
    digests = {
        f"user-{i}": int.from_bytes(hashlib.blake2b(f"user-{i}".encode(), digest_size=8).digest(), "big")
        for i in range(count)
    }
    share = 0
    while sum(1 for d in digests.values() if d < (1 << 64) >> share) > limit:
        share += 1
    sample = [int(user.removeprefix("user-")) for user, d in digests.items() if d < (1 << 64) >> share]
    matched = sum(1 for i in sample if i % 3 == 0)
    assert share >= 3 and limit / 2 <= len(sample) <= limit  # the test data does exercise sampling
    assert found["exact"] is False
    assert (found["population"], found["sampled"]) == (count, len(sample))
    assert found["estimate"] == round(count * matched / len(sample))
    assert found["error_bound"] == error_bound(count, len(sample), matched) > 0
    assert abs(found["estimate"] - count // 3) <= found["error_bound"]

    status, found = await beacon.call("POST", "/v1/segments:estimate", json=VIP)
    assert status == 200 and found["exact"] is True and found["estimate"] == count // 3
    # The module's bound is the default and the most a caller may ask for.
    monkeypatch.setattr(segment_estimate, "EXACT_LIMIT", limit)
    status, found = await beacon.call("POST", "/v1/segments:estimate", json=VIP)
    assert status == 200 and found["exact"] is False and found["sampled"] == len(sample)
    found = await error(beacon, 422, "POST", "/v1/segments:estimate", json={**VIP, "exact_limit": limit + 1})
    assert paths(found) == ["exact_limit"]


def test_the_error_bound_covers_the_truth_about_95_percent_of_the_time() -> None:
    """Many simple random samples of a known population: the bound holds in >= 93 % of them."""
    generator = random.Random(7)
    population_size, members = 10_000, 300
    for n in (100, 1_000):
        covered = 0
        trials = 400
        for _ in range(trials):
            m = sum(1 for index in generator.sample(range(population_size), n) if index < members)
            estimate = round(population_size * m / n)
            covered += abs(estimate - members) <= error_bound(population_size, n, m)
        assert covered / trials >= 0.93, (n, covered)
    # With no member in the sample, the bound is still positive (a plain Wald interval would be 0).
    assert error_bound(population_size, 100, 0) >= math.ceil(population_size * 2 / 100)


async def test_a_cluster_is_scanned_on_every_node(redis_cluster: Any) -> None:
    redis = await flushed_client(redis_cluster.url)
    try:
        await write_users(redis, population(400))
        compiled = CompiledSegment.build(load_segment({"id": "v", **VIP}, segment_id=None, lateness_ms=0))
        found = await estimate_segment(redis, PARTITIONS, compiled, T0)
        assert (found.estimate, found.exact, found.population, found.sampled) == (134, True, 400, 400)
        found = await estimate_segment(redis, PARTITIONS, compiled, T0, limit=150)
        assert found.exact is False and found.population == 400 and 75 <= found.sampled <= 150
        assert found.error_bound is not None and abs(found.estimate - 134) <= found.error_bound
    finally:
        await redis.aclose()


async def test_every_bad_estimate_request_is_a_4xx_naming_its_field(beacon: Beacon) -> None:
    assert paths(await error(beacon, 422, "POST", "/v1/segments:estimate", json={})) == ["body"]
    both = {**VIP, "segment": {"id": "v", **VIP}}
    assert paths(await error(beacon, 422, "POST", "/v1/segments:estimate", json=both)) == ["body"]
    assert paths(await error(beacon, 422, "POST", "/v1/segments:estimate", json={**VIP, "colour": 1})) == ["colour"]
    assert paths(await error(beacon, 422, "POST", "/v1/segments:estimate", json=[])) == ["body"]
    assert paths(await error(beacon, 400, "POST", "/v1/segments:estimate", data=b"")) == ["body"]
    field_leaf = {"field": "amount", "op": ">", "value": 1}
    found = await error(beacon, 422, "POST", "/v1/segments:estimate", json={"where": {"any": [field_leaf]}})
    assert paths(found) == ["where.any[0]"]
    found = await error(beacon, 422, "POST", "/v1/segments:estimate", json={"where": {**PAID_30D, "within": "x"}})
    assert paths(found) == ["where.within"]
    found = await error(beacon, 422, "POST", "/v1/segments:estimate", json={"segment": {"where": {"tag": "vip"}}})
    assert paths(found) == ["segment.id"]
    found = await error(
        beacon, 422, "POST", "/v1/segments:estimate", json={"segment": {"id": "s", "where": {"all": [field_leaf]}}}
    )
    assert paths(found) == ["segment.where.all[0]"]
    for limit in (99, 200_001, True, 1.5, "100"):
        found = await error(beacon, 422, "POST", "/v1/segments:estimate", json={**VIP, "exact_limit": limit})
        assert paths(found) == ["exact_limit"], limit


# -- the library and the description ------------------------------------------------------------------


async def test_the_library_segments_validate_and_store(beacon: Beacon) -> None:
    names = sorted(path.stem for path in LIBRARY.glob("*.json"))
    assert names == ["bought-a-not-b", "new-fans-no-order", "points-expiring", "repurchase-due", "store-not-online"]
    for name in names:
        document = library(name)
        assert document["id"] == name and document.get("description"), name
        load_segment(document, segment_id=name, lateness_ms=2000)
        status, body = await beacon.call("PUT", f"/v1/segments/{name}", json=document)
        assert status == 200, body


async def test_openapi_describes_the_segments(beacon: Beacon) -> None:
    status, document = await beacon.call("GET", "/openapi.json")
    assert status == 200
    routes = {resource.canonical for resource in beacon.server.app.router.resources()}  # type: ignore[union-attr]
    for path in (
        "/v1/segments",
        "/v1/segments:validate",
        "/v1/segments:estimate",
        "/v1/segments/{id}",
        "/v1/segments/{id}/members",
    ):
        assert path in document["paths"], path
        assert path in routes, path
    assert document["paths"]["/v1/segments:estimate"]["post"]["security"] == [{"bearer": ["rules"]}]
    schema = document["components"]["schemas"]["SegmentEstimateBody"]
    assert set(schema["properties"]) == set(ESTIMATE_FIELDS)
