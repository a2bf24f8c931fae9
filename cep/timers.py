"""Timers: one sorted set per partition (`b:{p:<n>}:timers`), member -> due time (ms).

Members are written and removed only by the partition owner's commit (`cep.commit`), and read by the
owner when they fall due: an absence deadline or a delayed action (`cep.evaluator` names members).
"""

from __future__ import annotations

from redis.asyncio import Redis

from cep.events import partition_tag


def timers_key(partition: int) -> str:
    """The timer set of one partition."""
    return f"b:{{{partition_tag(partition)}}}:timers"


async def due(redis: Redis, partition: int, now_ms: int, count: int) -> tuple[list[tuple[str, int]], int | None]:
    """Up to `count` timers due by `now_ms` as (member, due), oldest first, and the next due time if none is."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(timers_key(partition), "-inf", now_ms, start=0, num=count, withscores=True)
        pipe.zrange(timers_key(partition), 0, 0, withscores=True)
        ready, first = await pipe.execute()
    members = [(member.decode(), int(score)) for member, score in ready]
    return members, (int(first[0][1]) if first and not members else None)


async def pending_count(redis: Redis, partitions: int) -> int:
    """Timers waiting over all partitions."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.zcard(timers_key(partition))
        return sum(await pipe.execute())
