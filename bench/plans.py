"""Plan send rate: one occurrence to every member of a large static audience, flat out.

A fresh Valkey and `beacon serve` (workers in process, connectors off: the engine's cost, not a
provider's), an audience list of `size.plan_users` ids uploaded as NDJSON, and a once-plan due now with
the highest rate, giving each member one coupon action. Reported: users sent per second (snapshot and
appends, `cep.plan_driver`), users processed per second (their plan events evaluated and the actions
written to the ledger and outbox), and CPU µs per user for `beacon serve` and Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from bench import cpu, load
from bench.harness import BeaconStack, HarnessError, beacon_stack
from bench.report import Row
from bench.sizes import Size

log = logging.getLogger("bench.plans")

SECTION = "plans"


def row_ids() -> list[str]:
    """Every row this benchmark reports, in order."""
    return [
        "plans.send_rate",
        "plans.processed_rate",
        *(f"cpu.plans.{role}_us_per_user" for role in ("serve", "redis")),
    ]


async def _call(stack: BeaconStack, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session,
        session.request(method, f"{stack.base_url}{path}", **kwargs) as response,
    ):
        reply: dict[str, Any] = await response.json(content_type=None)
        if response.status != 200:
            raise HarnessError(f"{method} {path} answered {response.status}: {str(reply)[:300]}")
        return reply


async def plan_rows(size: Size) -> list[Row]:
    """Send one plan occurrence to `size.plan_users` users and time it."""
    users = size.plan_users
    async with beacon_stack(with_ruleset=False, extra_env={"BEACON_RUN_CONNECTORS": "0"}) as stack:
        redis = stack.client()
        try:
            started = time.monotonic()
            body = "".join(f'{{"user_id": "u{n:07d}"}}\n' for n in range(users)).encode()
            headers = {"Content-Type": "application/x-ndjson"}
            await _call(stack, "PUT", "/v1/audiences/everyone", data=body, headers=headers)
            log.info("plans: audience of %s uploaded in %.1fs", f"{users:,}", time.monotonic() - started)
            at = datetime.now(UTC).isoformat()
            plan = {
                "id": "bench",
                "audience": "aud:everyone",
                "schedule": {"at": at},
                "rate": 1_000_000,
                "then": [{"action": "coupon", "coupon_id": "BENCH"}],
            }
            roles = stack.pids_by_role()
            before = await cpu.sample(redis, roles)
            began = time.monotonic()
            await _call(stack, "PUT", "/v1/plans/bench", json=plan)
            sent_at = await _wait_sent(stack, users, size.drain_timeout_s * 4)
            drained = await load.wait_drained(redis, stack.partitions, size.drain_timeout_s * 4)
            after = await cpu.sample(redis, roles)
            run = (await _call(stack, "GET", "/v1/plans/bench/runs"))["runs"][0]
        finally:
            await redis.aclose()
    if drained is None or run["entered"] != users:
        raise HarnessError(f"plan run did not finish: {run}")
    cost = cpu.per_event_us(before, after, users)
    detail = (
        f"{users:,} users of a static audience, one coupon each; `beacon serve` with in-process workers, "
        f"connectors off, {stack.partitions} partitions"
    )
    return [
        Row(
            "plans.send_rate",
            SECTION,
            "plan send rate (snapshot + appends)",
            users / (sent_at - began),
            "users/s",
            detail,
        ),
        Row(
            "plans.processed_rate",
            SECTION,
            "plan users processed (events evaluated, actions written)",
            users / (drained - began),
            "users/s",
            detail,
        ),
        Row(
            "cpu.plans.serve_us_per_user",
            SECTION,
            "plan CPU per user, `beacon serve`",
            cost["serve"],
            "µs/user",
            detail,
        ),
        Row("cpu.plans.redis_us_per_user", SECTION, "plan CPU per user, Redis", cost["redis"], "µs/user", detail),
    ]


async def _wait_sent(stack: BeaconStack, users: int, timeout_s: float) -> float:
    """Monotonic time at which every user had been sent (the run done)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = (await _call(stack, "GET", "/v1/plans/bench/runs"))["runs"]
        if runs and runs[0]["status"] == "done":
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise HarnessError(f"plan run not done after {timeout_s:.0f}s")
