"""A partition's handoff stream (`b:{p:<n>}:handoff`): entries its owner hands to other users' partitions.

A commit may touch only its own partition's slot (so it stays one atomic call on a Redis Cluster). When a
batch must reach another partition — a merged user's state (`MergeIn`), or events and patches that arrive
for a merged user after its merge — the commit XADDs the entry here, in the same atomic call as the
tombstone or the skipped position. The owner's relay then appends each entry, unchanged, to the stream of
the target user's partition and only then deletes it: at least once (a crash between the two appends it
again), which the target tolerates because events are deduped by id and merges by merge id.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from cep.events import partition_of, partition_tag
from cep.merge_items import Handoff
from cep.scripts import run_scripts
from cep.streams import append_call

TO_FIELD = b"to"  # the user the entry is for
FIELD_FIELD = b"f"  # the stream payload field the entry becomes (cep.streams)
PAYLOAD_FIELD = b"d"
COUNT_FIELD = b"n"
RELAY_BATCH = 500  # entries relayed per round trip


def handoff_key(partition: int) -> str:
    """The handoff stream of one partition."""
    return f"b:{{{partition_tag(partition)}}}:handoff"


def handoff_fields(handoff: Handoff) -> list[bytes]:
    """The XADD field/value list of one handoff (what the commit writes)."""
    return [
        TO_FIELD,
        handoff.to.encode(),
        FIELD_FIELD,
        handoff.field,
        PAYLOAD_FIELD,
        handoff.payload,
        COUNT_FIELD,
        str(handoff.count).encode(),
    ]


async def relay(redis: Redis, partition: int, partitions: int) -> int:
    """Move the partition's handoff entries to their target partitions' streams, oldest first; returns how many.

    The appends go out in stream order in one pipeline before the entries are deleted, so entries for one
    target keep their order (events forwarded after a merge follow the merged state).
    """
    moved = 0
    key = handoff_key(partition)
    while True:
        entries: Any = await redis.xrange(key, min="-", max="+", count=RELAY_BATCH)
        if not entries:
            return moved
        calls = []
        for _, fields in entries:
            target = fields[TO_FIELD].decode()
            count = int(fields.get(COUNT_FIELD, b"1"))
            calls.append(
                append_call(partition_of(target, partitions), fields[FIELD_FIELD], fields[PAYLOAD_FIELD], count)
            )
        await run_scripts(redis, calls)
        await redis.xdel(key, *(entry_id for entry_id, _ in entries))
        moved += len(entries)
        if len(entries) < RELAY_BATCH:
            return moved


async def pending(redis: Redis, partition: int) -> int:
    """Handoff entries not yet relayed."""
    return int(await redis.xlen(handoff_key(partition)))
