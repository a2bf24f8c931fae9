"""One event that makes evaluation fail is quarantined; the rest of its batch is processed."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from cep import streams
from cep.events import partition_of
from tests.api.test_end_to_end import BIG_SPEND, pay, settled
from tests.harness import eventually, running_beacon, server_settings


async def test_poisonous_entry_is_quarantined_and_the_batch_goes_on(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    settings = server_settings(redis_url, run_workers=False)
    async with running_beacon(settings) as beacon:
        await beacon.put_ruleset(BIG_SPEND)
        # A timer entry that names no action: evaluating it raises inside the worker.
        broken: dict[str, Any] = {
            "v": 1,
            "id": "act:x",
            "u": "mallory",
            "t": "action_due",
            "ts": 1,
            "a": {},
            "r": 0,
            "o": "timer",
            "tm": {"kind": "action"},
        }
        partition = partition_of("mallory", 2)
        await redis_client.xadd(streams.events_key(partition), {streams.TIMER_FIELD: json.dumps(broken), "due": 0})
        await beacon.post_events([pay("mallory", 1500), pay("trent", 1500)])
    # Workers start only now, so the poisonous entry and the good ones meet in one batch.
    async with running_beacon(server_settings(redis_url)) as beacon:
        await settled(redis_client)
        assert len(await beacon.wait_actions("mallory", 2)) == 2
        assert len(await beacon.wait_actions("trent", 2)) == 2
        quarantined = await eventually(
            lambda: redis_client.xrange(streams.quarantine_key(partition)), lambda found: len(found) == 1
        )
        assert b"KeyError" in quarantined[0][1][b"error"]
