"""A batch is bounded in events, not stream entries: one commit must stay a short Redis call."""

from __future__ import annotations

import redis.asyncio as aioredis

from beacon.clock import ManualClock
from cep import streams
from cep.events import Event
from cep.ownership import partition_lease_call
from cep.partition_owner import OwnerLimits, PartitionOwner
from cep.rule_index import RuleIndex
from cep.scripts import run_scripts

T0 = 1_767_225_600_000
DAY = 86_400_000


async def test_batches_hold_whole_entries_up_to_the_event_limit(redis_client: aioredis.Redis) -> None:
    # Three requests of 300 events each, all in partition 0 of 1.
    for request in range(3):
        events = [Event(f"e{request}-{n}", f"u{n % 7}", "view", T0 + n) for n in range(300)]
        await streams.append_events(redis_client, events, 1)
    limits = OwnerLimits(batch_size=500, block_ms=10, cache_users=100, dedupe_horizon_ms=DAY, ledger_retention_ms=DAY)

    async def no_rules() -> RuleIndex:
        return RuleIndex(())

    (epoch,) = await run_scripts(redis_client, [partition_lease_call(0, "me", 60_000, take=True)])
    owner = PartitionOwner(redis_client, 0, int(epoch), ManualClock(T0), limits, no_rules)
    owner._position = b"0-0"  # what run() would read from the (empty) progress hash
    sizes = []
    while await streams.backlog(redis_client, 1):
        assert owner._position is not None
        entries = await streams.read_after(redis_client, 0, owner._position, owner._entries_to_read(), None)
        batch = owner._within_batch(entries)
        sizes.append(sum(streams.entry_count(fields) for _, fields in batch))
        await owner.process(await no_rules(), batch, [])
    # 300 + 300 would pass the limit: every batch is one whole entry.
    assert sizes == [300, 300, 300]
    assert owner.processed == 900
