"""The per-user trace (`b:{p:<n>}:u:<user>:trace`, a capped LIST, newest first): every evaluation of rules
and journeys for the user — matched or not and why, branch taken, timer set / fired / cancelled, actions.

The evaluator produces entries (`Effects.trace`); the partition owner's commit pushes them in the same
atomic call as the state they describe, trims the list to `BEACON_TRACE_DEPTH` entries and lets it
expire `BEACON_TRACE_TTL_MS` after the user's last traced step. `GET /v1/users/{id}/trace` reads it
and adds the outcome of each action.
"""

from __future__ import annotations

from typing import Any

import msgpack
from redis.asyncio import Redis

from cep.events import partition_of
from cep.packing import packb
from cep.user_state import TRACE, user_key


def encode_entry(entry: dict[str, Any]) -> bytes:
    """One trace entry as stored: msgpack (a sixth of JSON's encoding time, a third smaller; the owner
    encodes several per event)."""
    return packb(entry)


async def read_trace(redis: Redis, partitions: int, user_id: str, limit: int) -> list[dict[str, Any]]:
    """The user's newest `limit` trace entries, newest first."""
    key = user_key(partition_of(user_id, partitions), user_id, TRACE)
    raws = await redis.lrange(key, 0, limit - 1)
    return [msgpack.unpackb(raw, raw=False) for raw in raws]
