"""Each user's last interaction (newest producer event ts), which gates WeChat customer-service messages."""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline

from cep.events import ORIGIN_PRODUCER, Event
from cep.user_state import LAST_SEEN, user_key_for

_MEMBER = "ts"
# Long enough to outlive the 48 h window from the newest event, short enough that idle users leave nothing.
SEEN_TTL_MS = 72 * 3_600_000


def seen_key(partitions: int, user_id: str) -> str:
    """The key holding one user's last interaction time."""
    return user_key_for(partitions, user_id, LAST_SEEN)


async def note_interactions(
    pipe_or_redis: Pipeline | ClusterPipeline | Redis, events: Iterable[Event], partitions: int
) -> None:
    """Record, per user, the newest ts of producer events: queued on a pipeline, or run on a client.

    ZADD GT keeps the maximum atomically without a script, so out-of-order events and concurrent
    ingest processes can only move the time forward.
    """
    newest: dict[str, int] = {}
    for event in events:
        if event.origin == ORIGIN_PRODUCER and event.ts > newest.get(event.user_id, -1):
            newest[event.user_id] = event.ts
    if not newest:
        return
    # An asyncio Pipeline is a Redis subclass: test for it first. On a pipeline the caller executes.
    if isinstance(pipe_or_redis, (Pipeline, ClusterPipeline)):
        _queue(pipe_or_redis, newest, partitions)
        return
    async with pipe_or_redis.pipeline(transaction=False) as pipe:
        _queue(pipe, newest, partitions)
        await pipe.execute()


def _queue(pipe: Pipeline | ClusterPipeline, newest: dict[str, int], partitions: int) -> None:
    for user_id, ts in newest.items():
        pipe.zadd(seen_key(partitions, user_id), {_MEMBER: ts}, gt=True)
        pipe.pexpire(seen_key(partitions, user_id), SEEN_TTL_MS)


async def last_interaction(redis: Redis, partitions: int, user_id: str) -> int | None:
    """The user's newest producer event ts, or None when none is remembered."""
    score = await redis.zscore(seen_key(partitions, user_id), _MEMBER)
    return None if score is None else int(score)
