"""Journeys end to end: the library journeys and small custom ones, driven through the real server on a real
Redis (single and 3-master cluster) with a manual clock; the crash test runs the real `beacon serve`.

What each test reads is what an operator sees: the action ledger (`GET /v1/actions?user_id=`), the journey
statistics, the user view and the user's trace.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from beacon.redis_server import free_port
from rules.journey_schema import parse_journey
from tests.chaos.processes import BeaconProcess, beacon_env, wait_healthy
from tests.harness import Beacon, eventually, running_beacon, server_settings
from tests.scenarios.journeys_kit import (
    ServeClient,
    by_node,
    journey_counts,
    journey_names,
    journey_stats,
    journey_steps,
    kill9_with_steps_due,
    library_journey,
    node_counts,
    outbox_action_ids,
    put_journey,
    user_timers,
    user_trace,
    user_view,
    waiting_total,
)
from tests.scenarios.test_seed_scenarios import DAY, MINUTE, PARTITIONS, T0, advance, event, settled

HOUR = 60 * MINUTE
SINGLE_ONLY = pytest.mark.parametrize("redis_url", ["single"], indirect=True)


@pytest.fixture
async def beacon_tracing_matches(
    redis_url: str, redis_client: aioredis.Redis, clock: ManualClock
) -> AsyncIterator[Beacon]:
    """A server that also traces each event's rule matches (BEACON_TRACE_MATCHES=1)."""
    settings = server_settings(redis_url, partitions=PARTITIONS, trace_matches=True)
    async with running_beacon(settings, clock=clock) as running:
        yield running


def journey_fields(action: dict[str, Any]) -> tuple[Any, ...]:
    """What a journey action record says about where it came from and what it does."""
    return (
        action["type"],
        action["params"],
        action["journey_id"],
        action["node_id"],
        action["rule_id"],
        action["ruleset_version"],
        action["source"],
    )


def coupon(coupon_id: str) -> dict[str, Any]:
    return {"action": "coupon", "coupon_id": coupon_id}


END = {"exit": True}


def test_the_library_journeys_all_validate() -> None:
    names = journey_names()
    assert names == ["cart-recovery", "new-fan", "post-purchase", "store-visit"]
    for name in names:
        document = library_journey(name)
        assert document["id"] == name and document.get("description"), name
        parse_journey(document)


# -- 1. new-fan ------------------------------------------------------------------------------------

CLICKERS = [f"clicker-{i}" for i in range(40)]
QUIET = [f"quiet-{i}" for i in range(5)]
WELCOME = ("message", {"channel": "wechat_cs", "template": "welcome"}, "new-fan", "welcome", "welcome", 1, "journey")
INTERESTED = ("tag", {"add": ["interested"]}, "new-fan", "interested", "interested", 1, "journey")
ARTICLE = (
    "message",
    {"channel": "wechat_template", "template": "article"},
    "new-fan",
    "article",
    "article",
    1,
    "journey",
)
COUPON_OF_ARM = {"arm0": ("promo-a", "C-A"), "arm1": ("promo-b", "C-B"), "holdout": None}


async def test_new_fan_welcome_then_interested_and_one_coupon_per_clicker_or_an_article(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    assert await put_journey(beacon, library_journey("new-fan")) == 1
    follows = [event(user, "follow", T0) for user in CLICKERS + QUIET]
    clicks = [event(user, "menu_click", T0 + HOUR) for user in CLICKERS]
    status, _ = await beacon.post_events(follows + clicks)
    assert status == 200
    await settled(redis_client)

    # At once: the welcome for everyone; a click within the day tags the user as interested.
    for user in QUIET:
        actions = await beacon.actions(user)
        assert [journey_fields(a) for a in actions] == [WELCOME], user
        assert actions[0]["event_ts"] == T0 and actions[0]["status"] == "pending"
    for user in CLICKERS:
        grouped = by_node(await beacon.actions(user))
        assert sorted(grouped) == ["interested", "welcome"], user
        assert [journey_fields(a) for a in grouped["welcome"]] == [WELCOME]
        assert [journey_fields(a) for a in grouped["interested"]] == [INTERESTED]
        assert grouped["interested"][0]["event_ts"] == T0 + HOUR
        assert (await user_view(beacon, user))["tags"] == ["interested"]
    stats = await journey_stats(beacon, "new-fan")
    assert journey_counts(stats) == {"entered": 45, "completed": 0, "exited": 0, "converted": 0}
    assert node_counts(stats, "welcome")["entered"] == 45
    wait_click = node_counts(stats, "wait-click")
    assert (wait_click["entered"], wait_click["waiting"], wait_click["left"]) == (45, 5, {"menu_click": 40})
    assert (node_counts(stats, "day-later")["entered"], node_counts(stats, "day-later")["waiting"]) == (40, 40)

    # No click: the article once the day and its 2 s of lateness are over, not a millisecond before.
    await advance(beacon, redis_client, clock, T0 + DAY + 1_999)
    assert [len(await beacon.actions(user)) for user in QUIET] == [1] * len(QUIET)
    await advance(beacon, redis_client, clock, T0 + DAY + 2_000)
    for user in QUIET:
        grouped = by_node(await beacon.actions(user))
        assert [journey_fields(a) for a in grouped["article"]] == [ARTICLE], user
        assert grouped["article"][0]["event_ts"] == T0 + DAY  # the step's time: the end of the window
        assert sorted(grouped) == ["article", "welcome"]

    # A day after the click: one coupon, C-A or C-B, or nothing for the holdout; the split says which.
    await advance(beacon, redis_client, clock, T0 + HOUR + DAY - 1)
    assert [len(await beacon.actions(user)) for user in CLICKERS] == [2] * len(CLICKERS)
    await advance(beacon, redis_client, clock, T0 + HOUR + DAY)
    arms: Counter[str] = Counter()
    arm_of: dict[str, str] = {}
    for user in CLICKERS:
        coupons = [a for a in await beacon.actions(user) if a["type"] == "coupon"]
        splits = [e for e in await user_trace(beacon, user) if e.get("what") == "split"]
        assert [(e["node"], e["ts"]) for e in splits] == [("ab", T0 + HOUR + DAY)], user
        taken = arm_of[user] = splits[0]["taken"]
        arms[taken] += 1
        expected = COUPON_OF_ARM[taken]
        if expected is None:
            assert coupons == [], user
        else:
            node, coupon_id = expected
            assert [(a["node_id"], a["params"], a["journey_id"], a["event_ts"]) for a in coupons] == [
                (node, {"coupon_id": coupon_id}, "new-fan", T0 + HOUR + DAY)
            ], user
    assert set(arms) == {"arm0", "arm1", "holdout"}, arms  # these 40 users happen to meet every arm
    assert sum(arms.values()) == len(CLICKERS)

    # The goal (pay within 7 d) converts once; following again is refused (reentry once).
    await advance(beacon, redis_client, clock, T0 + 2 * DAY)
    await beacon.post_events([event("quiet-0", "pay", T0 + 2 * DAY), event("quiet-0", "pay", T0 + 2 * DAY + 1)])
    await beacon.post_events([event("clicker-0", "follow", T0 + 3 * DAY)])
    await settled(redis_client)
    await advance(beacon, redis_client, clock, T0 + 10 * DAY)
    for user in QUIET:
        assert len(await beacon.actions(user)) == 2, user
    for user in CLICKERS:  # welcome, interested, and the coupon unless held out: nothing more, nothing again
        assert len(await beacon.actions(user)) == (2 if arm_of[user] == "holdout" else 3), user

    stats = await journey_stats(beacon, "new-fan")
    journey = journey_counts(stats)
    assert journey == {"entered": 45, "completed": 45, "exited": 0, "converted": 1, "not_entered": {"reentry_once": 1}}
    assert waiting_total(stats) == 0
    assert node_counts(stats, "wait-click")["left"] == {"menu_click": 40, "timeout": 5}
    assert node_counts(stats, "ab")["left"] == dict(arms)
    assert node_counts(stats, "ab")["exited"] == arms["holdout"]
    assert node_counts(stats, "promo-a")["entered"] == arms["arm0"]
    assert node_counts(stats, "promo-b")["entered"] == arms["arm1"]
    assert node_counts(stats, "article")["entered"] == 5
    assert node_counts(stats, "end")["exited"] == 45 - arms["holdout"]
    assert node_counts(stats, "article")["converted"] == 1 and node_counts(stats, "welcome")["converted"] == 1


# -- 2. an exit event during a long wait -------------------------------------------------------------

LONG_WAIT: dict[str, Any] = {
    "id": "long-wait",
    "description": "follow -> 30 days later a loyalty coupon; unfollow leaves",
    "entry": {"event": "follow"},
    "exit": [{"event": "unfollow"}],
    "start": "wait-30d",
    "nodes": {
        "wait-30d": {"wait": "30d", "next": "coupon"},
        "coupon": {"do": [coupon("C-LOYAL")], "next": "end"},
        "end": END,
    },
}


async def test_an_exit_event_stops_an_instance_in_a_30_day_wait_at_once(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await put_journey(beacon, LONG_WAIT)
    await beacon.post_events([event("leaver", "follow", T0), event("stayer", "follow", T0)])
    await settled(redis_client)
    assert len(await user_timers(redis_client, PARTITIONS, "leaver")) == 1
    assert node_counts(await journey_stats(beacon, "long-wait"), "wait-30d")["waiting"] == 2

    clock.set(T0 + DAY)
    await beacon.post_events([event("leaver", "unfollow", T0 + DAY)])
    await settled(redis_client)
    # At once, not when the 30 days are over: the timer is gone, the counts moved, the user is out.
    assert await user_timers(redis_client, PARTITIONS, "leaver") == []
    stats = await journey_stats(beacon, "long-wait")
    wait = node_counts(stats, "wait-30d")
    assert (wait["entered"], wait["waiting"], wait["exited"]) == (2, 1, 1)
    assert journey_counts(stats) == {"entered": 2, "completed": 0, "exited": 1, "converted": 0}
    # Re-entry "always" (the default) remembers nothing once no instance is left.
    assert (await user_view(beacon, "leaver"))["journeys"] == {}
    assert [i["node"] for i in (await user_view(beacon, "stayer"))["journeys"]["long-wait"]["instances"]] == [
        "wait-30d"
    ]
    trace = await user_trace(beacon, "leaver")
    assert journey_steps(trace, "long-wait") == [
        ("", "entered"),
        ("wait-30d", "timer_set"),
        ("wait-30d", "timer_cancelled"),
        ("wait-30d", "exit_event"),
    ]
    assert trace[0]["what"] == "exit_event" and trace[0]["ts"] == T0 + DAY and trace[0]["version"] == 1

    await advance(beacon, redis_client, clock, T0 + 31 * DAY)
    assert await beacon.actions("leaver") == []
    stayer = await beacon.actions("stayer")  # the control: the same wait does end in a coupon
    assert [(a["node_id"], a["params"], a["event_ts"]) for a in stayer] == [
        ("coupon", {"coupon_id": "C-LOYAL"}, T0 + 30 * DAY)
    ]
    stats = await journey_stats(beacon, "long-wait")
    assert node_counts(stats, "wait-30d")["waiting"] == 0 and waiting_total(stats) == 0
    assert journey_counts(stats) == {"entered": 2, "completed": 1, "exited": 1, "converted": 0}


# -- 3. cart-recovery --------------------------------------------------------------------------------

SMS = {"channel": "sms", "template": "cart_reminder", "params": {"sku": "S1"}}


async def test_cart_recovery_sms_after_30_minutes_and_paying_stops_the_coupon(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await put_journey(beacon, library_journey("cart-recovery"))
    await beacon.post_events(
        [
            event("abandoner", "add_to_cart", T0, sku="S1"),
            event("payer", "add_to_cart", T0, sku="S1"),
            event("quick-payer", "add_to_cart", T0, sku="S1"),
            event("quick-payer", "pay", T0 + 10 * MINUTE, sku="S1"),
        ]
    )
    await settled(redis_client)
    await advance(beacon, redis_client, clock, T0 + 30 * MINUTE - 1)
    assert [await beacon.actions(user) for user in ("abandoner", "payer", "quick-payer")] == [[], [], []]
    await advance(beacon, redis_client, clock, T0 + 30 * MINUTE)
    for user in ("abandoner", "payer"):
        actions = await beacon.actions(user)
        assert [(a["node_id"], a["type"], a["params"], a["journey_id"], a["event_ts"]) for a in actions] == [
            ("sms", "message", SMS, "cart-recovery", T0 + 30 * MINUTE)
        ], user
    assert await beacon.actions("quick-payer") == []

    # Paying between the SMS and the coupon step: no coupon, no last call.
    clock.set(T0 + 31 * MINUTE)
    await beacon.post_events([event("payer", "pay", T0 + 31 * MINUTE, sku="S1")])
    await settled(redis_client)
    await advance(beacon, redis_client, clock, T0 + 30 * MINUTE + DAY)
    abandoner = by_node(await beacon.actions("abandoner"))
    assert [(a["type"], a["params"]) for a in abandoner["coupon"]] == [("coupon", {"coupon_id": "C-10OFF"})]
    await advance(beacon, redis_client, clock, T0 + 30 * MINUTE + 3 * DAY)
    abandoner = by_node(await beacon.actions("abandoner"))
    assert sorted(abandoner) == ["coupon", "last-call", "sms"]
    assert [len(found) for found in abandoner.values()] == [1, 1, 1]
    assert [a["node_id"] for a in await beacon.actions("payer")] == ["sms"]
    assert await beacon.actions("quick-payer") == []

    stats = await journey_stats(beacon, "cart-recovery")
    assert journey_counts(stats) == {"entered": 3, "completed": 1, "exited": 2, "converted": 2}
    assert node_counts(stats, "wait-30m")["exited"] == 1  # the quick payer left there
    assert node_counts(stats, "wait-1d")["exited"] == 1  # the payer left there
    assert node_counts(stats, "coupon")["entered"] == 1
    assert waiting_total(stats) == 0


async def test_cart_recovery_key_sku_two_skus_make_two_instances_and_reentry_counts_per_sku(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await put_journey(beacon, library_journey("cart-recovery"))
    await beacon.post_events(
        [event("shopper", "add_to_cart", T0, sku="S1"), event("shopper", "add_to_cart", T0 + 1_000, sku="S2")]
    )
    await settled(redis_client)
    await advance(beacon, redis_client, clock, T0 + 30 * MINUTE + 1_000)
    sms = [a["params"]["params"] for a in await beacon.actions("shopper") if a["node_id"] == "sms"]
    assert sorted(sms, key=str) == [{"sku": "S1"}, {"sku": "S2"}]
    instances = (await user_view(beacon, "shopper"))["journeys"]["cart-recovery"]["instances"]
    assert sorted((i["key"], i["node"]) for i in instances) == [("sS1", "wait-1d"), ("sS2", "wait-1d")]
    stats = await journey_stats(beacon, "cart-recovery")
    assert journey_counts(stats)["entered"] == 2 and node_counts(stats, "wait-1d")["waiting"] == 2

    # One pay ends both (the exit has no correlate); then once_per 1d is counted per sku.
    clock.set(T0 + HOUR)
    await beacon.post_events([event("shopper", "pay", T0 + HOUR, sku="S1")])
    await beacon.post_events(
        [
            event("shopper", "add_to_cart", T0 + 2 * HOUR, sku="S1"),  # S1 entered less than a day ago: refused
            event("shopper", "add_to_cart", T0 + 2 * HOUR, sku="S3"),  # another sku: enters
            event("shopper", "add_to_cart", T0 + DAY + MINUTE, sku="S2"),  # S2's day is over: enters again
        ]
    )
    await settled(redis_client)
    await advance(beacon, redis_client, clock, T0 + DAY + 31 * MINUTE)
    sms = [a["params"]["params"]["sku"] for a in await beacon.actions("shopper") if a["node_id"] == "sms"]
    assert sorted(sms) == ["S1", "S2", "S2", "S3"]
    assert [a for a in await beacon.actions("shopper") if a["node_id"] != "sms"] == []  # paid before any coupon
    journey = journey_counts(await journey_stats(beacon, "cart-recovery"))
    assert (journey["entered"], journey["exited"], journey["not_entered"]) == (4, 2, {"reentry_once_per": 1})


async def test_instance_key_sku_keeps_one_instance_per_sku_and_pay_exits_them_all(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    # Whatever the policy, a live instance of the same key refuses a new one for that key.
    document = {**library_journey("cart-recovery"), "reentry": {"policy": "always"}}
    await put_journey(beacon, document)
    await beacon.post_events(
        [
            event("shopper", "add_to_cart", T0, sku="S1"),
            event("shopper", "add_to_cart", T0 + 1_000, sku="S2"),
            event("shopper", "add_to_cart", T0 + 2_000, sku="S1"),  # S1 has a live instance: refused
        ]
    )
    await settled(redis_client)
    instances = (await user_view(beacon, "shopper"))["journeys"]["cart-recovery"]["instances"]
    assert sorted((i["node"], i["due"]) for i in instances) == [
        ("wait-30m", T0 + 30 * MINUTE),
        ("wait-30m", T0 + 30 * MINUTE + 1_000),
    ]
    await advance(beacon, redis_client, clock, T0 + 30 * MINUTE + 1_000)
    sms = sorted(a["params"]["params"]["sku"] for a in await beacon.actions("shopper") if a["node_id"] == "sms")
    assert sms == ["S1", "S2"]
    stats = await journey_stats(beacon, "cart-recovery")
    assert journey_counts(stats)["not_entered"] == {"already_in_journey": 1}
    assert node_counts(stats, "wait-1d")["waiting"] == 2

    clock.set(T0 + HOUR)
    await beacon.post_events([event("shopper", "pay", T0 + HOUR, sku="S2")])  # the exit has no correlate
    await settled(redis_client)
    await advance(beacon, redis_client, clock, T0 + 10 * DAY)
    assert sorted(a["node_id"] for a in await beacon.actions("shopper")) == ["sms", "sms"]
    stats = await journey_stats(beacon, "cart-recovery")
    assert journey_counts(stats) == {
        "entered": 2,
        "completed": 0,
        "exited": 2,
        "converted": 2,
        "not_entered": {"already_in_journey": 1},
    }
    assert waiting_total(stats) == 0


# -- 3b. post-purchase -------------------------------------------------------------------------------


async def test_post_purchase_follows_each_order_and_a_refund_stops_only_its_order(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    """One instance per order: delivery notice, review once signed, a reminder 30 days later; an order
    never delivered alerts staff at 7 days; a refund ends its own order's instance and no other."""
    await put_journey(beacon, library_journey("post-purchase"))
    await beacon.post_events(
        [
            event("buyer", "pay", T0, order_id="O1"),
            event("buyer", "pay", T0 + HOUR, order_id="O2"),
            event("waiting", "pay", T0, order_id="O3"),
        ]
    )
    await settled(redis_client)
    clock.set(T0 + 2 * HOUR)
    await beacon.post_events([event("buyer", "refund", T0 + 2 * HOUR, order_id="O2")])
    await settled(redis_client)
    clock.set(T0 + DAY)
    await beacon.post_events([event("buyer", "delivered", T0 + DAY, order_id="O1")])
    await settled(redis_client)
    assert [(a["node_id"], a["params"]) for a in await beacon.actions("buyer")] == [
        ("delivered-note", {"channel": "wechat_template", "template": "delivery_notice"})
    ]
    clock.set(T0 + 2 * DAY)
    await beacon.post_events([event("buyer", "signed", T0 + 2 * DAY, order_id="O1")])
    await settled(redis_client)
    assert sorted(by_node(await beacon.actions("buyer"))) == ["delivered-note", "review"]
    # O3 was never delivered: staff hear of it once its 7 days and the lateness have passed.
    await advance(beacon, redis_client, clock, T0 + 7 * DAY + 1_999)
    assert await beacon.actions("waiting") == []
    await advance(beacon, redis_client, clock, T0 + 7 * DAY + 2_000)
    [alert] = await beacon.actions("waiting")
    assert (alert["node_id"], alert["type"], alert["event_ts"]) == ("late-delivery", "notify_staff", T0 + 7 * DAY)
    # The reminder comes 30 days after the review request (at the signature), for O1 only.
    await advance(beacon, redis_client, clock, T0 + 32 * DAY - 1)
    assert "repurchase" not in by_node(await beacon.actions("buyer"))
    await advance(beacon, redis_client, clock, T0 + 32 * DAY)
    # (The ledger keeps 30 days: the notices of days 1 and 2 have left it by now.)
    [reminder] = by_node(await beacon.actions("buyer"))["repurchase"]
    assert (reminder["event_ts"], reminder["params"]["template"]) == (T0 + 32 * DAY, "repurchase_reminder")

    stats = await journey_stats(beacon, "post-purchase")
    # O2's payment converted O1 (another payment within 40 days); O2 itself was refunded.
    assert journey_counts(stats) == {"entered": 3, "completed": 2, "exited": 1, "converted": 1}
    assert node_counts(stats, "wait-delivery")["left"] == {"delivered": 1, "timeout": 1}
    assert node_counts(stats, "wait-delivery")["exited"] == 1
    assert node_counts(stats, "wait-sign")["left"] == {"signed": 1}
    assert waiting_total(stats) == 0


# -- 4. a journey edited while instances run -----------------------------------------------------------


def two_step(template: str) -> dict[str, Any]:
    return {
        "id": "edited",
        "entry": {"event": "signup"},
        "exit": [{"event": "cancel"}],
        "start": "wait-1h",
        "nodes": {
            "wait-1h": {"wait": "1h", "next": "greet"},
            "greet": {"do": [{"action": "message", "channel": "sms", "template": template}], "next": "end"},
            "end": END,
        },
    }


async def test_running_instances_finish_on_their_version_and_new_ones_take_the_new_version(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    assert await put_journey(beacon, two_step("hello_v1")) == 1
    await beacon.post_events([event("early", "signup", T0), event("quitter", "signup", T0)])
    await settled(redis_client)
    assert await put_journey(beacon, two_step("hello_v2")) == 2
    clock.set(T0 + MINUTE)
    await beacon.post_events([event("late", "signup", T0 + MINUTE)])
    await settled(redis_client)
    for user, version in (("early", 1), ("quitter", 1), ("late", 2)):
        instances = (await user_view(beacon, user))["journeys"]["edited"]["instances"]
        assert [(i["version"], i["node"]) for i in instances] == [(version, "wait-1h")], user
    # An instance of the old version still leaves on its exit event.
    await beacon.post_events([event("quitter", "cancel", T0 + 2 * MINUTE)])
    await settled(redis_client)

    await advance(beacon, redis_client, clock, T0 + HOUR + MINUTE)
    early, late = await beacon.actions("early"), await beacon.actions("late")
    assert [(a["node_id"], a["params"]["template"], a["ruleset_version"]) for a in early] == [("greet", "hello_v1", 1)]
    assert [(a["node_id"], a["params"]["template"], a["ruleset_version"]) for a in late] == [("greet", "hello_v2", 2)]
    assert await beacon.actions("quitter") == []
    stats = await journey_stats(beacon, "edited")
    assert sorted(stats) == ["1", "2"]
    assert journey_counts(stats, 1) == {"entered": 2, "completed": 1, "exited": 1, "converted": 0}
    assert journey_counts(stats, 2) == {"entered": 1, "completed": 1, "exited": 0, "converted": 0}
    for version in (1, 2):
        assert node_counts(stats, "greet", version)["entered"] == 1
        assert node_counts(stats, "wait-1h", version)["waiting"] == 0
    _, body = await beacon.call("GET", "/v1/journeys/edited/stats")
    assert body["version"] == 2


# -- 5. split ------------------------------------------------------------------------------------------

SPLIT: dict[str, Any] = {
    "id": "ab-test",
    "entry": {"event": "e"},
    "reentry": {"policy": "always"},
    "start": "ab",
    "nodes": {
        "ab": {"split": [{"weight": 45, "next": "a"}, {"weight": 45, "next": "b"}, {"weight": 10, "holdout": True}]},
        "a": {"do": [coupon("C-A")], "next": "end"},
        "b": {"do": [coupon("C-B")], "next": "end"},
        "end": END,
    },
}
ARM_COUPON = {"arm0": "C-A", "arm1": "C-B", "holdout": None}
ARM_NODE = {"arm0": "a", "arm1": "b"}


def split_arms(report: dict[str, Any]) -> dict[str, list[str]]:
    """Each user's split arms, in order of entry, from a dry-run's trace."""
    return {
        user: [e["taken"] for e in reversed(entries) if e["what"] == "split"]
        for user, entries in report["trace"].items()
    }


def coupons_by_user(report: dict[str, Any]) -> dict[str, list[str]]:
    """Each user's coupons, in order, from a dry-run's steps."""
    found: dict[str, list[str]] = {}
    for step in report["steps"]:
        found.setdefault(step["user_id"], []).extend(a["params"]["coupon_id"] for a in step["actions"])
    return found


@SINGLE_ONLY
async def test_split_45_45_10_over_10000_users_is_stable_and_the_holdout_gets_nothing(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await put_journey(beacon, SPLIT)
    users = [f"user-{i}" for i in range(10_000)]
    status, report = await beacon.call(
        "POST", "/v1/journeys/ab-test:dry-run", json={"events": [{"user_id": u, "type": "e", "ts": T0} for u in users]}
    )
    assert status == 200, report
    assert report["journey_id"] == "ab-test" and report["version"] == 1
    arms = split_arms(report)
    assert sorted(arms) == sorted(users) and all(len(taken) == 1 for taken in arms.values())
    shares = Counter(taken[0] for taken in arms.values())
    for arm, weight in (("arm0", 0.45), ("arm1", 0.45), ("holdout", 0.10)):
        assert abs(shares[arm] / len(users) - weight) <= 0.03, shares
    assert report["stats"]["versions"]["1"]["nodes"]["ab"]["left"] == dict(shares)
    coupons = coupons_by_user(report)
    for user, taken in arms.items():
        expected = ARM_COUPON[taken[0]]
        assert coupons.get(user, []) == ([] if expected is None else [expected]), user
    assert report["waiting"] == []

    # Entering again (the first instance has ended at once) lands in the same arm, in a dry-run ...
    again = [{"user_id": u, "type": "e", "ts": T0 + offset} for u in users[:1000] for offset in (0, HOUR, 2 * HOUR)]
    status, report = await beacon.call("POST", "/v1/journeys/ab-test:dry-run", json={"events": again})
    assert status == 200, report
    for user, taken in split_arms(report).items():
        assert taken == arms[user] * 3, user

    # ... and live, where the ledger agrees with the dry-run user by user.
    live = users[:200]
    await beacon.post_events([event(u, "e", T0 + offset) for u in live for offset in (0, HOUR)])
    await settled(redis_client)
    for user in live:
        expected = ARM_COUPON[arms[user][0]]
        found = [(a["node_id"], a["params"]["coupon_id"]) for a in await beacon.actions(user)]
        assert found == ([] if expected is None else [(ARM_NODE[arms[user][0]], expected)] * 2), user
    stats = await journey_stats(beacon, "ab-test")
    assert node_counts(stats, "ab")["left"] == {arm: 2 * n for arm, n in Counter(arms[u][0] for u in live).items()}
    assert journey_counts(stats)["entered"] == 400 and journey_counts(stats)["completed"] == 400


# -- 6. deleting a journey ------------------------------------------------------------------------------


async def test_deleting_a_journey_cancels_its_waiting_instances(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await put_journey(beacon, library_journey("cart-recovery"))
    await put_journey(beacon, LONG_WAIT)  # a journey that stays: its timers go on firing
    await beacon.post_events([event("u", "add_to_cart", T0, sku="S1"), event("u", "follow", T0)])
    await settled(redis_client)
    instances = (await user_view(beacon, "u"))["journeys"]["cart-recovery"]["instances"]
    assert [(i["node"], i["due"]) for i in instances] == [("wait-30m", T0 + 30 * MINUTE)]

    status, body = await beacon.call("DELETE", "/v1/journeys/cart-recovery")
    assert (status, body) == (200, {"id": "cart-recovery", "deleted": True})
    assert (await beacon.call("GET", "/v1/journeys/cart-recovery"))[0] == 404
    assert (await beacon.call("GET", "/v1/journeys/cart-recovery/stats"))[0] == 404
    assert [j["id"] for j in (await beacon.call("GET", "/v1/journeys"))[1]["journeys"]] == ["long-wait"]

    await advance(beacon, redis_client, clock, T0 + 30 * MINUTE)
    await advance(beacon, redis_client, clock, T0 + 31 * DAY)
    assert [a["journey_id"] for a in await beacon.actions("u")] == ["long-wait"]
    view = await user_view(beacon, "u")
    assert view["journeys"] == {}  # nothing of the deleted journey, and long-wait ended
    assert await user_timers(redis_client, PARTITIONS, "u") == []


async def test_right_after_delete_the_user_view_shows_no_instance(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    await put_journey(beacon, library_journey("cart-recovery"))
    await beacon.post_events([event("u", "add_to_cart", T0, sku="S1")])
    await settled(redis_client)
    assert (await beacon.call("DELETE", "/v1/journeys/cart-recovery"))[0] == 200
    assert (await user_view(beacon, "u"))["journeys"] == {}


async def test_a_journey_recreated_under_a_deleted_id_starts_afresh_for_every_user(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await put_journey(beacon, library_journey("new-fan"))
    await beacon.post_events([event("touched", "follow", T0), event("untouched", "follow", T0)])
    await settled(redis_client)
    assert (await beacon.call("DELETE", "/v1/journeys/new-fan"))[0] == 200
    await beacon.post_events([event("touched", "view", T0 + 1)])  # any event: its record drops the journey
    await settled(redis_client)
    await put_journey(beacon, library_journey("new-fan"))
    await beacon.post_events([event(u, "follow", T0 + MINUTE) for u in ("touched", "untouched")])
    await settled(redis_client)
    welcomes = {u: len(await beacon.actions(u)) for u in ("touched", "untouched")}
    assert welcomes == {"touched": 2, "untouched": 2}  # the deleted journey's welcome, then the new one's
    # The old instances stay cancelled: their wait_for timers (due first) bring no article; the new ones do.
    await advance(beacon, redis_client, clock, T0 + 2 * DAY)
    for user in ("touched", "untouched"):
        found = sorted((a["node_id"], a["ruleset_version"]) for a in await beacon.actions(user))
        assert found == [("article", 2), ("welcome", 1), ("welcome", 2)], user


# -- 7. the trace -------------------------------------------------------------------------------------

CLICK_RULES: dict[str, Any] = {
    "id": "clicks",
    "rules": [
        {
            "id": "buy-click",
            "when": {"event": "menu_click", "where": {"field": "key", "op": "==", "value": "buy"}},
            "then": [{"action": "message", "channel": "wechat_cs", "template": "buy_help"}],
        }
    ],
}


def trace_line(entry: dict[str, Any]) -> tuple[Any, ...]:
    """The gist of a trace entry: who (journey node, rule, or the event's rule matching) and what."""
    if entry["kind"] == "journey":
        return ("journey", entry["node"], entry["what"])
    if entry["kind"] == "rule":
        return ("rule", entry["rule"], entry["what"])
    return ("event", entry["type"], tuple(entry["matched"]), tuple(entry["where_false"]))


async def test_the_user_trace_tells_the_journey_and_the_rules_newest_first(
    beacon_tracing_matches: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    beacon = beacon_tracing_matches
    await put_journey(beacon, library_journey("new-fan"))
    await beacon.put_ruleset(CLICK_RULES)
    user = "clicker-1"  # lands in arm0 of new-fan's split (promo-a)
    await beacon.post_events(
        [
            event(user, "follow", T0),
            event(user, "menu_click", T0 + MINUTE, key="info"),
            event(user, "menu_click", T0 + 2 * MINUTE, key="buy"),
        ]
    )
    await settled(redis_client)
    await advance(beacon, redis_client, clock, T0 + MINUTE + DAY)
    trace = await user_trace(beacon, user)
    assert [trace_line(e) for e in reversed(trace)] == [
        ("journey", "", "entered"),
        ("journey", "welcome", "actions"),
        ("journey", "wait-click", "timer_set"),
        ("event", "menu_click", (), ("clicks/buy-click",)),  # the rule's where is false for key=info
        ("journey", "wait-click", "timer_cancelled"),
        ("journey", "wait-click", "event"),
        ("journey", "interested", "actions"),
        ("journey", "day-later", "timer_set"),
        ("event", "menu_click", ("clicks/buy-click",), ()),
        ("rule", "clicks/buy-click", "fired"),
        ("journey", "day-later", "wait_over"),
        ("journey", "ab", "split"),
        ("journey", "promo-a", "actions"),
        ("journey", "end", "completed"),
    ]
    # Newest first: by evaluation (`at`, the server clock when it was committed), not by event time.
    assert [e["at"] for e in trace] == sorted((e["at"] for e in trace), reverse=True)
    assert trace[0]["at"] == T0 + MINUTE + DAY and trace[-1]["at"] == T0
    newest = {trace_line(e): e for e in trace}
    entered = newest[("journey", "", "entered")]
    assert (entered["journey_id"], entered["version"], entered["key"], entered["ts"]) == ("new-fan", 1, "_", T0)
    assert newest[("journey", "wait-click", "timer_set")]["due"] == T0 + DAY + 2_000
    assert newest[("journey", "day-later", "timer_set")]["due"] == T0 + MINUTE + DAY
    assert newest[("journey", "ab", "split")]["taken"] == "arm0"

    # Each action with its delivery status, as the ledger has it (no connectors run: messages stay pending).
    ledger = {a["action_id"]: a for a in await beacon.actions(user)}
    listed = {
        line[1]: e["actions"] for e in trace if (line := trace_line(e))[2] in ("actions", "fired") and "actions" in e
    }
    assert sorted(listed) == ["clicks/buy-click", "interested", "promo-a", "welcome"]
    for node, actions in listed.items():
        assert len(actions) == 1, node
        action = actions[0]
        assert action["status"] == ledger[action["action_id"]]["status"], node
    assert [listed[n][0]["status"] for n in ("welcome", "interested", "promo-a", "clicks/buy-click")] == [
        "pending",
        "delivered",  # a tag is applied by the engine itself
        "pending",
        "pending",
    ]
    assert ledger[listed["promo-a"][0]["action_id"]]["params"] == {"coupon_id": "C-A"}
    assert ledger[listed["clicks/buy-click"][0]["action_id"]]["params"]["template"] == "buy_help"
    assert [e["what"] for e in await user_trace(beacon, user, limit=2)] == ["completed", "actions"]


async def test_by_default_the_trace_keeps_outcomes_not_every_events_matches(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    """Without BEACON_TRACE_MATCHES an event leaves no `event` entry, only what it caused: a firing here."""
    await beacon.put_ruleset(CLICK_RULES)
    await beacon.post_events(
        [event("clicker-2", "menu_click", T0, key="info"), event("clicker-2", "menu_click", T0 + 1, key="buy")]
    )
    await settled(redis_client)
    assert [trace_line(e) for e in await user_trace(beacon, "clicker-2")] == [("rule", "clicks/buy-click", "fired")]


async def test_store_visit_branches_on_the_vip_tag_at_10_the_next_morning_shanghai_time(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await put_journey(beacon, library_journey("store-visit"))
    assert (await beacon.call("PATCH", "/v1/users/vip", json={"add_tags": ["vip"]}))[0] == 200
    # T0 is 08:00 in Shanghai; the payer pays within the 4 hours and leaves.
    await beacon.post_events(
        [
            event("vip", "store_visit", T0),
            event("plain", "store_visit", T0),
            event("payer", "store_visit", T0),
            event("payer", "pay", T0 + 3 * HOUR),
        ]
    )
    await settled(redis_client)
    await advance(beacon, redis_client, clock, T0 + 4 * HOUR + 2_000)
    next_morning = T0 + 26 * HOUR  # 2026-01-02 10:00 Asia/Shanghai
    for user in ("vip", "plain"):
        timer_set = [e for e in await user_trace(beacon, user) if e.get("what") == "timer_set"]
        assert [(e["node"], e["due"]) for e in timer_set] == [
            ("next-morning", next_morning),
            ("wait-pay", T0 + 4 * HOUR + 2_000),
        ], user
    await advance(beacon, redis_client, clock, next_morning - 1)
    assert await beacon.actions("vip") == [] and await beacon.actions("plain") == []
    await advance(beacon, redis_client, clock, next_morning)
    vip, plain = await beacon.actions("vip"), await beacon.actions("plain")
    assert [(a["node_id"], a["type"], a["params"]["template"]) for a in vip] == [
        ("guide-call", "notify_staff", "guide_follow_up")
    ]
    assert [(a["node_id"], a["type"], a["params"]) for a in plain] == [
        ("guide-message", "message", {"channel": "wecom", "template": "guide_follow_up"})
    ]
    assert await beacon.actions("payer") == []
    branches = {
        u: [e["taken"] for e in await user_trace(beacon, u) if e.get("what") == "branch"] for u in ("vip", "plain")
    }
    assert branches == {"vip": ["arm0"], "plain": ["else"]}
    stats = await journey_stats(beacon, "store-visit")
    assert node_counts(stats, "vip?")["left"] == {"arm0": 1, "else": 1}
    assert node_counts(stats, "wait-pay")["left"] == {"pay": 1, "timeout": 2}
    assert journey_counts(stats) == {"entered": 3, "completed": 3, "exited": 0, "converted": 0}


# -- 8. the journey endpoints over HTTP ------------------------------------------------------------------


def broken_next() -> dict[str, Any]:
    document = library_journey("new-fan")
    document["nodes"]["welcome"]["next"] = "wait-clik"
    return document


def broken_split() -> dict[str, Any]:
    document = copy.deepcopy(SPLIT)
    document["nodes"]["ab"]["split"][2]["weight"] = 20
    return document


def broken_cycle() -> dict[str, Any]:
    document = copy.deepcopy(SPLIT)
    document["nodes"]["a"]["next"] = "ab"
    return document


def broken_timeout() -> dict[str, Any]:
    document = library_journey("new-fan")
    document["nodes"]["wait-click"]["timeout"] = "1 day"
    return document


def broken_kind() -> dict[str, Any]:
    document = library_journey("new-fan")
    document["nodes"]["welcome"] = {"send": "welcome", "next": "wait-click"}
    return document


BROKEN = [
    (broken_next, "nodes.welcome.next", "wait-clik"),
    (broken_split, "nodes.ab.split", "not 100"),
    (broken_cycle, "nodes.ab", "cycle"),
    (broken_timeout, "nodes.wait-click.timeout", "duration"),
    (broken_kind, "nodes.welcome", "exactly one of"),
]


@SINGLE_ONLY
@pytest.mark.parametrize(("make", "path", "words"), BROKEN, ids=[item[1] for item in BROKEN])
async def test_a_broken_journey_is_refused_with_422_naming_the_node(
    beacon: Beacon, make: Any, path: str, words: str
) -> None:
    document = make()
    status, body = await beacon.call("POST", "/v1/journeys:validate", json=document)
    assert status == 422, body
    assert body["error"]["path"] == path and words in body["error"]["message"], body
    put_status, put_body = await beacon.call("PUT", f"/v1/journeys/{document['id']}", json=document)
    assert (put_status, put_body) == (422, body)
    assert (await beacon.call("GET", f"/v1/journeys/{document['id']}"))[0] == 404  # nothing stored


@SINGLE_ONLY
@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"[1, 2]", 422, "invalid"),
        (b'"not a journey"', 422, "invalid"),
        (b"{}", 422, "invalid"),
        (b"null", 422, "invalid"),
        (b"{not json", 400, "malformed"),
        (b"", 400, "malformed"),
    ],
    ids=["list", "string", "empty-object", "null", "not-json", "no-body"],
)
async def test_a_body_that_is_not_a_journey_is_refused_not_a_500(
    beacon: Beacon, raw: bytes, status: int, code: str
) -> None:
    for method, path in (("POST", "/v1/journeys:validate"), ("PUT", "/v1/journeys/j")):
        found, answer = await beacon.call(method, path, data=raw, headers={"Content-Type": "application/json"})
        assert (found, answer["error"]["code"]) == (status, code), (method, answer)
    assert (await beacon.call("GET", "/v1/journeys/j"))[0] == 404


@SINGLE_ONLY
async def test_validate_get_versions_dry_run_and_404s(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    status, body = await beacon.call("POST", "/v1/journeys:validate", json=library_journey("new-fan"))
    assert (status, body["valid"], body["id"]) == (200, True, "new-fan")
    assert sorted(body["nodes"]) == sorted(library_journey("new-fan")["nodes"])
    assert (await beacon.call("GET", "/v1/journeys"))[1]["journeys"] == []  # validating stores nothing

    for method, path in (
        ("GET", "/v1/journeys/nope"),
        ("GET", "/v1/journeys/nope/stats"),
        ("DELETE", "/v1/journeys/nope"),
    ):
        status, body = await beacon.call(method, path)
        assert status == 404 and body["error"]["code"] == "not_found", (method, path, body)
    status, body = await beacon.call("POST", "/v1/journeys/nope:dry-run", json={"events": [event("u", "follow", T0)]})
    assert status == 404, body

    first = two_step("hello_v1")
    await put_journey(beacon, first)
    await put_journey(beacon, two_step("hello_v2"))
    status, body = await beacon.call("GET", "/v1/journeys/edited")
    assert (status, body["version"], body["versions"]) == (200, 2, [1, 2])
    assert body["document"]["nodes"]["greet"]["do"][0]["template"] == "hello_v2"
    status, body = await beacon.call("GET", "/v1/journeys/edited", params={"version": "1"})
    assert (status, body["version"], body["document"]) == (200, 1, first)
    assert (await beacon.call("GET", "/v1/journeys/edited", params={"version": "7"}))[0] == 404
    assert (await beacon.call("GET", "/v1/journeys/edited", params={"version": "one"}))[0] == 422

    # A dry-run of the stored (active) journey: its version, its actions on the simulated clock, nothing live.
    await put_journey(beacon, library_journey("new-fan"))
    status, report = await beacon.call(
        "POST",
        "/v1/journeys/new-fan:dry-run",
        json={"events": [event("fan", "follow", T0), event("lurker", "follow", T0)], "until": T0 + HOUR},
    )
    assert status == 200, report
    assert (report["journey_id"], report["version"]) == ("new-fan", 1)
    assert [(s["user_id"], s["node"], s["actions"]) for s in report["steps"]] == [
        (
            "fan",
            "welcome",
            [{"type": "message", "params": {"channel": "wechat_cs", "template": "welcome"}, "due_at": T0}],
        ),
        (
            "lurker",
            "welcome",
            [{"type": "message", "params": {"channel": "wechat_cs", "template": "welcome"}, "due_at": T0}],
        ),
    ]
    assert sorted((w["user_id"], w["node"], w["due"]) for w in report["waiting"]) == [
        ("fan", "wait-click", T0 + DAY + 2_000),
        ("lurker", "wait-click", T0 + DAY + 2_000),
    ]
    status, report = await beacon.call(
        "POST", "/v1/journeys/new-fan:dry-run", json={"events": [event("lurker", "follow", T0)]}
    )
    assert [s["node"] for s in report["steps"]] == ["welcome", "article"]  # no until: every timer fires
    assert report["stats"]["versions"]["1"]["journey"]["completed"] == 1
    assert await beacon.actions("fan") == [] and await beacon.actions("lurker") == []
    assert (await journey_stats(beacon, "new-fan")) == {}


# -- 9. SIGKILL between two steps --------------------------------------------------------------------------

# `beacon serve` runs on the system clock: short real waits, and polling with deadlines.
CHAIN: dict[str, Any] = {
    "id": "chain",
    "description": "three messages two seconds apart",
    "entry": {"event": "go"},
    "start": "a",
    "nodes": {
        "a": {"do": [{"action": "message", "channel": "sms", "template": "step_a"}], "next": "w1"},
        "w1": {"wait": "2s", "next": "b"},
        "b": {"do": [{"action": "message", "channel": "sms", "template": "step_b"}], "next": "w2"},
        "w2": {"wait": "2s", "next": "c"},
        "c": {"do": [{"action": "message", "channel": "sms", "template": "step_c"}], "next": "end"},
        "end": END,
    },
}
CRASH_USERS = [f"chain-{i}" for i in range(1200)]
WAVES = 6  # the users enter in waves 0.25 s apart, so their steps fall due over 1.5 s, not at one instant


async def crash_stats(client: ServeClient) -> dict[str, Any]:
    status, body = await client.call("GET", "/v1/journeys/chain/stats")
    assert status == 200, body
    return dict(body["versions"])


@SINGLE_ONLY
async def test_sigkill_between_two_steps_neither_skips_nor_repeats_a_step(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    env = beacon_env(redis_url, free_port(), PARTITIONS, BEACON_RUN_CONNECTORS="false")
    serve = BeaconProcess("serve", env, tmp_path, "serve")
    rng = random.Random("journeys-crash")
    async with aiohttp.ClientSession() as session:
        try:
            serve.start()
            await wait_healthy(serve, session)
            client = ServeClient(session, serve.port)
            status, body = await client.call("PUT", "/v1/journeys/chain", json=CHAIN)
            assert status == 200, body
            wave = len(CRASH_USERS) // WAVES
            for index in range(WAVES):
                now = int(time.time() * 1000)
                users = CRASH_USERS[index * wave : (index + 1) * wave]
                status, body = await client.call(
                    "POST", "/v1/events", json={"events": [event(u, "go", now) for u in users]}
                )
                assert status == 200, body
                await asyncio.sleep(0.25)

            # Kill 1: every instance has taken `a` and (all but a few, on a slow machine) waits in w1.
            stats = await eventually(
                lambda: crash_stats(client),
                lambda found: node_counts(found, "w1")["entered"] == len(CRASH_USERS),
                timeout_s=10,
            )
            assert node_counts(stats, "w1")["entered"] == len(CRASH_USERS), stats
            serve.kill9()
            serve.start()
            await wait_healthy(serve, session)

            # Kill 2: while `b` and `c` steps are being taken, preferably in the middle of a batch.
            await eventually(
                lambda: crash_stats(client), lambda found: node_counts(found, "b")["entered"] > 0, timeout_s=20
            )
            before = await crash_stats(client)
            where = await kill9_with_steps_due(serve, redis_client, PARTITIONS, rng, wait_s=1.5)
            print(
                f"second kill: {where}; b entered {node_counts(before, 'b')['entered']}, c entered "
                f"{node_counts(before, 'c')['entered']} of {len(CRASH_USERS)} shortly before"
            )
            serve.start()
            await wait_healthy(serve, session)

            stats = await eventually(
                lambda: crash_stats(client),
                lambda found: journey_counts(found).get("completed") == len(CRASH_USERS),
                timeout_s=30,
            )
            assert journey_counts(stats) == {
                "entered": len(CRASH_USERS),
                "completed": len(CRASH_USERS),
                "exited": 0,
                "converted": 0,
            }, (where, stats)
            for node in ("a", "w1", "b", "w2", "c", "end"):
                counts = node_counts(stats, node)
                assert (counts["entered"], counts["waiting"]) == (len(CRASH_USERS), 0), (node, where, stats)

            ledger_ids: list[str] = []
            for user in CRASH_USERS:
                actions = await client.actions(user)
                steps = sorted((a["node_id"], a["params"]["template"], a["event_ts"]) for a in actions)
                start = steps[0][2]
                assert steps == [
                    ("a", "step_a", start),
                    ("b", "step_b", start + 2_000),
                    ("c", "step_c", start + 4_000),
                ], (user, where)
                ledger_ids.extend(a["action_id"] for a in actions)
            # Queued for delivery exactly once each: nothing the crashes made the owners redo went out twice.
            queued = Counter(await outbox_action_ids(redis_client, PARTITIONS))
            assert sorted(queued) == sorted(ledger_ids) and set(queued.values()) == {1}, (where, queued.most_common(3))
        finally:
            serve.stop()


async def test_a_journeys_and_a_rulesets_fatigue_cap_travel_with_their_actions(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    """`"fatigue": {"max", "per"}` on a journey or ruleset reaches the connectors on every action record."""
    await put_journey(
        beacon,
        {
            "id": "nurture",
            "entry": {"event": "follow"},
            "fatigue": {"max": 2, "per": "7d"},
            "start": "hi",
            "nodes": {"hi": {"do": [{"action": "message", "channel": "sms", "template": "hi"}]}},
        },
    )
    await beacon.put_ruleset(
        {
            "id": "promos",
            "fatigue": {"max": 1, "per": "1d"},
            "rules": [{"id": "p", "when": {"event": "follow"}, "then": [{"action": "coupon", "coupon_id": "C"}]}],
        }
    )
    await beacon.post_events([event("f1", "follow", T0)])
    await settled(redis_client)
    found = {action["ruleset_id"]: action.get("fatigue") for action in await beacon.actions("f1")}
    assert found == {
        "nurture": {"cap": "journey:nurture", "max": 2, "per_ms": 7 * DAY},
        "promos": {"cap": "ruleset:promos", "max": 1, "per_ms": DAY},
    }
    status, body = await beacon.call(
        "POST", "/v1/journeys:validate", json={**library_journey("new-fan"), "fatigue": {"max": 0, "per": "1d"}}
    )
    assert (status, body["error"]["path"]) == (422, "fatigue.max")
