"""The outbox: partitioned streams (`b:{p:<n>}:outbox`) of action records waiting for delivery, and the
capped per-partition list of recent actions that `GET /v1/actions` reads without a user."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from cep.events import partition_tag

OUTBOX_FIELD = b"a"
RECENT_MAXLEN = 10_000


def outbox_key(partition: int) -> str:
    """The outbox stream of one partition."""
    return f"b:{{{partition_tag(partition)}}}:outbox"


def recent_key(partition: int) -> str:
    """Capped stream of (user, action id): the partition's newest actions across its users."""
    return f"b:{{{partition_tag(partition)}}}:recent"


def queue_action(pipe: Pipeline, partition: int, text: str) -> None:
    """Append an action record (JSON text) to its partition's outbox (on the caller's pipeline)."""
    pipe.xadd(outbox_key(partition), {OUTBOX_FIELD: text})


def note_recent(pipe: Pipeline, partition: int, user_id: str, action_id: str) -> None:
    """Remember an action in the partition's capped recent list (on the caller's pipeline)."""
    pipe.xadd(recent_key(partition), {b"u": user_id, b"a": action_id}, maxlen=RECENT_MAXLEN, approximate=True)


async def backlog(redis: Redis, partitions: int, group: str) -> int:
    """Entries consumer group `group` has not finished with, over all partitions: those it has not read (the
    group's lag) and those read but not acknowledged (pending). Before the group exists, the stream's length;
    also when Redis cannot tell the lag (entries deleted inside the unread range): an upper bound then."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.xlen(outbox_key(partition))
            pipe.xinfo_groups(outbox_key(partition))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    total = 0
    for length, groups in zip(replies[::2], replies[1::2], strict=True):
        if isinstance(length, Exception):
            raise length
        found = None if isinstance(groups, Exception) else next((g for g in groups if _text(g["name"]) == group), None)
        if found is None or found.get("lag") is None:
            total += int(length)
        else:
            total += int(found["lag"]) + int(found["pending"])
    return total


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
