"""The item index in Redis: per partition, item attribute, event type and item value, a ZSET user -> the
time (ms) of the user's latest such event (`b:{p:<n>}:item:<attr>:<type>:<value>`).

Written only by the partition owner's commit (`cep.commit`), from the events of indexed types the batch
evaluated (`Effects.item_marks`); entries older than the index's window are trimmed on each write and the
key expires a window after its last write. Read by item-event fan-out (`api/routes_items.py`): "users who
did E on item X within T and not F on it".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from cep.events import partition_tag

MAX_VALUE_CHARS = 128  # longer item values are not indexed (a key per value)


def item_key(partition: int, attr: str, event_type: str, value: str) -> str:
    """The users of one partition who did `event_type` on the item whose `attr` is `value`."""
    return f"b:{{{partition_tag(partition)}}}:item:{attr}:{event_type}:{value}"


def item_value(raw: object) -> str | None:
    """An attribute value as the index keys it: a string or an integer (as text); anything else is not
    indexed (floats, lists, objects), nor a value too long to be a key part."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, str) and 0 < len(raw) <= MAX_VALUE_CHARS:
        return raw
    return None


@dataclass(frozen=True, slots=True)
class ItemMark:
    """A user did an indexed event on an item at `ts`: the commit records it for `window_ms`."""

    attr: str
    event_type: str
    value: str
    user_id: str
    ts: int
    window_ms: int


async def matching_users(
    redis: Redis,
    partition: int,
    attr: str,
    value: str,
    did: str,
    did_not: Sequence[str],
    since_ms: int,
) -> list[str]:
    """Users of one partition who did `did` on the item at or after `since_ms` and none of `did_not` on it
    since then (a `did_not` older than `since_ms` does not count)."""
    candidates = await redis.zrangebyscore(item_key(partition, attr, did, value), since_ms, "+inf")
    users = [member.decode() if isinstance(member, bytes) else str(member) for member in candidates]
    for event_type in did_not:
        if not users:
            break
        scores = await redis.zmscore(item_key(partition, attr, event_type, value), users)
        users = [user for user, score in zip(users, scores, strict=True) if score is None or score < since_ms]
    return users
