"""Plans through the real server on a real Redis (single and cluster), on a manual clock: occurrences open
when due, each audience member gets the plan's actions exactly once, branches dedupe by priority, the
participation limit holds across occurrences, local-time plans act at each user's wall-clock time,
pause / resume / cancel, and a journey as the target."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from beacon.redis_server import free_port
from cep import streams
from tests.chaos.processes import BeaconProcess, beacon_env, wait_healthy
from tests.harness import Beacon, eventually
from tests.scenarios.journeys_kit import ServeClient, outbox_action_ids, put_journey
from tests.scenarios.test_seed_scenarios import DAY, MINUTE, PARTITIONS, T0, advance, event, settled

HOUR = 60 * MINUTE


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


async def put_audience(beacon: Beacon, audience_id: str, ids: list[str]) -> None:
    status, body = await beacon.call("PUT", f"/v1/audiences/{audience_id}", json={"ids": ids})
    assert status == 200, body


async def put_plan(beacon: Beacon, document: dict[str, Any]) -> dict[str, Any]:
    status, body = await beacon.call("PUT", f"/v1/plans/{document['id']}", json=document)
    assert status == 200, body
    return dict(body)


async def runs(beacon: Beacon, plan_id: str) -> list[dict[str, Any]]:
    status, body = await beacon.call("GET", f"/v1/plans/{plan_id}/runs")
    assert status == 200, body
    return list(body["runs"])


async def finished_runs(beacon: Beacon, redis: aioredis.Redis, plan_id: str, count: int) -> list[dict[str, Any]]:
    """Wait until `count` runs ended and every plan event they sent was processed."""

    async def probe() -> list[dict[str, Any]]:
        return [run for run in await runs(beacon, plan_id) if run["status"] != "running"]

    await eventually(probe, lambda ended: len(ended) >= count, timeout_s=15)
    await settled(redis)
    return await runs(beacon, plan_id)


def coupon_plan(plan_id: str, audience: Any, at_ms: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": plan_id,
        "audience": audience,
        "schedule": {"at": iso(at_ms)},
        "then": [{"action": "coupon", "coupon_id": "C-{{event.plan}}"}],
        **extra,
    }


async def test_a_once_plan_sends_each_member_once_when_due(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    users = [f"u{n}" for n in range(50)]
    await put_audience(beacon, "vip", users)
    put = await put_plan(beacon, coupon_plan("vip-day", "aud:vip", T0 + HOUR, rate=10_000))
    assert put["next_occurrence"]["start_ms"] == T0 + HOUR
    await advance(beacon, redis_client, clock, T0 + HOUR - 1)
    assert await runs(beacon, "vip-day") == []
    clock.set(T0 + HOUR)
    (run,) = await finished_runs(beacon, redis_client, "vip-day", 1)
    assert (run["status"], run["targeted"], run["sent"], run["entered"]) == ("done", 50, 50, 50)
    actions = await beacon.actions()
    assert sorted(a["user_id"] for a in actions) == sorted(users)
    assert {(a["type"], a["params"]["coupon_id"], a["plan_id"]) for a in actions} == {
        ("coupon", "C-vip-day", "vip-day")
    }


async def test_branches_dedupe_by_priority(beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock) -> None:
    await put_audience(beacon, "gold", [f"u{n}" for n in range(10)])
    await put_audience(beacon, "silver", [f"u{n}" for n in range(5, 15)])
    plan = {
        "id": "tiers",
        "schedule": {"at": iso(T0)},
        "rate": 10_000,
        "branches": [
            {"audience": "aud:gold", "then": [{"action": "coupon", "coupon_id": "GOLD"}]},
            {"audience": "aud:silver", "then": [{"action": "coupon", "coupon_id": "SILVER"}]},
        ],
    }
    status, estimate = await beacon.call("POST", "/v1/plans/tiers:estimate")
    assert status == 404, estimate
    await put_plan(beacon, plan)
    status, estimate = await beacon.call("POST", "/v1/plans/tiers:estimate")
    assert (status, estimate["branches"], estimate["total"]) == (200, [10, 5], 15)
    (run,) = await finished_runs(beacon, redis_client, "tiers", 1)
    assert (run["targeted"], run["sent"], run["entered"]) == (15, 15, 15)
    got = {a["user_id"]: a["params"]["coupon_id"] for a in await beacon.actions()}
    assert got == {f"u{n}": "GOLD" if n < 10 else "SILVER" for n in range(15)}
    assert len(await beacon.actions()) == 15  # nobody in both got two


async def test_a_recurring_plan_keeps_the_participation_limit_across_occurrences(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await put_audience(beacon, "fans", ["a", "b", "c"])
    plan = coupon_plan("daily", "aud:fans", 0, rate=10_000, limit={"per_user": 1, "per": "2d"})
    plan["schedule"] = {"cron": "0 10 * * *", "tz": "Asia/Shanghai"}  # 02:00 UTC
    put = await put_plan(beacon, plan)
    first = T0 + 2 * HOUR
    assert put["next_occurrence"] == {"id": "20260101T0200Z", "start_ms": first}
    outcomes = []
    for day in range(4):
        clock.set(first + day * DAY)
        ran = await finished_runs(beacon, redis_client, "daily", day + 1)
        outcomes.append((ran[0]["occurrence"], ran[0]["entered"], ran[0]["blocked"]))
    # The window opens at the first entry (day 0) and lasts 2 days: day 2's occurrence opens the next.
    assert outcomes == [
        ("20260101T0200Z", 3, {}),
        ("20260102T0200Z", 0, {"reentry_max_per": 3}),
        ("20260103T0200Z", 3, {}),
        ("20260104T0200Z", 0, {"reentry_max_per": 3}),
    ]
    assert len(await beacon.actions("a")) == 2


async def test_a_local_time_plan_acts_at_each_users_wall_clock_time(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    zones = {"sh": None, "ny": "America/New_York", "ldn": "Europe/London", "bad": "Mars/Olympus"}
    for user, zone in zones.items():
        status, body = await beacon.call("PATCH", f"/v1/users/{user}", json={"attrs": {"tz": zone} if zone else {}})
        assert status == 200, body
    await put_audience(beacon, "world", list(zones))
    plan = coupon_plan("morning", "aud:world", 0, rate=10_000)
    plan["schedule"] = {"at": "2026-01-02T10:00", "local": True, "tz": "Asia/Shanghai"}
    put = await put_plan(beacon, plan)
    # Sending starts when 10:00 is an hour away in the earliest zone (UTC+14): 2026-01-01 19:00 UTC.
    start = T0 + 19 * HOUR
    assert put["next_occurrence"] == {"id": "L20260102T1000", "start_ms": start, "local": "2026-01-02T10:00"}
    clock.set(start)
    await eventually(lambda: runs(beacon, "morning"), lambda found: bool(found) and found[0]["entered"] == 4)
    # 10:00 in Shanghai (also for the user without a zone, and the one with a bad zone) is 02:00 UTC.
    due = {"sh": T0 + DAY + 2 * HOUR, "bad": T0 + DAY + 2 * HOUR, "ldn": T0 + DAY + 10 * HOUR}
    due["ny"] = T0 + DAY + 15 * HOUR
    for moment in sorted(set(due.values())):
        await advance(beacon, redis_client, clock, moment - 1)
        acted = {user for user in zones if await beacon.actions(user)}
        assert acted == {user for user, at in due.items() if at < moment}, moment
        await advance(beacon, redis_client, clock, moment)
        acted = {user for user in zones if await beacon.actions(user)}
        assert acted == {user for user, at in due.items() if at <= moment}, moment
    for user, at in due.items():
        (action,) = await beacon.actions(user)
        assert action["due_at"] <= at <= action["created_at"], (user, action)


async def test_a_plan_can_enter_a_journey_and_target_a_segment(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    status, body = await beacon.call("PUT", "/v1/segments/vip", json={"id": "vip", "where": {"tag": "vip"}})
    assert status == 200, body
    for user in ("a", "b"):
        status, body = await beacon.call("PATCH", f"/v1/users/{user}", json={"add_tags": ["vip"]})
        assert status == 200, body
    await settled(redis_client)
    journey = {
        "id": "welcome-back",
        "entry": {"event": "login"},
        "start": "hello",
        "nodes": {"hello": {"do": [{"action": "message", "channel": "sms", "template": "hello"}]}},
    }
    await put_journey(beacon, journey)
    plan = {"id": "vip-push", "audience": "seg:vip", "schedule": {"at": iso(T0)}, "then": {"journey": "welcome-back"}}
    await put_plan(beacon, plan)
    (run,) = await finished_runs(beacon, redis_client, "vip-push", 1)
    assert (run["targeted"], run["sent"], run["entered"]) == (2, 2, 2)
    for user in ("a", "b"):
        (action,) = await beacon.actions(user)
        assert (action["journey_id"], action["params"]["template"]) == ("welcome-back", "hello")
    status, stats = await beacon.call("GET", "/v1/journeys/welcome-back/stats")
    assert stats["versions"]["1"]["journey"]["entered"] == 2


async def test_pause_resume_and_cancel(beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock) -> None:
    users = [f"u{n:03d}" for n in range(300)]
    await put_audience(beacon, "many", users)
    await put_plan(beacon, coupon_plan("slow", "aud:many", T0, rate=100))
    await eventually(lambda: runs(beacon, "slow"), lambda found: bool(found) and found[0]["sent"] > 0)
    status, body = await beacon.call("POST", "/v1/plans/slow:pause")
    assert (status, body["state"]) == (200, "paused")
    paused_at = (await runs(beacon, "slow"))[0]["sent"]
    # Another plan runs to its end meanwhile: the driver ticked on, and sent nothing more of the paused one.
    await put_audience(beacon, "few", ["x"])
    await put_plan(beacon, coupon_plan("quick", "aud:few", T0, rate=10_000))
    await finished_runs(beacon, redis_client, "quick", 1)
    (run,) = await runs(beacon, "slow")
    assert (run["status"], run["sent"]) == ("running", paused_at)
    assert paused_at < len(users)
    status, body = await beacon.call("POST", "/v1/plans/slow:resume")
    assert (status, body["state"]) == (200, "active")
    await eventually(lambda: runs(beacon, "slow"), lambda found: found[0]["sent"] > paused_at)
    status, body = await beacon.call("POST", "/v1/plans/slow:cancel")
    assert (status, body["cancelled_runs"]) == (200, [run["occurrence"]])
    cancelled_at = (await runs(beacon, "slow"))[0]["sent"]
    await put_plan(beacon, coupon_plan("quick2", "aud:few", T0, rate=10_000))
    await finished_runs(beacon, redis_client, "quick2", 1)
    (run,) = await runs(beacon, "slow")
    assert (run["status"], run["sent"], run["entered"]) == ("cancelled", cancelled_at, cancelled_at)
    assert 0 < cancelled_at < len(users)
    slow = [a for a in await beacon.actions() if a.get("plan_id") == "slow"]
    assert len(slow) == len({a["user_id"] for a in slow}) == cancelled_at


async def test_bad_plans_are_refused_at_their_paths(beacon: Beacon, clock: ManualClock) -> None:
    await put_audience(beacon, "vip", ["a"])
    good = coupon_plan("p", "aud:vip", T0 + HOUR)
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "audience": "seg:nope"}, "audience"),
        ({**good, "audience": {"union": ["aud:vip", "aud:gone"]}}, "audience.union[1]"),
        ({**good, "audience": "vip"}, "audience"),
        ({**good, "schedule": {"cron": "61 * * * *"}}, "schedule.cron"),
        ({**good, "schedule": {"at": "tomorrow"}}, "schedule.at"),
        ({**good, "schedule": {"at": "2026-01-02T10:00"}}, "schedule.at"),
        ({**good, "schedule": {"at": "2026-01-02T10:00+08:00", "local": True}}, "schedule.at"),
        ({**good, "schedule": {"at": iso(T0 - 2 * HOUR)}}, "schedule.at"),
        ({**good, "schedule": {}}, "schedule"),
        ({**good, "then": {"journey": "nope"}}, "then.journey"),
        ({**good, "then": {"journey": "j"}, "limit": {"per_user": 1, "per": "1d"}}, "limit"),
        ({**good, "limit": {"per_user": 0, "per": "1d"}}, "limit.per_user"),
        ({**good, "rate": 0}, "rate"),
        ({**good, "attrs": {"plan": "x"}}, "attrs.plan"),
        ({**good, "branches": []}, "audience"),
        ({**good, "colour": "red"}, "colour"),
        ({**good, "then": [{"action": "coupon"}]}, "then[0].coupon_id"),
    ]
    for document, path in cases:
        status, body = await beacon.call("PUT", "/v1/plans/p", json=document)
        assert status == 422, (document, body)
        paths = [body["error"].get("path"), *(e.get("path") for e in body["error"].get("errors", []))]
        assert path in paths, (path, body)
    status, body = await beacon.call("GET", "/v1/plans/p")
    assert status == 404, body
    status, body = await beacon.call("GET", "/v1/plans/p/runs")
    assert status == 404, body
    for verb in ("pause", "resume", "cancel", "estimate"):
        status, body = await beacon.call("POST", f"/v1/plans/p:{verb}")
        assert status == 404, (verb, body)
    put = await put_plan(beacon, good)
    status, listed = await beacon.call("GET", "/v1/plans")
    assert listed["plans"][0]["id"] == "p" and listed["plans"][0]["state"] == "active", listed
    status, body = await beacon.call("DELETE", "/v1/plans/p")
    assert (status, body["deleted"], put["version"]) == (200, True, 1)


CRASH_USERS = [f"c{n:05d}" for n in range(6_000)]


async def test_a_plan_sigkilled_mid_send_resumes_and_sends_each_user_once(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    env = beacon_env(redis_url, free_port(), PARTITIONS, BEACON_RUN_CONNECTORS="false")
    serve = BeaconProcess("serve", env, tmp_path, "serve")
    async with aiohttp.ClientSession() as session:
        try:
            serve.start()
            await wait_healthy(serve, session)
            client = ServeClient(session, serve.port)
            status, body = await client.call("PUT", "/v1/audiences/crowd", json={"ids": CRASH_USERS})
            assert status == 200, body
            now = int(time.time() * 1000)
            plan = coupon_plan("crash", "aud:crowd", now, rate=2_000)
            status, body = await client.call("PUT", "/v1/plans/crash", json=plan)
            assert status == 200, body

            async def sent() -> int:
                status, body = await client.call("GET", "/v1/plans/crash/runs")
                return int(body["runs"][0]["sent"]) if status == 200 and body["runs"] else 0

            # Killed mid-send: some users sent, most not.
            killed_at = await eventually(sent, lambda count: count >= 1_000, timeout_s=20)
            serve.kill9()
            assert killed_at < len(CRASH_USERS)
            serve.start()
            await wait_healthy(serve, session)

            async def run() -> dict[str, Any]:
                status, body = await client.call("GET", "/v1/plans/crash/runs")
                assert status == 200, body
                return dict(body["runs"][0])

            done = await eventually(run, lambda found: found["status"] == "done", timeout_s=30)
            await eventually(lambda: streams.backlog(redis_client, PARTITIONS), lambda lag: lag == 0, timeout_s=20)
            done = await run()
            print(f"killed with {killed_at} of {len(CRASH_USERS)} sent")
            total = len(CRASH_USERS)
            assert (done["targeted"], done["sent"], done["entered"], done["blocked"]) == (total, total, total, {})
            action_ids = await outbox_action_ids(redis_client, PARTITIONS)
            assert len(action_ids) == len(set(action_ids)) == total
        finally:
            serve.stop()


async def test_a_plans_report_counts_its_conversions_and_runs(
    beacon: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    await put_audience(beacon, "four", ["a", "b", "c", "d"])
    plan = coupon_plan("promo", "aud:four", T0, rate=10_000, goal={"event": "pay", "within": "1d", "value": "amount"})
    await put_plan(beacon, plan)
    (run,) = await finished_runs(beacon, redis_client, "promo", 1)
    await beacon.post_events(
        [event(user, "pay", T0 + HOUR, amount=amount) for user, amount in (("a", 10), ("b", 15))]
        + [event("c", "pay", T0 + 2 * DAY, amount=99)]  # outside the goal window
    )
    await settled(redis_client)
    status, found = await beacon.call(
        "GET", "/v1/reports/plans/promo", params={"from": "2026-01-01", "to": "2026-01-05"}
    )
    assert status == 200, found
    assert (found["funnel"]["entered"], found["funnel"]["acted"]) == (4, 4)
    assert found["funnel"]["converted"]["acted"] == 2 and found["funnel"]["revenue"]["acted"] == 25.0
    assert found["runs"] == [
        {"occurrence": run["occurrence"], "status": "done", "targeted": 4, "sent": 4, "entered": 4}
    ]
