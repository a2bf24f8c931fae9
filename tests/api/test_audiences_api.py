"""Audience endpoints over a real socket, against a single Redis and a Redis Cluster: static lists uploaded as
JSON, CSV and NDJSON (replaced whole, sized, paged across partitions), expressions over segments and lists
(each operation checked against the same operation on Python sets), the hash sample, and every bad input a
4xx naming its field.

Segment membership is written by hand into the segments' SETs (`cep.segment_members.members_key`) and no
worker runs: these tests check audiences, not the runtime that keeps segments live.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from cep import audience_members
from cep.audience_members import in_sample, list_key
from cep.events import partition_of
from cep.segment_members import members_key
from tests.conftest import flushed_client
from tests.harness import Beacon, running_beacon, server_settings

PARTITIONS = 4
CSV = {"Content-Type": "text/csv"}
NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("redis_server").url)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = await flushed_client(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    settings = server_settings(redis_url, partitions=PARTITIONS, run_workers=False)
    async with running_beacon(settings) as running:
        yield running


async def error(beacon: Beacon, status: int, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """The error of a call expected to fail with `status`."""
    found, body = await beacon.call(method, path, **kwargs)
    assert found == status, body
    assert set(body) == {"error"}, body
    return dict(body["error"])


async def members(beacon: Beacon, audience_id: str, limit: int = 100) -> list[str]:
    """Every member, walked page by page."""
    listed: list[str] = []
    cursor = ""
    for _ in range(10_000):
        status, body = await beacon.call(
            "GET", f"/v1/audiences/{audience_id}/members", params={"cursor": cursor, "limit": str(limit)}
        )
        assert status == 200, body
        listed += body["members"]
        cursor = body["cursor"]
        if not cursor:
            assert len(listed) == len(set(listed)), "a member listed twice"
            return listed
    raise AssertionError("the cursor does not advance")


async def size(beacon: Beacon, audience_id: str) -> int:
    status, body = await beacon.call("GET", f"/v1/audiences/{audience_id}")
    assert status == 200, body
    return int(body["size"])


async def put_segment(beacon: Beacon, redis: aioredis.Redis, segment_id: str, users: set[str]) -> None:
    """A stored segment whose member SETs hold `users` (as the partition owners would have written)."""
    status, body = await beacon.call("PUT", f"/v1/segments/{segment_id}", json={"where": {"tag": segment_id}})
    assert status == 200, body
    for user in users:
        await redis.sadd(members_key(partition_of(user, PARTITIONS), segment_id), user)


async def put(beacon: Beacon, audience_id: str, **kwargs: Any) -> dict[str, Any]:
    status, body = await beacon.call("PUT", f"/v1/audiences/{audience_id}", **kwargs)
    assert status == 200, body
    return dict(body)


# -- static lists -------------------------------------------------------------------------------------


async def test_lists_upload_as_json_csv_and_ndjson_and_replace_whole(
    beacon: Beacon, redis_client: aioredis.Redis
) -> None:
    first = {f"u{i}" for i in range(1500)}
    assert await put(beacon, "vip-list", json={"ids": [*sorted(first), "u1", "u2"]}) == {
        "id": "vip-list",
        "kind": "list",
        "size": 1500,  # duplicates count once
    }
    spread = {partition_of(user, PARTITIONS) for user in first}
    assert spread == set(range(PARTITIONS))
    for partition in range(PARTITIONS):
        raw = await redis_client.smembers(list_key(partition, "vip-list"))
        stored = {m.decode() if isinstance(m, bytes) else m for m in raw}
        assert stored == {u for u in first if partition_of(u, PARTITIONS) == partition}
        assert await redis_client.ttl(list_key(partition, "vip-list")) == -1  # the temporary key's TTL is gone
    assert set(await members(beacon, "vip-list", limit=70)) == first
    assert await size(beacon, "vip-list") == 1500

    # CSV: a byte order mark, a header, CRLF line ends, a quoted id with a comma, blank lines, no final newline.
    csv = '\ufeffuser_id\r\nc1\r\n"c,2"\r\n\r\nc3\r\n"c""4"\r\nc1\r\nc5'.encode()
    assert (await put(beacon, "vip-list", data=csv, headers=CSV))["size"] == 5
    assert set(await members(beacon, "vip-list")) == {"c1", "c,2", "c3", 'c"4', "c5"}  # the JSON list is gone

    lines = "\n".join(json.dumps({"user_id": f"n{i}"}) for i in range(3000)) + "\n\n"
    assert (await put(beacon, "vip-list", data=lines.encode(), headers=NDJSON))["size"] == 3000
    assert set(await members(beacon, "vip-list", limit=1000)) == {f"n{i}" for i in range(3000)}

    assert (await put(beacon, "vip-list", json={"ids": []}))["size"] == 0
    assert await members(beacon, "vip-list") == []
    status, body = await beacon.call("GET", "/v1/audiences/vip-list")
    assert status == 200 and body["kind"] == "list" and body["size"] == 0 and body["created_ms"] <= body["updated_ms"]


async def test_a_failed_upload_leaves_the_list_as_it_was(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    await put(beacon, "l", json={"ids": ["a", "b"]})
    found = await error(beacon, 422, "PUT", "/v1/audiences/l", data=b"user_id\nx1\nx{2}\nx3\n", headers=CSV)
    assert found["path"] == "line[3]" and "line 3" in found["message"]
    found = await error(beacon, 422, "PUT", "/v1/audiences/l", data=b"x1,x2\n", headers=CSV)
    assert found["path"] == "line[1]"
    found = await error(beacon, 422, "PUT", "/v1/audiences/l", data=b'{"user_id": "a"}\n{"id": "b"}\n', headers=NDJSON)
    assert found["path"] == "line[2].id"
    found = await error(
        beacon, 422, "PUT", "/v1/audiences/l", data=b'{"user_id": "a"}\n\n{"user_id": 3}', headers=NDJSON
    )
    assert found["path"] == "line[3].user_id"
    found = await error(beacon, 400, "PUT", "/v1/audiences/l", data=b'{"user_id": "a"}\n{', headers=NDJSON)
    assert found["path"] == "line[2]"
    assert (await error(beacon, 422, "PUT", "/v1/audiences/l", json={"ids": ["a", ""]}))["path"] == "ids[1]"
    assert (await error(beacon, 422, "PUT", "/v1/audiences/l", json={"ids": "a"}))["path"] == "ids"
    assert (await error(beacon, 422, "PUT", "/v1/audiences/l", json={"ids": [], "expr": "seg:x"}))["path"] == "body"
    assert (await error(beacon, 422, "PUT", "/v1/audiences/l", json={"ids": [], "colour": 1}))["path"] == "colour"
    assert (await error(beacon, 422, "PUT", "/v1/audiences/l", json={"id": "m", "ids": []}))["path"] == "id"
    assert (await error(beacon, 422, "PUT", "/v1/audiences/-l", json={"ids": []}))["path"] == "id"
    found = await error(beacon, 415, "PUT", "/v1/audiences/l", data=b"a", headers={"Content-Type": "text/plain"})
    assert found["path"] == "Content-Type"
    assert set(await members(beacon, "l")) == {"a", "b"} and await size(beacon, "l") == 2
    if not isinstance(redis_client, aioredis.RedisCluster):
        assert await redis_client.keys("*audtmp*") == []  # aborted uploads leave nothing behind


async def test_an_upload_over_the_limit_is_a_413(
    redis_url: str, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Streamed bodies are bounded by their ids, not by the body size limit (which JSON bodies keep).
    limit = 64 * 1024
    settings = server_settings(redis_url, partitions=PARTITIONS, run_workers=False, max_body_bytes=limit)
    async with running_beacon(settings) as beacon:
        streamed = "".join(f"id-{i:09d}\n" for i in range(limit // 10)).encode()
        assert len(streamed) > limit
        assert (await put(beacon, "big", data=streamed, headers=CSV))["size"] == limit // 10
        too_big = {"ids": [f"id-{i:09d}" for i in range(limit // 10)]}
        assert (await error(beacon, 413, "PUT", "/v1/audiences/big", json=too_big))["path"] == "body"
        monkeypatch.setattr(audience_members, "MAX_IDS", 5)
        await put(beacon, "l", data=b"a\nb\nc\nd\ne\n", headers=CSV)
        found = await error(beacon, 413, "PUT", "/v1/audiences/l", data=b"a\nb\nc\nd\ne\nf\n", headers=CSV)
        assert found["path"] == "body"
        assert await size(beacon, "l") == 5  # the refused upload changed nothing


# -- expressions --------------------------------------------------------------------------------------


async def test_each_operation_matches_the_same_operation_on_sets(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    vip = {f"u{i}" for i in range(0, 400)}
    buyers = {f"u{i}" for i in range(300, 900)}
    churned = {f"u{i}" for i in range(350, 380)}
    listed = {f"u{i}" for i in range(850, 1000)} | {"only-listed"}
    await put_segment(beacon, redis_client, "vip", vip)
    await put_segment(beacon, redis_client, "buyers", buyers)
    await put_segment(beacon, redis_client, "churned", churned)
    await put(beacon, "imported", json={"ids": sorted(listed)})

    cases: dict[str, tuple[Any, set[str]]] = {
        "u": ({"union": ["seg:vip", "aud:imported"]}, vip | listed),
        "i": ({"intersect": ["seg:vip", "seg:buyers"]}, vip & buyers),
        "x": ({"exclude": {"from": "seg:buyers", "minus": ["seg:vip", "aud:imported"]}}, buyers - vip - listed),
        "nested": (
            {
                "exclude": {
                    "from": {"union": ["seg:vip", "seg:buyers"]},
                    "minus": [{"intersect": ["seg:vip", "seg:churned"]}],
                }
            },
            (vip | buyers) - (vip & churned),
        ),
        "one": ({"union": ["seg:vip"]}, vip),
        "of-an-audience": ({"intersect": ["aud:x", "aud:imported"]}, (buyers - vip - listed) & listed),
        "three": ({"intersect": ["seg:vip", "seg:churned", "seg:buyers"]}, vip & churned & buyers),
    }
    for audience_id, (expr, expected) in cases.items():
        body = await put(beacon, audience_id, json={"expr": expr})
        assert body == {"id": audience_id, "kind": "expr", "size": len(expected)}, audience_id
        assert await size(beacon, audience_id) == len(expected), audience_id
        assert set(await members(beacon, audience_id, limit=37)) == expected, audience_id
    status, body = await beacon.call("GET", "/v1/audiences/nested")
    assert status == 200 and body["expr"] == cases["nested"][0]

    # Lazily evaluated: a segment's members changing changes the expression's size at once.
    await redis_client.sadd(members_key(partition_of("late", PARTITIONS), "vip"), "late")
    assert await size(beacon, "u") == len(vip | listed) + 1
    status, body = await beacon.call("GET", "/v1/audiences")
    assert status == 200
    assert {item["id"]: (item["kind"], item["size"]) for item in body["audiences"]}["imported"] == ("list", len(listed))
    assert [item["id"] for item in body["audiences"]] == sorted([*cases, "imported"])
    if not isinstance(redis_client, aioredis.RedisCluster):
        assert await redis_client.keys("*audx*") == [] and await redis_client.keys("*audsnap*") == []


async def test_a_sample_takes_its_percent_stably(beacon: Beacon) -> None:
    population = {f"user-{i}" for i in range(10_000)}
    await put(beacon, "all", data=("\n".join(sorted(population)) + "\n").encode(), headers=CSV)
    body = await put(beacon, "tenth", json={"expr": {"sample": {"of": "aud:all", "percent": 10}}})
    assert 850 <= body["size"] <= 1150, body  # 10 % of 10,000, five standard deviations either side
    first = set(await members(beacon, "tenth", limit=1000))
    assert len(first) == body["size"]
    assert first == {user for user in population if in_sample(user, "tenth", 10)}
    assert set(await members(beacon, "tenth", limit=1000)) == first  # stable
    other = await put(beacon, "another-tenth", json={"expr": {"sample": {"of": "aud:all", "percent": 10}}})
    assert set(await members(beacon, "another-tenth", limit=1000)) != first  # salted by the audience id
    assert 850 <= other["size"] <= 1150
    half = await put(beacon, "half", json={"expr": {"sample": {"of": "aud:all", "percent": 50}}})
    assert 4750 <= half["size"] <= 5250
    whole = await put(beacon, "whole", json={"expr": {"sample": {"of": "aud:all", "percent": 100}}})
    assert whole["size"] == 10_000


async def test_bad_expressions_are_422s_naming_their_path(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    await put_segment(beacon, redis_client, "vip", {"a"})
    await put(beacon, "base", json={"ids": ["a", "b"]})

    async def bad(expr: Any, audience_id: str = "e") -> dict[str, Any]:
        return await error(beacon, 422, "PUT", f"/v1/audiences/{audience_id}", json={"expr": expr})

    found = await bad({"union": ["seg:vip", "seg:nope"]})
    assert found["path"] == "expr.union[1]" and "nope" in found["message"]
    assert (await bad({"exclude": {"from": "seg:vip", "minus": ["aud:nope"]}}))["path"] == "expr.exclude.minus[0]"
    assert (await bad({"union": [{"intersect": ["seg:vip", "vip"]}]}))["path"] == "expr.union[0].intersect[1]"
    assert (await bad({"union": []}))["path"] == "expr.union"
    assert (await bad({"sample": {"of": "seg:vip", "percent": 0}}))["path"] == "expr.sample.percent"
    assert (await bad({"sample": {"of": "seg:vip", "percent": True}}))["path"] == "expr.sample.percent"
    assert (await bad({"sample": {"of": "seg:vip"}}))["path"] == "expr.sample"
    assert (await bad({"dedupe": ["seg:vip"]}))["path"] == "expr.dedupe"
    assert (await bad({"union": ["seg:vip"], "intersect": ["seg:vip"]}))["path"] == "expr"
    assert (await bad(7))["path"] == "expr"
    deep: Any = "seg:vip"
    for _ in range(20):
        deep = {"union": [deep]}
    assert (await bad(deep))["path"].startswith("expr.union[0]")

    # Cycles: to itself, and through another audience.
    assert (await bad({"union": ["aud:e"]}))["path"] == "expr.union[0]"
    await put(beacon, "a", json={"expr": {"union": ["aud:base"]}})
    await put(beacon, "b", json={"expr": {"intersect": ["aud:a", "seg:vip"]}})
    found = await bad({"union": ["aud:base", {"sample": {"of": "aud:b", "percent": 5}}]}, audience_id="a")
    assert found["path"] == "expr.union[1].sample.of" and "aud:a -> aud:b -> aud:a" in found["message"]
    assert await size(beacon, "b") == 1  # the refused PUT changed nothing

    # An audience another expression names cannot be deleted until that one changes.
    found = await error(beacon, 409, "DELETE", "/v1/audiences/a")
    assert found["path"] == "id" and "aud:b" in found["message"]
    status, body = await beacon.call("DELETE", "/v1/audiences/b")
    assert (status, body) == (200, {"id": "b", "deleted": True})
    status, _ = await beacon.call("DELETE", "/v1/audiences/a")
    assert status == 200
    assert (await error(beacon, 404, "GET", "/v1/audiences/a"))["path"] == "id"
    assert (await error(beacon, 404, "DELETE", "/v1/audiences/a"))["path"] == "id"
    assert (await error(beacon, 404, "GET", "/v1/audiences/a/members"))["path"] == "id"
    found = await error(beacon, 422, "GET", "/v1/audiences/base/members", params={"cursor": "9:0"})
    assert found["path"] == "cursor"
    assert (await error(beacon, 422, "GET", "/v1/audiences/base/members", params={"limit": "0"}))["path"] == "limit"

    # A list turned into an expression drops its SETs.
    await put(beacon, "base", json={"expr": {"union": ["seg:vip"]}})
    for partition in range(PARTITIONS):
        assert not await redis_client.exists(list_key(partition, "base"))
    assert set(await members(beacon, "base")) == {"a"}


async def test_audiences_need_the_rules_scope(redis_url: str, redis_client: aioredis.Redis) -> None:
    api_keys = {"k-events": frozenset({"events"})}
    settings = server_settings(redis_url, partitions=PARTITIONS, run_workers=False, api_keys=api_keys)
    async with running_beacon(settings, api_key="k-events") as beacon:
        for method, path in (("PUT", "/v1/audiences/a"), ("GET", "/v1/audiences"), ("GET", "/v1/audiences/a/members")):
            assert (await error(beacon, 403, method, path, json={"ids": []}))["path"] == "Authorization"
