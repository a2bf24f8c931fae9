"""Each user's last interaction (newest producer event ts), which gates WeChat customer-service messages.

The partition owner keeps it in the user's packed record as it processes the user's events, so it
costs ingest nothing; the record is committed before any action it caused can be delivered.
"""

from __future__ import annotations

from redis.asyncio import Redis

from cep.user_state import read_state


async def last_interaction(redis: Redis, partitions: int, user_id: str) -> int | None:
    """The user's newest producer event ts, or None when none is remembered."""
    last_seen = (await read_state(redis, partitions, user_id)).last_seen
    return last_seen or None
