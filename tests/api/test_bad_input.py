"""Bad input gets a clear 4xx JSON error naming the field, and leaves no half-written state."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from tests.api.test_end_to_end import BIG_SPEND, pay, settled
from tests.harness import Beacon, running_beacon, server_settings

T0 = 1_800_000_000_000


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> Any:
    settings = server_settings(redis_url, max_body_bytes=64 * 1024, max_batch_events=10)
    async with running_beacon(settings) as running:
        yield running


def assert_error(status: int, body: Any, expected_status: int, code: str, path: str | None) -> None:
    assert status == expected_status, body
    assert body["error"]["code"] == code, body
    assert body["error"]["path"] == path, body
    assert body["error"]["message"]


async def test_malformed_json_body(beacon: Beacon) -> None:
    status, body = await beacon.call(
        "POST", "/v1/events", data=b'{"user_id": "u", ', headers={"Content-Type": "application/json"}
    )
    assert_error(status, body, 400, "malformed", "body")


async def test_malformed_msgpack_body(beacon: Beacon) -> None:
    status, body = await beacon.call(
        "POST", "/v1/events", data=b"\xc1\xff\x00", headers={"Content-Type": "application/msgpack"}
    )
    assert_error(status, body, 400, "malformed", "body")


async def test_msgpack_maps_with_integer_keys_are_400_not_500(beacon: Beacon) -> None:
    """Issue 15, finding 5: a msgpack map mixing key types was among the bodies that answered 500."""
    for document in (
        {"user_id": "u", "type": "pay", "attrs": {1: "x", "a": "y"}},
        {"events": [{"user_id": "u", "type": "pay"}, {"user_id": "u", "type": "pay", 7: 1}]},
    ):
        headers = {"Content-Type": "application/msgpack"}
        status, body = await beacon.call("POST", "/v1/events", data=msgpack.packb(document), headers=headers)
        assert_error(status, body, 400, "malformed", "body")


async def test_nan_is_not_json(beacon: Beacon) -> None:
    status, body = await beacon.call(
        "POST",
        "/v1/events",
        data=b'{"user_id": "u", "type": "pay", "attrs": {"x": NaN}}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(status, body, 400, "malformed", "body")


@pytest.mark.parametrize(
    ("event", "path"),
    [
        ({"type": "pay"}, "user_id"),
        ({"user_id": 42, "type": "pay"}, "user_id"),
        ({"user_id": "a{b}", "type": "pay"}, "user_id"),
        ({"user_id": "u", "type": "has space"}, "type"),
        ({"user_id": "u", "type": "pay", "ts": "yesterday"}, "ts"),
        ({"user_id": "u", "type": "pay", "ts": 1700000000}, "ts"),
        ({"user_id": "u", "type": "pay", "attrs": [1, 2]}, "attrs"),
        ({"user_id": "u", "type": "pay", "colour": "red"}, "colour"),
        ({"user_id": "u\x07", "type": "pay"}, "user_id"),
        # msgpack (the stream's codec) cannot carry these: refused here, not a failed append (a 500).
        ({"user_id": "u", "type": "pay", "attrs": {"n": 2**64}}, "attrs.n"),
        ({"user_id": "u", "type": "pay", "attrs": {"a": [1, {"n": -(2**63) - 1}]}}, "attrs.a[1].n"),
        ({"user_id": "u", "type": "pay", "attrs": {"a": {"b": {"c": {"d": {"e": 1}}}}}}, "attrs.a.b.c.d.e"),
    ],
)
async def test_single_event_field_errors(beacon: Beacon, event: dict[str, Any], path: str) -> None:
    status, body = await beacon.call("POST", "/v1/events", json=event)
    assert_error(status, body, 422, "invalid", path)


async def test_batch_keeps_good_items_and_reports_bad_ones(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    await beacon.put_ruleset(BIG_SPEND)
    events = [pay("ok-1", 1000), {"user_id": "bad", "type": "pay", "ts": -1}, pay("ok-2", 2000)]
    status, body = await beacon.post_events(events)
    assert status == 200
    assert len(body["accepted"]) == 2
    assert body["errors"] == [
        {"index": 1, "code": "invalid", "message": body["errors"][0]["message"], "path": "events[1].ts"}
    ]
    await beacon.wait_actions("ok-2", 2)
    await settled(redis_client)
    assert await beacon.actions("bad") == []


async def test_batch_with_no_good_item_is_422(beacon: Beacon) -> None:
    status, body = await beacon.post_events([{"user_id": "u"}])
    assert_error(status, body, 422, "invalid", "events")
    assert body["errors"][0]["path"] == "events[0].type"


async def test_oversized_batch_and_body(beacon: Beacon) -> None:
    status, body = await beacon.post_events([pay(f"u{i}", 1) for i in range(11)])
    assert_error(status, body, 413, "too_large", "events")
    big = {"user_id": "u", "type": "pay", "attrs": {"blob": "x" * 70_000}}
    status, body = await beacon.call("POST", "/v1/events", json=big)
    assert_error(status, body, 413, "too_large", "body")
    status, body = await beacon.call(
        "POST", "/v1/events", data=msgpack.packb({"events": "nope"}), headers={"Content-Type": "application/msgpack"}
    )
    assert_error(status, body, 422, "invalid", "events")


async def test_bad_ruleset_is_422_with_path_and_changes_nothing(beacon: Beacon) -> None:
    assert await beacon.put_ruleset(BIG_SPEND) == 1
    broken = {
        "id": "big-spend",
        "rules": [
            {
                "id": "r",
                "when": {"absence": {"first": {"event": "a"}, "missing": {"event": "b"}, "within": "30x"}},
                "then": [{"action": "coupon", "coupon_id": "C"}],
            }
        ],
    }
    status, body = await beacon.call("PUT", "/v1/rulesets/big-spend", json=broken)
    assert_error(status, body, 422, "invalid", "rules[0].when.absence.within")
    assert "30x" in body["error"]["message"]
    status, body = await beacon.call("GET", "/v1/rulesets/big-spend")
    assert status == 200 and body["version"] == 1 and body["versions"] == [1]

    status, body = await beacon.call("POST", "/v1/rulesets:validate", json=broken)
    assert_error(status, body, 422, "invalid", "rules[0].when.absence.within")
    status, body = await beacon.call("PUT", "/v1/rulesets/other", json={**BIG_SPEND, "id": "big-spend"})
    assert_error(status, body, 422, "invalid", "id")


async def test_unknown_ruleset_and_path(beacon: Beacon) -> None:
    status, body = await beacon.call("GET", "/v1/rulesets/nope")
    assert_error(status, body, 404, "not_found", "id")
    status, body = await beacon.call("DELETE", "/v1/rulesets/nope")
    assert_error(status, body, 404, "not_found", "id")
    status, body = await beacon.call("GET", "/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await beacon.call("GET", "/v1/actions", params={"limit": "zero"})
    assert_error(status, body, 422, "invalid", "limit")
    # A digit that int() refuses (isdigit() alone let it through to a ValueError and a 500).
    status, body = await beacon.call("GET", "/v1/actions", params={"limit": "\u00b2"})
    assert_error(status, body, 422, "invalid", "limit")
    status, body = await beacon.call("GET", "/v1/dead-letters", params={"limit": "\u00b2"})
    assert_error(status, body, 422, "invalid", "limit")


async def test_profile_patch_errors(beacon: Beacon) -> None:
    status, body = await beacon.call("PATCH", "/v1/users/u1", json={"atrs": {}})
    assert_error(status, body, 422, "invalid", "atrs")
    status, body = await beacon.call("PATCH", "/v1/users/u1", json={"add_tags": "vip"})
    assert_error(status, body, 422, "invalid", "add_tags")
    status, body = await beacon.call("GET", "/v1/users/u1")
    assert body["tags"] == [] and body["attrs"] == {}


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"add_tags": ["x" * 1_000]}, "add_tags[0]"),
        ({"add_tags": [f"t{i}" for i in range(257)]}, "add_tags"),
        ({"attrs": {f"a{i}": i for i in range(257)}}, "attrs"),
        ({"attrs": {"a" * 65: 1}}, "attrs"),
        ({"attrs": {"n": 2**64}}, "attrs.n"),
    ],
)
async def test_profile_patch_is_bounded(beacon: Beacon, patch: dict[str, Any], path: str) -> None:
    status, body = await beacon.call("PATCH", "/v1/users/u2", json=patch)
    assert_error(status, body, 422, "invalid", path)


async def test_a_profile_cannot_grow_past_its_bounds_over_several_patches(beacon: Beacon) -> None:
    for start in (0, 100, 200):
        status, body = await beacon.call(
            "PATCH", "/v1/users/u3", json={"attrs": {f"a{i}": i for i in range(start, start + 100)}}
        )
    assert_error(status, body, 422, "invalid", "attrs")  # 200 stored + 100 more > 256
    status, body = await beacon.call("GET", "/v1/users/u3")
    assert len(body["attrs"]) == 200


async def test_unreadable_bodies_are_4xx_not_500(beacon: Beacon) -> None:
    deep = b"[" * 20_000 + b"]" * 20_000  # within the body limit, far past the parser's recursion limit
    status, body = await beacon.call("POST", "/v1/events", data=deep, headers={"Content-Type": "application/json"})
    assert_error(status, body, 400, "malformed", "body")
    deep_msgpack = b"\x91" * 60_000 + b"\xc0"
    status, body = await beacon.call(
        "POST", "/v1/events", data=deep_msgpack, headers={"Content-Type": "application/msgpack"}
    )
    assert_error(status, body, 400, "malformed", "body")
    for text in (
        '{"user_id": "u\\ud800", "type": "pay"}',
        '{"user_id": "u", "type": "pay", "attrs": {"k": "\\udfff"}}',
    ):
        status, body = await beacon.call("POST", "/v1/events", data=text, headers={"Content-Type": "application/json"})
        assert status == 422, body
    status, body = await beacon.call(
        "POST", "/v1/events", json={"user_id": "u", "type": "pay", "ts": 4_000_000_000_000}
    )
    assert_error(status, body, 422, "invalid", "ts")  # 2096: far past BEACON_MAX_FUTURE_MS


async def test_auth_scopes(redis_url: str, redis_client: aioredis.Redis) -> None:
    settings = server_settings(
        redis_url, api_keys={"ingest-key": frozenset({"events"}), "root": frozenset({"rules", "events", "admin"})}
    )
    async with running_beacon(settings) as beacon:
        status, body = await beacon.call("GET", "/v1/rulesets")
        assert_error(status, body, 401, "unauthorized", "Authorization")
        status, body = await beacon.call("GET", "/v1/rulesets", headers={"Authorization": "Bearer wrong"})
        assert_error(status, body, 401, "unauthorized", "Authorization")
        status, body = await beacon.call("GET", "/v1/rulesets", headers={"Authorization": "Bearer ingest-key"})
        assert_error(status, body, 403, "forbidden", "Authorization")
        status, _ = await beacon.call("GET", "/v1/rulesets", headers={"Authorization": "Bearer root"})
        assert status == 200
        status, _ = await beacon.call(
            "POST", "/v1/events", json=pay("u", 1), headers={"Authorization": "Bearer ingest-key"}
        )
        assert status == 200
        status, _ = await beacon.call("GET", "/metrics")
        assert status == 200
        status, _ = await beacon.call("GET", "/healthz")
        assert status == 200


async def test_one_patch_s_attributes_are_bounded_in_bytes(redis_url: str, redis_client: aioredis.Redis) -> None:
    async with running_beacon(server_settings(redis_url, max_body_bytes=1024 * 1024)) as beacon:
        status, body = await beacon.call("PATCH", "/v1/users/u4", json={"attrs": {"blob": "x" * 70_000}})
        assert_error(status, body, 422, "invalid", "attrs")


async def test_an_event_too_far_ahead_of_the_server_clock_is_refused_alone(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    clock = ManualClock(T0)
    async with running_beacon(server_settings(redis_url, max_future_ms=60_000), clock=clock) as beacon:
        events = [
            {"user_id": "u", "type": "pay", "ts": T0 + 30_000},
            {"user_id": "u", "type": "pay", "ts": T0 + 120_000},
        ]
        status, body = await beacon.post_events(events)
        assert status == 200 and len(body["accepted"]) == 1, body
        assert [(error["index"], error["path"]) for error in body["errors"]] == [(1, "events[1].ts")]
