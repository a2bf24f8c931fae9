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


def encode_batch(at_ms: int, entries: list[dict[str, Any]]) -> bytes:
    """One user's entries of one committed batch, in evaluation order, as one list element: msgpack
    `[at, [entry, ...]]`. One element (and one LPUSH) per user and batch, not per entry: the trace then
    costs the commit about one command per touched user instead of one per entry."""
    return packb([at_ms, entries])


async def read_trace(redis: Redis, partitions: int, user_id: str, limit: int) -> list[dict[str, Any]]:
    """The user's newest `limit` trace entries, newest first, each with `at` (when its batch committed)."""
    key = user_key(partition_of(user_id, partitions), user_id, TRACE)
    found: list[dict[str, Any]] = []
    start = 0
    while len(found) < limit:
        # A batch holds at least one entry: `limit` elements always cover `limit` entries.
        raws = await redis.lrange(key, start, start + limit - 1)
        for raw in raws:
            at_ms, entries = msgpack.unpackb(raw, raw=False)
            found.extend({"at": at_ms, **entry} for entry in reversed(entries))
        if len(raws) < limit:
            break
        start += limit
    return found[:limit]
