"""Identity endpoints and events by alias over a real socket and a real Redis: every bad input a 4xx naming its
field, aliases over HTTP (JSON, msgpack) and the WebSocket, concurrent first events of one alias agreeing on
one user, and two links in opposite directions at once ending in one user (no loop of forwards).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from cep import handoff, streams
from cep.events import decode_batch
from tests.harness import Beacon, eventually, running_beacon, server_settings
from tests.test_metrics import scrape, value

T0 = 1_767_225_600_000
PARTITIONS = 2


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    settings = server_settings(redis_url, partitions=PARTITIONS)
    async with running_beacon(settings, clock=ManualClock(T0)) as running:
        yield running


async def quiet(redis: aioredis.Redis) -> None:
    """Every stream committed and every handoff relayed."""

    async def probe() -> tuple[int, int]:
        waiting = sum([await handoff.pending(redis, partition) for partition in range(PARTITIONS)])
        return await streams.backlog(redis, PARTITIONS), waiting

    for _ in range(2):  # twice: a commit may hand an entry on just after a probe saw both empty
        assert await eventually(probe, lambda found: found == (0, 0), timeout_s=10) == (0, 0)


async def stream_users(redis: aioredis.Redis) -> dict[str, str]:
    """Event id -> user id of every event in the partitions' streams."""
    found = {}
    for partition in range(PARTITIONS):
        for _, fields in await redis.xrange(streams.events_key(partition)):
            if streams.BATCH_FIELD in fields:
                found.update({event.event_id: event.user_id for event in decode_batch(fields[streams.BATCH_FIELD])})
    return found


def alias(kind: str, alias_id: str) -> dict[str, str]:
    return {"type": kind, "id": alias_id}


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"aliases": [alias("phone", "1")]}, "user_id"),
        ({"user_id": "u1"}, "aliases"),
        ({"user_id": "u1", "aliases": []}, "aliases"),
        ({"user_id": "u1", "aliases": "phone:1"}, "aliases"),
        ({"user_id": "u1", "aliases": [alias("phone", "1"), alias("email", "a@b")]}, "aliases[1].type"),
        ({"user_id": "u1", "aliases": [alias("phone", "{1}")]}, "aliases[0].id"),
        ({"user_id": "u1", "aliases": [alias("phone", "")]}, "aliases[0].id"),
        ({"user_id": "u1", "aliases": [alias("phone", "1" * 101)]}, "aliases[0].id"),
        ({"user_id": "u1", "aliases": [{"type": "phone"}]}, "aliases[0].id"),
        ({"user_id": "u1", "aliases": [{"type": "phone", "id": "1", "x": 1}]}, "aliases[0].x"),
        ({"user_id": "u1", "aliases": ["phone:1"]}, "aliases[0]"),
        ({"user_id": "u1", "aliases": [alias("phone", str(n)) for n in range(33)]}, "aliases"),
        ({"user_id": "u{1}", "aliases": [alias("phone", "1")]}, "user_id"),
        ({"user_id": 7, "aliases": [alias("phone", "1")]}, "user_id"),
        ({"user_id": "u1", "aliases": [alias("phone", "1")], "merge": True}, "merge"),
        ([], "body"),
    ],
)
async def test_a_bad_link_is_a_422_naming_the_field(beacon: Beacon, body: Any, path: str) -> None:
    status, reply = await beacon.call("POST", "/v1/identities", json=body)
    assert status == 422, reply
    assert reply["error"]["path"] == path, reply


async def test_a_body_that_is_not_json_is_a_400(beacon: Beacon) -> None:
    status, reply = await beacon.call(
        "POST", "/v1/identities", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert (status, reply["error"]["path"]) == (400, "body"), reply


async def test_bad_aliases_in_a_batch_are_refused_per_item_and_the_rest_accepted(
    beacon: Beacon, redis_client: aioredis.Redis
) -> None:
    events: list[Any] = [
        {"alias": alias("openid", "o-1"), "type": "view", "event_id": "good-0"},
        {"alias": alias("email", "x"), "type": "view"},
        {"alias": {"type": "openid"}, "type": "view"},
        {"alias": alias("openid", "o-1"), "user_id": "u1", "type": "view"},
        {"type": "view"},
        {"alias": {**alias("openid", "o-1"), "extra": 1}, "type": "view"},
        {"alias": "openid:o-1", "type": "view"},
        {"alias": alias("unionid", "u\x00"), "type": "view"},
        {"alias": alias("member_id", "m-1"), "type": "view", "event_id": "good-8"},
    ]
    status, body = await beacon.post_events(events)
    assert status == 200, body
    assert body["accepted"] == ["good-0", "good-8"]
    assert [(error["index"], error["path"]) for error in body["errors"]] == [
        (1, "events[1].alias.type"),
        (2, "events[2].alias.id"),
        (3, "events[3].alias"),
        (4, "events[4].user_id"),
        (5, "events[5].alias.extra"),
        (6, "events[6].alias"),
        (7, "events[7].alias.id"),
    ]
    assert all(error["code"] == "invalid" for error in body["errors"])
    users = await stream_users(redis_client)
    assert (users["good-0"], users["good-8"]) == ("openid:o-1", "member_id:m-1")

    # One event alone: a 422 naming the field, nothing appended.
    status, body = await beacon.call("POST", "/v1/events", json={"alias": alias("qq", "1"), "type": "view"})
    assert (status, body["error"]["path"]) == (422, "alias.type"), body


async def test_dry_runs_name_users_by_id_only(beacon: Beacon) -> None:
    ruleset = {"id": "r", "rules": [{"id": "a", "when": {"event": "view"}, "then": [{"action": "tag", "add": ["x"]}]}]}
    assert await beacon.put_ruleset(ruleset) == 1
    body = {"events": [{"alias": alias("openid", "o-1"), "type": "view", "ts": T0}]}
    status, reply = await beacon.call("POST", "/v1/rulesets/r:dry-run", json=body)
    assert (status, reply["error"]["path"]) == (422, "events[0].alias"), reply


async def test_events_by_alias_over_msgpack_and_the_websocket(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    await beacon.call("POST", "/v1/identities", json={"user_id": "m-5", "aliases": [alias("unionid", "un-5")]})
    status, body = await beacon.post_events(
        [{"alias": alias("unionid", "un-5"), "type": "view", "event_id": "mp-1"}], msgpack_body=True
    )
    assert status == 200 and body["accepted"] == ["mp-1"], body
    async with beacon.session.ws_connect(beacon.url("/v1/ingest")) as ws:
        frame = {
            "seq": 1,
            "events": [
                {"alias": alias("unionid", "un-5"), "type": "view", "event_id": "ws-1"},
                {"alias": alias("phone", "555"), "type": "view", "event_id": "ws-2"},
                {"alias": alias("fax", "555"), "type": "view"},
            ],
        }
        await ws.send_bytes(msgpack.packb(frame))
        reply = msgpack.unpackb((await ws.receive()).data)
        assert reply["ack"] == 1 and reply["accepted"] == ["ws-1", "ws-2"], reply
        assert [error["path"] for error in reply["errors"]] == ["events[2].alias.type"]
        await ws.send_str(json.dumps({"seq": 2, "events": [{"alias": alias("phone", "555"), "type": "x"}]}))
        assert json.loads((await ws.receive()).data)["ack"] == 2
    users = await stream_users(redis_client)
    assert (users["mp-1"], users["ws-1"], users["ws-2"]) == ("m-5", "m-5", "phone:555")
    await quiet(redis_client)
    status, body = await beacon.call("GET", "/v1/users/phone:555")
    assert (status, body["aliases"]) == (200, ["phone:555"]), body


async def test_concurrent_first_events_of_one_alias_agree_on_one_user(
    beacon: Beacon, redis_client: aioredis.Redis
) -> None:
    """Twenty requests race to create the user of an unknown alias: one user, and every event is its."""

    async def send(index: int) -> None:
        status, body = await beacon.post_events(
            [{"alias": alias("openid", "race"), "type": "view", "event_id": f"race-{index}"}]
        )
        assert status == 200, body

    await asyncio.gather(*(send(index) for index in range(20)))
    users = await stream_users(redis_client)
    assert {users[f"race-{index}"] for index in range(20)} == {"openid:race"}
    status, body = await beacon.call("GET", "/v1/identities/openid/race")
    assert (status, body) == (200, {"alias": "openid:race", "user_id": "openid:race", "head": "openid:race"})


async def test_two_links_in_opposite_directions_at_once_end_in_one_user(
    beacon: Beacon, redis_client: aioredis.Redis
) -> None:
    """x is linked to y's alias while y is linked to x's: one of them survives, and nothing loops."""
    for round_ in range(5):
        x, y = f"x{round_}", f"y{round_}"
        ax, ay = alias("member_id", f"mx{round_}"), alias("member_id", f"my{round_}")
        for user_id, own in ((x, ax), (y, ay)):
            status, body = await beacon.call("POST", "/v1/identities", json={"user_id": user_id, "aliases": [own]})
            assert status == 200, body
        await beacon.post_events([{"user_id": x, "type": "view"}, {"user_id": y, "type": "view"}])
        replies = await asyncio.gather(
            beacon.call("POST", "/v1/identities", json={"user_id": x, "aliases": [ay]}),
            beacon.call("POST", "/v1/identities", json={"user_id": y, "aliases": [ax]}),
        )
        assert all(status in (200, 202) for status, _ in replies), replies
        await quiet(redis_client)
        views = {}
        for user_id in (x, y):
            status, body = await beacon.call("GET", f"/v1/users/{user_id}")
            views[user_id] = body
        heads = [user_id for user_id, view in views.items() if "merged_into" not in view]
        assert len(heads) == 1, views
        (head,) = heads
        other = y if head == x else x
        assert views[other]["merged_into"] == head
        assert views[head]["aliases"] == sorted([f"member_id:mx{round_}", f"member_id:my{round_}"]), views
        for own in (ax, ay):
            status, body = await beacon.call("GET", f"/v1/identities/member_id/{own['id']}")
            assert body["head"] == head, body


async def test_events_for_a_user_merged_twice_follow_the_chain(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    """a went into b, then b into c: an event still naming a is forwarded twice and lands on c."""
    tagging = {
        "id": "t",
        "rules": [
            {"id": "v", "when": {"event": "visit"}, "then": [{"action": "tag", "add": ["visited"]}]},
        ],
    }
    assert await beacon.put_ruleset(tagging) == 1
    phone, openid = alias("phone", "chain-1"), alias("openid", "chain-2")
    for user_id, own in (("a", phone), ("b", phone), ("b", openid), ("c", openid)):
        status, body = await beacon.call("POST", "/v1/identities", json={"user_id": user_id, "aliases": [own]})
        assert status == 200, body
    status, body = await beacon.post_events([{"user_id": "a", "type": "visit", "event_id": "late-visit"}])
    assert status == 200, body
    await quiet(redis_client)
    views = {}
    for user_id in ("a", "b", "c"):
        views[user_id] = (await beacon.call("GET", f"/v1/users/{user_id}"))[1]
    assert (views["a"]["merged_into"], views["b"]["merged_into"]) == ("b", "c"), views
    assert views["c"]["tags"] == ["visited"] and views["c"]["merged_from"] == ["a", "b"], views
    assert views["c"]["aliases"] == ["openid:chain-2", "phone:chain-1"], views
    assert [action["trigger_id"] for action in await beacon.actions("c")] == ["late-visit"]


async def test_linking_again_and_linking_to_a_merged_user(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    first = {"user_id": "a", "aliases": [alias("phone", "1")]}
    status, body = await beacon.call("POST", "/v1/identities", json=first)
    assert (status, body["linked"], body["status"]) == (200, ["phone:1"], "linked"), body
    status, body = await beacon.call("POST", "/v1/identities", json=first)
    assert (status, body["linked"], body["already"], body["merged"]) == (200, [], ["phone:1"], []), body
    # b takes a's phone: a is merged into b. Linking to a now links to b, where a's history went.
    status, body = await beacon.call("POST", "/v1/identities", json={"user_id": "b", "aliases": [alias("phone", "1")]})
    assert (status, body["merged"]) == (200, [{"from": "a", "into": "b"}]), body
    status, body = await beacon.call("POST", "/v1/identities", json={"user_id": "a", "aliases": [alias("openid", "2")]})
    assert (status, body["user_id"], body["aliases"]) == (200, "b", ["openid:2", "phone:1"]), body
    status, body = await beacon.call("GET", "/v1/identities/phone/404")
    assert (status, body["error"]["path"]) == (404, "id"), body
    status, body = await beacon.call("GET", "/v1/identities/email/1")
    assert (status, body["error"]["path"]) == (422, "type"), body
    await quiet(redis_client)
    status, body = await beacon.call("GET", "/v1/users/a")
    assert (body["merged_into"], body["aliases"]) == ("b", []), body
    # A patch naming the merged user is handed on to the user it went into.
    status, body = await beacon.call("PATCH", "/v1/users/a", json={"attrs": {"city": "SZ"}})
    assert (status, body) == (202, {"user_id": "a", "status": "forwarded", "merged_into": "b"}), body
    found = await eventually(lambda: beacon.call("GET", "/v1/users/b"), lambda got: "city" in got[1]["attrs"])
    assert found[1]["attrs"] == {"city": "SZ"}, found


async def test_an_event_forwarded_from_a_merged_user_counts_once_as_processed(
    beacon: Beacon, redis_client: aioredis.Redis
) -> None:
    """Before: an event naming a merged user counted as processed at each forward and again where it was evaluated."""
    phone, openid = alias("phone", "count-1"), alias("openid", "count-2")
    for user_id, own in (("ca", phone), ("cb", phone), ("cb", openid), ("cc", openid)):
        status, body = await beacon.call("POST", "/v1/identities", json={"user_id": user_id, "aliases": [own]})
        assert status == 200, body
    await quiet(redis_client)
    before = await scrape(beacon)
    # ca went into cb and cb into cc: the first event is forwarded twice, the others reach cc straight.
    events = [
        {"user_id": "ca", "type": "visit", "event_id": "fwd-1"},
        {"user_id": "cc", "type": "visit", "event_id": "fwd-2"},
        {"alias": phone, "type": "visit", "event_id": "fwd-3"},
    ]
    status, body = await beacon.post_events(events)
    assert status == 200 and body["accepted"] == ["fwd-1", "fwd-2", "fwd-3"], body
    await quiet(redis_client)
    after = await scrape(beacon)

    def delta(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)

    assert delta("beacon_events_accepted_total", transport="http") == 3
    assert delta("beacon_events_processed_total", origin="producer") == 3  # ingested = processed
    assert delta("beacon_identity_forwarded_total", kind="event") == 2  # the two hops of fwd-1
