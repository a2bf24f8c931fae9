"""Plans through the real server on a real Redis (single and cluster), on a manual clock: occurrences open
when due, each audience member gets the plan's actions exactly once, branches dedupe by priority, the
participation limit holds across occurrences, local-time plans act at each user's wall-clock time,
pause / resume / cancel, and a journey as the target."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from beacon.clock import ManualClock
from tests.harness import Beacon, eventually
from tests.scenarios.journeys_kit import put_journey
from tests.scenarios.test_seed_scenarios import DAY, MINUTE, T0, advance, settled

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

    found = await eventually(probe, lambda ended: len(ended) >= count, timeout_s=15)
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
    assert {(a["type"], a["params"]["coupon_id"], a["plan_id"]) for a in actions} == {("coupon", "C-vip-day", "vip-day")}
