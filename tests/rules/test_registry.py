"""RulesetRegistry.refresh: owners that ask together share one revision read, never an older one."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from rules.registry import RulesetRegistry
from rules.store import RulesetStore

DOCUMENT = {"id": "r", "rules": [{"id": "a", "when": {"event": "pay"}, "then": [{"action": "points", "amount": 1}]}]}


async def _gets(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


async def test_callers_asking_together_share_one_read(redis_client: aioredis.Redis) -> None:
    registry = RulesetRegistry(RulesetStore(redis_client), 2_000)
    await registry.refresh()
    before = await _gets(redis_client)
    results = await asyncio.gather(*(registry.refresh() for _ in range(12)))
    assert all(result == [] for result in results)
    assert await _gets(redis_client) - before == 1  # not 12


async def test_a_caller_after_a_change_sees_it(redis_client: aioredis.Redis) -> None:
    store = RulesetStore(redis_client)
    registry = RulesetRegistry(store, 2_000)
    assert await registry.refresh() == []
    await store.put("r", DOCUMENT, now_ms=0)
    [compiled] = await registry.refresh()  # asked after the change: a read made after it
    assert compiled.ruleset.id == "r"
    # A read already sent when the change lands may answer the old revision; the next call does not.
    first = asyncio.ensure_future(registry.refresh())
    await asyncio.sleep(0)  # `first` starts its read
    await store.put("r", {**DOCUMENT, "description": "v2"}, now_ms=1)
    await first
    [latest] = await registry.refresh()
    assert latest.ruleset.version == 2
