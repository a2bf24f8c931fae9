"""An entry that cannot be read is quarantined in the same commit that moves past it; its batch goes on."""

from __future__ import annotations

import redis.asyncio as aioredis

from beacon import metrics
from cep import streams, timers
from cep.events import partition_of
from tests.api.test_end_to_end import BIG_SPEND, pay, settled
from tests.harness import eventually, running_beacon, server_settings


async def test_unreadable_entry_is_quarantined_and_the_batch_goes_on(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    settings = server_settings(redis_url, run_workers=False)
    partition = partition_of("mallory", 2)
    async with running_beacon(settings) as beacon:
        await beacon.put_ruleset(BIG_SPEND)
        await beacon.post_events([pay("mallory", 1500)])
        # Bytes that are not a msgpack event batch, counted like any appended entry.
        await redis_client.xadd(streams.events_key(partition), {streams.BATCH_FIELD: b"\xc1garbage", b"n": b"1"})
        await redis_client.hincrby(streams.progress_key(partition), streams.PROGRESS_ADDED, 1)
        await beacon.post_events([pay("mallory", 2500), pay("trent", 1500)])
    # Workers start only now, so the unreadable entry and the good ones meet in one batch.
    async with running_beacon(server_settings(redis_url)) as beacon:
        await settled(redis_client)
        assert len(await beacon.wait_actions("mallory", 4)) == 4
        assert len(await beacon.wait_actions("trent", 2)) == 2
        quarantined = await eventually(
            lambda: redis_client.xrange(streams.quarantine_key(partition)), lambda found: len(found) == 1
        )
        assert quarantined[0][1][streams.BATCH_FIELD] == b"\xc1garbage"
        assert await streams.backlog(redis_client, 2) == 0


async def test_a_timer_that_fails_on_its_own_is_dropped_and_the_batch_goes_on(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    settings = server_settings(redis_url, run_workers=False)
    partition = partition_of("mallory", 2)
    async with running_beacon(settings) as beacon:
        await beacon.put_ruleset(BIG_SPEND)
        # A delayed-action member missing its ruleset field: evaluating it raises inside the owner.
        await redis_client.zadd(timers.timers_key(partition), {"d\x1fmallory\x1faction-without-ruleset": 0})
        await beacon.post_events([pay("mallory", 1500)])
    before = metrics.REGISTRY.get_sample_value("beacon_events_quarantined_total") or 0
    # Workers start only now: the broken timer and the good event meet in one batch.
    async with running_beacon(server_settings(redis_url)) as beacon:
        await settled(redis_client)
        assert len(await beacon.wait_actions("mallory", 2)) == 2
        assert await eventually(lambda: redis_client.zcard(timers.timers_key(partition)), lambda n: n == 0) == 0
    assert (metrics.REGISTRY.get_sample_value("beacon_events_quarantined_total") or 0) - before == 1


async def test_an_entry_quarantined_while_redis_refuses_writes_is_neither_lost_nor_passed(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Under OOM the quarantine's XADD was refused while its XACK ran: the entry was gone for good."""
    partition = partition_of("mallory", 2)
    config = await redis_client.config_get("maxmemory*")

    async def worker_errors() -> float:
        return metrics.REGISTRY.get_sample_value("beacon_redis_errors_total", {"component": "worker"}) or 0

    async with running_beacon(server_settings(redis_url)) as beacon:
        await beacon.put_ruleset(BIG_SPEND)
        await beacon.post_events([pay("mallory", 1500)])
        await settled(redis_client)
        committed = await streams.progress(redis_client, partition)
        before = await worker_errors()
        try:
            # One transaction, so the owner cannot read the entry before Redis refuses writes.
            async with redis_client.pipeline(transaction=True) as pipe:
                pipe.xadd(streams.events_key(partition), {streams.BATCH_FIELD: b"\xc1garbage", b"n": b"1"})
                pipe.hincrby(streams.progress_key(partition), streams.PROGRESS_ADDED, 1)
                pipe.config_set("maxmemory-policy", "noeviction")
                pipe.config_set("maxmemory", 1)
                await pipe.execute()
            await eventually(worker_errors, lambda errors: errors >= before + 2)
            assert await streams.progress(redis_client, partition) == committed
            assert await redis_client.xlen(streams.quarantine_key(partition)) == 0
        finally:
            await redis_client.config_set("maxmemory", config["maxmemory"])
            await redis_client.config_set("maxmemory-policy", config["maxmemory-policy"])
        quarantined = await eventually(
            lambda: redis_client.xrange(streams.quarantine_key(partition)), lambda found: len(found) == 1
        )
        assert quarantined[0][1][streams.BATCH_FIELD] == b"\xc1garbage"
        await settled(redis_client)
        await beacon.post_events([pay("mallory", 2500)])
        assert len(await beacon.wait_actions("mallory", 4)) == 4
