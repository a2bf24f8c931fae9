"""Redis memory: state bytes (INFO used_memory minus the streams), per pending timer and per user."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from bench import load
from bench.harness import BeaconStack
from bench.report import Row
from bench.sizes import Size
from cep.outbox import outbox_key, recent_key
from cep.streams import events_key
from cep.timers import timers_key
from cep.user_state import STATE, read_state, user_key_for

SECTION = "redis memory"
SETTLE_S = 0.5


async def usages(redis: Redis, keys: Sequence[str]) -> list[int]:
    """MEMORY USAGE (SAMPLES 0) of each key, pipelined; 0 for a missing key."""
    found: list[int] = []
    for start in range(0, len(keys), 1_000):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys[start : start + 1_000]:
                pipe.memory_usage(key, samples=0)
            found += [int(value or 0) for value in await pipe.execute()]
    return found


async def key_bytes(redis: Redis, keys: list[str]) -> int:
    """Exact MEMORY USAGE (SAMPLES 0) summed over keys; missing keys count 0."""
    return sum(await usages(redis, keys))


async def state_bytes(redis: Redis, partitions: int) -> int:
    """used_memory without the event, outbox and recent-action streams (their size depends on trimming
    and on whether connectors run, not on the state kept per user or timer)."""
    await asyncio.sleep(SETTLE_S)
    used = int((await redis.info("memory"))["used_memory"])
    streams = [events_key(p) for p in range(partitions)] + [outbox_key(p) for p in range(partitions)]
    streams += [recent_key(p) for p in range(partitions)]
    return used - await key_bytes(redis, streams)


async def timer_set_bytes(redis: Redis, partitions: int) -> int:
    """Bytes of the timer sorted sets alone."""
    return await key_bytes(redis, [timers_key(p) for p in range(partitions)])


def _window_events(users: int, prefix: str, now_ms: int) -> list[dict[str, Any]]:
    """Two cheap views of one SKU per user: each opens the 7-day view threshold, the view->cart sequence
    and the search->view sequence (price < 500 keeps the view->no-cart absence out)."""
    events = []
    for index in range(users):
        for offset, ts in enumerate((now_ms - 60_000, now_ms - 30_000)):
            events.append(
                {
                    "user_id": f"{prefix}{index}",
                    "type": "view",
                    "event_id": f"{prefix}v{index}-{offset}",
                    "ts": ts,
                    "attrs": {"sku": f"K{index % 300}", "price": 99, "category": "apparel"},
                }
            )
    return events


async def live_pattern_keys(redis: Redis, partitions: int, user_id: str) -> int:
    """How many pattern states (windows, pending sets) one user's record holds."""
    return len((await read_state(redis, partitions, user_id)).patterns)


async def user_key_bytes(redis: Redis, partitions: int, user_ids: list[str]) -> dict[str, float]:
    """Mean MEMORY USAGE per user of each of a user's key families (the sample's users), by family name."""
    families = {
        "record": [user_key_for(partitions, user_id, STATE) for user_id in user_ids],
    }
    return {name: await key_bytes(redis, keys) / max(len(user_ids), 1) for name, keys in families.items()}


async def user_rows(stack: BeaconStack, redis: Redis, size: Size) -> list[Row]:
    """Bytes per user holding 3 live windows, and the same extrapolated to 1M users."""
    prefix = "mu"
    before = await state_bytes(redis, stack.partitions)
    events = _window_events(size.memory_users, prefix, int(time.time() * 1000))
    for start in range(0, len(events), 50_000):
        await load.blast_http(stack.base_url, events[start : start + 50_000])
    drained = await load.wait_drained(redis, stack.partitions, size.drain_timeout_s)
    after = await state_bytes(redis, stack.partitions)
    windows = await live_pattern_keys(redis, stack.partitions, f"{prefix}0")
    sample = [f"{prefix}{index}" for index in range(min(size.memory_users, 200))]
    families = await user_key_bytes(redis, stack.partitions, sample)
    per_user = (after - before) / size.memory_users
    note = "" if drained else "; backlog not drained"
    detail = (
        f"{size.memory_users:,} users x 2 views -> {windows} pattern states each (7d view threshold, view->cart and "
        f"search->view sequences) plus dedupe ids, in one packed record per user; "
        f"INFO used_memory delta minus streams{note}; MEMORY USAGE per user: record {families['record']:.0f} "
        f"(last interaction included), the rest is the keyspace's own overhead"
    )
    return [
        Row(
            "memory.per_user",
            SECTION,
            "bytes per user with 3 live windows",
            per_user,
            "bytes",
            detail,
            {"users": size.memory_users, "pattern_keys": windows, **{f"{k}_bytes": v for k, v in families.items()}},
        ),
        Row(
            "memory.per_1m_users",
            SECTION,
            "per 1M such users (extrapolated)",
            per_user * 1_000_000 / 2**20,
            "MiB",
            f"linear extrapolation from the {size.memory_users:,}-user sample, not measured at 1M",
        ),
    ]
