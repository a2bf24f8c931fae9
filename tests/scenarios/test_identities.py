"""Identities end to end: events by alias, links, and merges of two known users through the real server on a
real Redis (single and 3-master cluster) with a manual clock; the crash test runs the real `beacon serve`.

What each test reads is what an operator sees: the ledger (`GET /v1/actions?user_id=`), the user view
(`GET /v1/users/{id}`: profile, tags, aliases, windows, `merged_into`), the user's trace and the journey stats.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from beacon.redis_server import free_port
from cep import handoff, streams
from cep.events import partition_of
from cep.merge_items import MergeIn, encode_merge
from cep.scripts import run_scripts
from cep.streams import MERGE_FIELD, append_call
from cep.user_state import STATE, user_key_for
from tests.chaos.processes import BeaconProcess, beacon_env, wait_healthy
from tests.harness import Beacon, eventually, running_beacon, server_settings
from tests.scenarios.journeys_kit import ServeClient, journey_stats, waiting_total
from tests.scenarios.test_seed_scenarios import MINUTE, PARTITIONS, T0

PAY_THREE_TIMES: dict[str, Any] = {
    "id": "loyal",
    "rules": [
        {
            "id": "third-pay-in-a-week",
            "when": {"threshold": {"match": {"event": "pay"}, "count": 3, "window": "7d"}},
            "then": [{"action": "coupon", "coupon_id": "C-LOYAL"}],
            "reentry": {"policy": "always"},
        }
    ],
}
FOLLOW_TAGS: dict[str, Any] = {
    "id": "fans",
    "rules": [
        {
            "id": "follow-tags-fan",
            "when": {"event": "follow"},
            "then": [{"action": "tag", "add": ["fan"]}],
            "reentry": {"policy": "always"},
        },
        {
            "id": "hello-on-login",
            "when": {"event": "login"},
            "then": [{"action": "message", "channel": "sms", "template": "hello"}],
            "reentry": {"policy": "always"},
        },
    ],
}
CART_JOURNEY: dict[str, Any] = {
    "id": "cart-nudge",
    "description": "carted: a reminder 30 minutes later",
    "entry": {"event": "add_to_cart"},
    "reentry": {"policy": "once"},
    "start": "wait",
    "nodes": {
        "wait": {"wait": "30m", "next": "remind"},
        "remind": {"do": [{"action": "message", "channel": "sms", "template": "cart_reminder"}], "next": "end"},
        "end": {"exit": True},
    },
}


def pay(ts: int, *, user: str | None = None, alias: tuple[str, str] | None = None, **attrs: Any) -> dict[str, Any]:
    return by(user, alias, {"type": "pay", "ts": ts, "attrs": attrs})


def by(user: str | None, alias: tuple[str, str] | None, wire: dict[str, Any]) -> dict[str, Any]:
    """A wire event naming its user by id or by alias."""
    if alias is not None:
        return {**wire, "alias": {"type": alias[0], "id": alias[1]}}
    return {**wire, "user_id": user}


async def quiet(redis: aioredis.Redis) -> None:
    """Wait until every partition's stream is committed and its handoff stream relayed (both, at once)."""

    async def probe() -> tuple[int, int, int]:
        waiting = sum([await handoff.pending(redis, partition) for partition in range(PARTITIONS)])
        added = sum([int(await redis.hget(streams.progress_key(p), "added") or 0) for p in range(PARTITIONS)])
        return await streams.backlog(redis, PARTITIONS), waiting, added

    # The reads are not one snapshot: a commit can hand an entry on, and the relay append it, between them.
    # Quiet is both empty twice in a row with nothing appended in between (the relay's append counts).
    while True:
        first = await eventually(probe, lambda found: found[:2] == (0, 0), timeout_s=10)
        assert first[:2] == (0, 0), first
        if await probe() == first:
            return


async def post(beacon: Beacon, events: list[dict[str, Any]]) -> None:
    status, body = await beacon.post_events(events)
    assert status == 200 and not body["errors"], body


async def link(beacon: Beacon, user_id: str, *aliases: tuple[str, str]) -> dict[str, Any]:
    wire = [{"type": kind, "id": alias_id} for kind, alias_id in aliases]
    status, body = await beacon.call("POST", "/v1/identities", json={"user_id": user_id, "aliases": wire})
    assert status == 200, body
    return dict(body)


async def user(beacon: Beacon, user_id: str) -> dict[str, Any]:
    status, body = await beacon.call("GET", f"/v1/users/{user_id}")
    assert status == 200, body
    return dict(body)


async def coupons(beacon: Beacon, user_id: str) -> list[dict[str, Any]]:
    return [action for action in await beacon.actions(user_id) if action["type"] == "coupon"]


@pytest.fixture
async def tracing(redis_url: str, redis_client: aioredis.Redis, clock: ManualClock) -> Any:
    """A server that traces every event's rule matches, so a user's trace lists the events it saw."""
    settings = server_settings(redis_url, partitions=PARTITIONS, trace_matches=True)
    async with running_beacon(settings, clock=clock) as running:
        yield running


async def test_two_users_merged_by_a_shared_phone_keep_one_history(
    tracing: Beacon, redis_client: aioredis.Redis
) -> None:
    beacon = tracing
    await beacon.put_ruleset(PAY_THREE_TIMES)
    phone = ("phone", "13800000001")
    await link(beacon, "u-ann", phone)
    await post(beacon, [pay(T0 + MINUTE, user="u-ann", order="a1"), pay(T0 + 2 * MINUTE, user="u-bob", order="b1")])
    await quiet(redis_client)

    # Bob turns out to have Ann's phone: the two are one person, and Bob's id is the one kept.
    merged = await link(beacon, "u-bob", phone)
    assert merged["merged"] == [{"from": "u-ann", "into": "u-bob"}] and merged["status"] == "merged", merged
    assert merged["aliases"] == ["phone:13800000001"]
    # Bob's payment window now holds Ann's payment and his own.
    window = (await user(beacon, "u-bob"))["rules"]["loyal/third-pay-in-a-week"]["sets"][0]["entries"]
    assert [entry["ts"] for entry in window] == [T0 + MINUTE, T0 + 2 * MINUTE]

    # The third payment counts both users' first two: without the merge Bob would have paid twice.
    await post(beacon, [pay(T0 + 3 * MINUTE, user="u-bob", order="b2")])
    await quiet(redis_client)
    assert len(await coupons(beacon, "u-bob")) == 1
    # Events still naming Ann, and events by the phone, reach Bob.
    await post(beacon, [pay(T0 + 4 * MINUTE, user="u-ann", order="a2")])
    # An event naming the merged id takes a detour (Ann's partition, then the handoff to Bob's): a later
    # event sent straight to Bob could overtake it and make it late for the window. Let it arrive first.
    await quiet(redis_client)
    await post(beacon, [pay(T0 + 5 * MINUTE, alias=phone, order="p1")])
    await quiet(redis_client)
    assert len(await coupons(beacon, "u-bob")) == 3
    assert await beacon.actions("u-ann") == []

    bob, ann = await user(beacon, "u-bob"), await user(beacon, "u-ann")
    assert bob["aliases"] == ["phone:13800000001"] and bob["merged_from"] == ["u-ann"]
    assert ann["merged_into"] == "u-bob" and ann["aliases"] == [] and ann["rules"] == {}
    window = bob["rules"]["loyal/third-pay-in-a-week"]["sets"][0]["entries"]
    assert [entry["ts"] for entry in window][-3:] == [T0 + MINUTE * n for n in range(3, 6)]

    # One trace: Bob's evaluations and Ann's from before the merge, newest first.
    status, body = await beacon.call("GET", "/v1/users/u-bob/trace")
    assert status == 200, body
    trace = body["trace"]
    assert [entry["at"] for entry in trace] == sorted((entry["at"] for entry in trace), reverse=True)
    seen_pays = {(entry.get("user_id", "u-bob"), entry["ts"]) for entry in trace if entry.get("type") == "pay"}
    assert ("u-ann", T0 + MINUTE) in seen_pays and ("u-bob", T0 + 2 * MINUTE) in seen_pays, trace
    assert any(entry.get("what") == "merged" and entry.get("from") == "u-ann" for entry in trace), trace
    assert any(entry.get("what") == "merged_into" and entry.get("user_id") == "u-ann" for entry in trace), trace


async def test_events_by_alias_before_and_after_linking(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await beacon.put_ruleset(FOLLOW_TAGS)
    status, body = await beacon.call("PUT", "/v1/journeys/cart-nudge", json=CART_JOURNEY)
    assert status == 200, body
    openid = ("openid", "o-guest-1")

    # A guest known only by openid follows, carts and sets a profile: a user of its own, `openid:o-guest-1`.
    await post(
        beacon,
        [
            by(None, openid, {"type": "follow", "ts": T0 + MINUTE}),
            by(None, openid, {"type": "add_to_cart", "ts": T0 + 2 * MINUTE, "attrs": {"sku": "S1"}}),
        ],
    )
    await quiet(redis_client)
    guest_id = "openid:o-guest-1"
    status, body = await beacon.call("GET", "/v1/identities/openid/o-guest-1")
    assert (status, body["user_id"]) == (200, guest_id), body
    status, body = await beacon.call("PATCH", f"/v1/users/{guest_id}", json={"attrs": {"region": "BJ", "nick": "g"}})
    assert status == 200, body
    guest = await user(beacon, guest_id)
    assert guest["tags"] == ["fan"] and guest["aliases"] == ["openid:o-guest-1"]
    assert guest["journeys"]["cart-nudge"]["instances"][0]["node"] == "wait"

    # The member logs in: PATCH sets its own region, then the openid (and a new phone) are linked to it.
    status, body = await beacon.call("PATCH", "/v1/users/m-77", json={"attrs": {"region": "SH"}, "add_tags": ["vip"]})
    assert status == 200, body
    linked = await link(beacon, "m-77", openid, ("phone", "13900000077"))
    assert linked["merged"] == [{"from": guest_id, "into": "m-77"}], linked
    assert linked["linked"] == ["phone:13900000077"] and linked["already"] == ["openid:o-guest-1"]
    assert linked["aliases"] == ["openid:o-guest-1", "phone:13900000077"]

    member = await user(beacon, "m-77")
    assert member["attrs"] == {"region": "SH", "nick": "g"}  # the member's value wins; the guest fills gaps
    assert member["tags"] == ["fan", "vip"]
    assert member["journeys"]["cart-nudge"]["instances"][0]["node"] == "wait"  # the guest's wait moved over
    assert waiting_total(await journey_stats(beacon, "cart-nudge")) == 1  # counted once, in its new partition
    assert (await user(beacon, guest_id))["merged_into"] == "m-77"
    status, body = await beacon.call("GET", "/v1/identities/openid/o-guest-1")
    assert (status, body["user_id"], body["head"]) == (200, "m-77", "m-77"), body

    # After linking, an event by either alias is the member's.
    await post(beacon, [by(None, openid, {"type": "login", "ts": T0 + 3 * MINUTE})])
    await post(beacon, [by(None, ("phone", "13900000077"), {"type": "login", "ts": T0 + 4 * MINUTE})])
    await quiet(redis_client)
    hellos = [a for a in await beacon.actions("m-77") if a["params"].get("template") == "hello"]
    assert len(hellos) == 2
    # The guest's cart reminder goes out for the member, once, when the wait ends.
    clock.set(T0 + 33 * MINUTE)
    reminders = await eventually(
        lambda: beacon.actions("m-77"),
        lambda found: any(a["params"].get("template") == "cart_reminder" for a in found),
    )
    assert [a["params"]["template"] for a in reminders if a["type"] == "message"].count("cart_reminder") == 1
    assert waiting_total(await journey_stats(beacon, "cart-nudge")) == 0
    # The guest's own actions stay in its ledger (the tag from its follow); the reminder is the member's alone.
    assert [a["type"] for a in await beacon.actions(guest_id)] == ["tag"]


async def test_a_merged_state_delivered_twice_is_merged_once(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    """The relay is at least once (a crash between its append and its delete appends again): the target dedupes."""
    await beacon.put_ruleset(PAY_THREE_TIMES)
    await post(
        beacon,
        [
            pay(T0 + MINUTE, user="u-dup", order="d1"),
            pay(T0 + 2 * MINUTE, user="u-gone", order="g1"),
            pay(T0 + 3 * MINUTE, user="u-gone", order="g2"),
        ],
    )
    await quiet(redis_client)
    # u-gone's committed record, handed to u-dup twice, as a relay that crashed before its delete would.
    record = await redis_client.get(user_key_for(PARTITIONS, "u-gone", STATE))
    assert record is not None
    entry = encode_merge(MergeIn("u-dup", "u-gone", record))
    call = append_call(partition_of("u-dup", PARTITIONS), MERGE_FIELD, entry, 1)
    await run_scripts(redis_client, [call, call])
    await quiet(redis_client)
    window = (await user(beacon, "u-dup"))["rules"]["loyal/third-pay-in-a-week"]["sets"][0]["entries"]
    assert [item["ts"] for item in window] == [T0 + MINUTE, T0 + 2 * MINUTE, T0 + 3 * MINUTE]
    await post(beacon, [pay(T0 + 4 * MINUTE, user="u-dup", order="d2")])
    await quiet(redis_client)
    assert len(await coupons(beacon, "u-dup")) == 1


async def test_the_actions_of_the_users_merged_into_one_are_listed_for_it(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    """Before: `GET /v1/actions?user_id=T` listed T's ledger only, not the actions of the users merged into T."""
    await beacon.put_ruleset(FOLLOW_TAGS)
    # Three ids of one person each log in (an sms each), a minute apart; the kept one also follows (a tag).
    steps = [("u-guest", "login"), ("u-old", "login"), ("u-kept", "login"), ("u-kept", "follow")]
    for minute, (user_id, kind) in enumerate(steps, start=1):
        clock.set(T0 + minute * MINUTE)
        await post(
            beacon, [by(user_id, None, {"type": kind, "ts": T0 + minute * MINUTE, "event_id": f"{kind}-{user_id}"})]
        )
        await quiet(redis_client)
    # The guest goes into the old id, then the old id into the kept one: a chain of two merges.
    phone, openid = ("phone", "13900000088"), ("openid", "o-chain-88")
    for user_id, own in (("u-guest", phone), ("u-old", phone), ("u-old", openid), ("u-kept", openid)):
        await link(beacon, user_id, own)
    await quiet(redis_client)
    assert (await user(beacon, "u-kept"))["merged_from"] == ["u-guest", "u-old"]

    # The kept id lists all three ledgers as one, newest first, each action naming the id it was made for.
    listed = [(action["user_id"], action["trigger_id"]) for action in await beacon.actions("u-kept")]
    assert listed == [
        ("u-kept", "follow-u-kept"),
        ("u-kept", "login-u-kept"),
        ("u-old", "login-u-old"),
        ("u-guest", "login-u-guest"),
    ]
    logins = await beacon.actions("u-kept", rule="hello-on-login")
    assert [action["user_id"] for action in logins] == ["u-kept", "u-old", "u-guest"]
    status, body = await beacon.call("GET", "/v1/actions", params={"user_id": "u-kept", "limit": "3"})
    assert status == 200, body
    assert [action["trigger_id"] for action in body["actions"]] == ["follow-u-kept", "login-u-kept", "login-u-old"]
    # A merged-away id lists the actions made under that id only, as its trace and its user view show it alone.
    assert [action["trigger_id"] for action in await beacon.actions("u-old")] == ["login-u-old"]
    assert [action["trigger_id"] for action in await beacon.actions("u-guest")] == ["login-u-guest"]


# -- SIGKILL mid-merge ---------------------------------------------------------------------------------------

CRASH_PAIRS = 300
CRASH_PARTITIONS = 4
SINGLE_ONLY = pytest.mark.parametrize("redis_url", ["single"], indirect=True)


async def merges_in_flight(redis: aioredis.Redis) -> bool:
    """Whether some merge step or forward is written and not yet carried out (uncommitted entries, or handoff
    entries not yet relayed)."""
    for partition in range(CRASH_PARTITIONS):
        if await handoff.pending(redis, partition):
            return True
    return await streams.backlog(redis, CRASH_PARTITIONS) > 0


async def kill9_mid_merge(worker: BeaconProcess, redis: aioredis.Redis, rng: random.Random, wait_s: float) -> str:
    """SIGKILL the worker, preferably frozen while merges are in flight; returns where it was killed."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(0.002, 0.02))
        worker.sigstop()
        if await merges_in_flight(redis):
            worker.kill9()
            return "mid-merge"
        worker.sigcont()
    worker.kill9()
    return "idle"


@SINGLE_ONLY
async def test_sigkill_mid_merge_loses_and_repeats_nothing(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """300 guests merged into members while the worker is killed twice: every member ends with its guest's two
    payments and its own, once each, and every guest is a tombstone."""
    port = free_port()
    serve_env = beacon_env(redis_url, port, CRASH_PARTITIONS, BEACON_RUN_CONNECTORS="false", BEACON_RUN_WORKERS="false")
    worker_env = beacon_env(redis_url, free_port(), CRASH_PARTITIONS, BEACON_RUN_CONNECTORS="false")
    serve = BeaconProcess("serve", serve_env, tmp_path, "serve")
    worker = BeaconProcess("worker", worker_env, tmp_path, "worker")
    rng = random.Random("identities-crash")
    guests = [("openid", f"o-{i}") for i in range(CRASH_PAIRS)]
    members = [f"m-{i}" for i in range(CRASH_PAIRS)]
    async with aiohttp.ClientSession() as session:
        try:
            serve.start()
            worker.start()
            await wait_healthy(serve, session)
            client = ServeClient(session, port)
            status, body = await client.call("PUT", "/v1/rulesets/loyal", json=PAY_THREE_TIMES)
            assert status == 200, body
            now = int(time.time() * 1000)
            wire = []
            for index, (guest, member) in enumerate(zip(guests, members, strict=True)):
                wire.append(by(None, guest, {"type": "pay", "ts": now, "event_id": f"g1-{index}"}))
                wire.append(by(None, guest, {"type": "pay", "ts": now + 1, "event_id": f"g2-{index}"}))
                wire.append(by(member, None, {"type": "pay", "ts": now + 2, "event_id": f"m1-{index}"}))
            status, body = await client.call("POST", "/v1/events", json={"events": wire})
            assert status == 200 and not body["errors"], body

            async def link_one(index: int) -> None:
                guest, member = guests[index], members[index]
                json_body = {"user_id": member, "aliases": [{"type": guest[0], "id": guest[1]}]}
                # A long timeout: a link waits up to 5 s for its merge, and the worker is being killed.
                url, timeout = f"http://127.0.0.1:{port}/v1/identities", aiohttp.ClientTimeout(total=60)
                async with session.post(url, json=json_body, timeout=timeout) as response:
                    assert response.status in (200, 202), await response.text()

            wheres = []
            for half in (range(0, CRASH_PAIRS // 2), range(CRASH_PAIRS // 2, CRASH_PAIRS)):
                links = asyncio.gather(*(link_one(index) for index in half))
                wheres.append(await kill9_mid_merge(worker, redis_client, rng, wait_s=3.0))
                worker.start()
                await links

            async def all_done() -> tuple[int, int]:
                backlog = await streams.backlog(redis_client, CRASH_PARTITIONS)
                waiting = sum([await handoff.pending(redis_client, p) for p in range(CRASH_PARTITIONS)])
                return backlog, waiting

            for _ in range(2):
                assert await eventually(all_done, lambda found: found == (0, 0), timeout_s=30) == (0, 0), wheres
            for index, member in enumerate(members):
                status, view = await client.call("GET", f"/v1/users/{member}")
                assert status == 200, view
                window = view["rules"]["loyal/third-pay-in-a-week"]["sets"][0]["entries"]
                assert [entry["ts"] for entry in window] == [now, now + 1, now + 2], (member, wheres, view)
                assert view["merged_from"] == [f"openid:o-{index}"] and view["aliases"] == [f"openid:o-{index}"]
            for guest in guests[:: CRASH_PAIRS // 10]:
                status, view = await client.call("GET", f"/v1/users/openid:{guest[1]}")
                assert view["merged_into"] == f"m-{guest[1][2:]}", view
            # One more payment each, by the alias: every member's fourth, one coupon (third-pay fired on none yet).
            wire = [by(None, guest, {"type": "pay", "ts": now + 3}) for guest in guests]
            status, body = await client.call("POST", "/v1/events", json={"events": wire})
            assert status == 200, body
            for member in members[:: CRASH_PAIRS // 10]:
                found = await eventually(lambda m=member: client.actions(m), lambda got: len(got) >= 1, timeout_s=10)
                assert [action["type"] for action in found] == ["coupon"], (member, found)
            print(f"kills: {wheres}")
        finally:
            serve.stop()
            worker.stop()
