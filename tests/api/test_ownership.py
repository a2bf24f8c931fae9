"""Partitions are shared out between processes, and a dead reader's entries go first, in order."""

from __future__ import annotations

import redis.asyncio as aioredis

from cep import streams
from cep.ownership import owner_key
from tests.api.test_end_to_end import settled
from tests.harness import eventually, running_beacon, server_settings

T0 = 1_767_225_600_000
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
        await settled(redis_client)
        for i in range(20):
            assert [a["trigger_id"] for a in await first.actions(f"u{i}")] == [f"v{i}-1"]


async def test_entries_a_dead_reader_left_are_processed_before_newer_ones(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Regression: a reclaimed first view used to arrive after the second and be dropped as late."""
    settings = server_settings(redis_url, partitions=1, partition_lease_ms=600)
    async with running_beacon(server_settings(redis_url, partitions=1, run_workers=False)) as api:
        await api.put_ruleset(TWO_VIEWS)
        await api.post_events([{"user_id": "alice", "type": "view", "ts": T0, "event_id": "v1"}])
        # A reader that dies holding v1: read, never acknowledged.
        await streams.ensure_groups(redis_client, 1)
        assert len(await streams.read_new(redis_client, 0, "dead-reader", 10, 10)) == 1
        await api.post_events([{"user_id": "alice", "type": "view", "ts": T0 + 10_000, "event_id": "v2"}])
    async with running_beacon(settings) as beacon:
        await settled(redis_client)
        assert [a["trigger_id"] for a in await beacon.wait_actions("alice", 1)] == ["v2"]
