"""Absence timer lateness (due -> action in the outbox) at growing numbers of pending timers, and
the memory those timers take."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from bench import load, memory
from bench.harness import BeaconStack, load_ruleset
from bench.report import Row
from bench.sizes import Size
from bench.workload import coupon_events
from cep import timers as cep_timers
from rules.durations import parse_duration

SECTION = "absence timers"
PROBE_RULE = "coupon-unused-6d"  # coupon_issued plays one role in the mix: one pending absence per event
LATENESS_MS = 2_000  # the server's default rule lateness: an absence is due at ts_A + within + lateness
FILL_BATCH = 50_000


def probe_within_ms() -> int:
    """The probe rule's `within` in ms, read from the mix ruleset."""
    rule = next(rule for rule in load_ruleset()["rules"] if rule["id"] == PROBE_RULE)
    return parse_duration(rule["when"]["absence"]["within"])


async def fill(stack: BeaconStack, redis: Redis, start: int, count: int, size: Size) -> None:
    """Add `count` pending absences (due in days) for fresh users `tp<start..>` and wait until processed."""
    now = int(time.time() * 1000)
    for offset in range(0, count, FILL_BATCH):
        batch = coupon_events("tp", start + offset, min(FILL_BATCH, count - offset), now)
        await load.blast_http(stack.base_url, batch, batch=1000, concurrency=4)
    timeout = size.drain_timeout_s + count / 1_000
    if await load.wait_drained(redis, stack.partitions, timeout) is None:
        raise RuntimeError(f"{count:,} timer events not processed within {timeout:.0f}s")


async def probe(
    stack: BeaconStack, redis: Redis, probes: int, prefix: str, spread_ms: int, lead_ms: int
) -> tuple[list[float], int]:
    """Make `probes` absences fall due `lead_ms` from now over `spread_ms`; (lateness ms each, missing)."""
    within = probe_within_ms()
    now = await load.server_time_ms(redis)
    dues = [now + lead_ms + (index * spread_ms) // max(probes, 1) for index in range(probes)]
    events = coupon_events(prefix, 0, probes, [due - within - LATENESS_MS for due in dues], seed=1)
    async with load.outbox_tail(redis, stack.partitions) as tail:
        await load.blast_http(stack.base_url, events, batch=1000, concurrency=4)
        deadline = time.monotonic() + (lead_ms + spread_ms) / 1000 + 20
        while time.monotonic() < deadline:
            if len(load.timer_latenesses(tail.records(), prefix)) >= probes:
                break
            await asyncio.sleep(0.25)
    found = load.timer_latenesses(tail.records(), prefix)
    return found, probes - len(found)


async def timer_rows(stack: BeaconStack, size: Size) -> list[Row]:
    """Lateness at each pending level, then bytes per pending timer and per user (memory section)."""
    redis = stack.client()
    rows: list[Row] = []
    try:
        filled, grown, state_growth = 0, 0, 0
        for level in size.pending_levels:
            before = await memory.state_bytes(redis, stack.partitions)
            await fill(stack, redis, filled, level - filled, size)
            # Memory per absence from the last fill alone: no probe has fired in between.
            state_growth, grown = await memory.state_bytes(redis, stack.partitions) - before, level - filled
            filled = level
            pending = await cep_timers.pending_count(redis, stack.partitions)
            timer_set = await memory.timer_set_bytes(redis, stack.partitions)
            lateness, missing = await probe(
                stack, redis, size.timer_probes, f"tq{level}-", size.timer_window_ms, size.timer_window_ms
            )
            summary = load.latency_summary(lateness)
            detail = (
                f"p95 {summary['p95']:.0f} / p99 {summary['p99']:.0f} / max {summary['max']:.0f} ms; "
                f"{len(lateness):,} probes due over {size.timer_window_ms / 1000:.0f}s with {pending:,} timers "
                f"pending, no other load{f'; {missing} never fired' if missing else ''}"
            )
            rows.append(
                Row(
                    f"timers.lateness.{level}",
                    SECTION,
                    f"due->outbox p50, {level:,} pending",
                    summary["p50"],
                    "ms",
                    detail,
                    {**summary, "pending": pending, "missing": missing},
                )
            )
        rows.append(
            Row(
                "memory.per_timer_set",
                memory.SECTION,
                "bytes per pending timer (timer set only)",
                timer_set / max(pending, 1),
                "bytes",
                f"MEMORY USAGE of the timer sorted sets / {pending:,}",
            )
        )
        rows.append(
            Row(
                "memory.per_pending_absence",
                memory.SECTION,
                "bytes per pending absence (all state)",
                state_growth / max(grown, 1),
                "bytes",
                f"used_memory growth minus streams over the last {grown:,} absences, one fresh user each: "
                "timer member, the user's packed record (pending A, dedupe id, last interaction)",
            )
        )
        rows += await memory.user_rows(stack, redis, size)
        return rows
    finally:
        await redis.aclose()
