"""Partitions are shared out between processes; a process that lost its lease is fenced off."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from cep import streams
from cep.commit import FencedError, StalePositionError
from cep.ownership import Ownership, epoch_key, fair_shares, owner_key, partition_lease_call
from cep.partition_owner import OwnerLimits, PartitionOwner
from cep.rule_index import RuleIndex
from cep.scripts import run_scripts
from cep.user_state import STATE, user_key
from rules.registry import RulesetRegistry
from rules.store import RulesetStore
from tests.harness import eventually, running_beacon, server_settings

T0 = 1_767_225_600_000
DAY = 86_400_000
TWO_VIEWS = {
    "id": "two-views",
    "rules": [
        {
            "id": "viewed-twice",
            "when": {"threshold": {"match": {"event": "view"}, "count": 2, "window": "1h"}},
            "then": [{"action": "coupon", "coupon_id": "C"}],
        }
    ],
}


async def owners(redis: aioredis.Redis, partitions: int) -> list[bytes | None]:
    return [await redis.get(owner_key(p)) for p in range(partitions)]


async def test_two_processes_split_the_partitions(redis_url: str, redis_client: aioredis.Redis) -> None:
    settings = server_settings(redis_url, partitions=4, partition_lease_ms=600)
    async with running_beacon(settings) as first, running_beacon(settings) as second:

        def balanced(found: list[bytes | None]) -> bool:
            return None not in found and sorted(found.count(owner) for owner in set(found)) == [2, 2]

        assert balanced(await eventually(lambda: owners(redis_client, 4), balanced))
        await first.put_ruleset(TWO_VIEWS)
        events = [
            {"user_id": f"u{i}", "type": "view", "ts": T0 + k, "event_id": f"v{i}-{k}"}
            for i in range(20)
            for k in (0, 1)
        ]
        await second.post_events(events)
        # All four partitions, not the default two `settled` watches.
        assert await eventually(lambda: streams.backlog(redis_client, 4), lambda backlog: backlog == 0) == 0
        for i in range(20):
            assert [a["trigger_id"] for a in await first.actions(f"u{i}")] == [f"v{i}-1"]


async def test_a_stale_owner_is_fenced_and_writes_nothing(redis_url: str, redis_client: aioredis.Redis) -> None:
    """An owner whose lease epoch was superseded (a long pause, a lost connection) cannot commit."""
    async with running_beacon(server_settings(redis_url, partitions=1, run_workers=False)) as api:
        await api.put_ruleset(TWO_VIEWS)
        await api.post_events([{"user_id": "alice", "type": "view", "ts": T0 + k, "event_id": f"v{k}"} for k in (0, 1)])
    assert await redis_client.get(epoch_key(0)) is None  # nobody owned the partition yet
    taken = await run_scripts(redis_client, [partition_lease_call(0, "first", 60_000, take=True)])
    assert taken == [1]
    registry = RulesetRegistry(RulesetStore(redis_client), 2_000)
    limits = OwnerLimits(batch_size=10, block_ms=10, cache_users=100, dedupe_horizon_ms=DAY, ledger_retention_ms=DAY)

    async def index() -> RuleIndex:
        return RuleIndex(await registry.refresh())

    owner = PartitionOwner(redis_client, 0, 1, ManualClock(T0), limits, index)
    # Another process takes over: the lease lapsed and its take-over moved the epoch on.
    await redis_client.delete(owner_key(0))
    assert await run_scripts(redis_client, [partition_lease_call(0, "second", 60_000, take=True)]) == [2]
    entries = await streams.read_after(redis_client, 0, b"0-0", 10, None)
    with pytest.raises(FencedError):
        await owner.process(await index(), entries, [])
    assert await streams.progress(redis_client, 0) == (b"0-0", 0)
    assert await streams.backlog(redis_client, 1) == 2
    assert await redis_client.exists(user_key(0, "alice", STATE)) == 0
    # The current owner processes the same entries: the pair fires exactly once.
    current = PartitionOwner(redis_client, 0, 2, ManualClock(T0), limits, index)
    await current.process(await index(), entries, [])
    assert await streams.backlog(redis_client, 1) == 0
    committed = await streams.progress(redis_client, 0)
    # The same batch again from the position it was read after (a commit whose reply was lost, retried;
    # or a commit a Redis restart rolled back under a live owner): refused, nothing counted twice.
    retry = PartitionOwner(redis_client, 0, 2, ManualClock(T0), limits, index)
    retry._position = b"0-0"
    with pytest.raises(StalePositionError):
        await retry.process(await index(), entries, [])
    assert await streams.progress(redis_client, 0) == committed
    async with running_beacon(server_settings(redis_url, partitions=1, run_workers=False)) as api:
        assert [a["trigger_id"] for a in await api.actions("alice")] == ["v1"]


def test_fair_shares_follow_the_weights_and_add_up() -> None:
    assert fair_shares(["serve@0.5", "worker@1"], 12) == {"serve@0.5": 4, "worker@1": 8}
    assert fair_shares(["a@1", "b@1", "c@1"], 5) == {"a@1": 2, "b@1": 2, "c@1": 1}  # remainders in name order
    assert fair_shares(["old-style", "new@1"], 4) == {"old-style": 2, "new@1": 2}  # no weight: 1
    shares = fair_shares([f"w{i}@{0.3 + i / 7:.2f}" for i in range(5)], 12)
    assert sum(shares.values()) == 12 and all(count >= 1 for count in shares.values())


async def test_a_lighter_process_takes_a_smaller_share(redis_client: aioredis.Redis) -> None:
    """Two processes' heartbeats settle on the weighted split: serve (0.5) 4 of 12, a worker (1) 8."""
    serve = Ownership(redis_client, 12, "serve", 60_000, weight=0.5)
    worker = Ownership(redis_client, 12, "worker", 60_000, weight=1.0)
    await serve.heartbeat(T0)  # alone at first: it takes every partition
    assert len(serve.owned) == 12
    for beat in range(1, 4):
        _, to_release = await serve.heartbeat(T0 + beat)
        for partition in to_release:
            await serve.release(partition)
        await worker.heartbeat(T0 + beat)
    assert (len(serve.owned), len(worker.owned)) == (4, 8)
    assert not set(serve.owned) & set(worker.owned)
