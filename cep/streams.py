"""Partition streams (`b:{p:<n>}:events`): appends, reads after the committed position, backlog, trim.

One stream entry holds one ingest request's events of one partition (field `b`), one profile patch
(field `p`) or one identity merge step (field `m`, `cep.merge_items`), and how many items it holds
(field `n`). Entries for a merged user, and a merged user's state, reach the target user's partition
through the source partition's handoff stream (`cep.handoff`), which appends them here as they were.

There is no consumer group: the partition's owner reads after the position its last commit stored in
`b:{p:<n>}:progress` (`cep.commit` writes it atomically with the batch's effects), so a new owner
resumes exactly there and nothing is acknowledged separately.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from beacon.errors import DecodeError
from cep.events import (
    Event,
    ProfilePatch,
    decode_batch,
    decode_patch,
    encode_batch,
    encode_patch,
    partition_of,
    partition_tag,
)
from cep.merge_items import MergeIn, MergeOut, decode_merge, encode_merge
from cep.scripts import ScriptCall, run_scripts

log = logging.getLogger("beacon.streams")

BATCH_FIELD = b"b"  # events, msgpack list
PATCH_FIELD = b"p"  # a profile patch, msgpack
MERGE_FIELD = b"m"  # an identity merge step (cep.merge_items), msgpack
PROGRESS_ID = "id"  # progress HASH field: the last stream id whose effects are committed
PROGRESS_COUNT = "n"  # progress HASH field: items (events, patches) committed so far
PROGRESS_ADDED = "added"  # progress HASH field: items appended so far (backlog = added - n)
COUNT_FIELD = b"n"

# KEYS[1] the partition's event stream, KEYS[2] its progress HASH
# ARGV[1] payload field, ARGV[2] payload, ARGV[3] how many items it holds
# Appends the entry and counts its items in one step, so the backlog in items is exact. Returns the id.
APPEND_SCRIPT = """
local id = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2], 'n', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'added', ARGV[3])
return id
"""

Entry = tuple[bytes, dict[bytes, bytes]]
Item = Event | ProfilePatch | MergeOut | MergeIn


def events_key(partition: int) -> str:
    """The event stream of one partition."""
    return f"b:{{{partition_tag(partition)}}}:events"


def progress_key(partition: int) -> str:
    """HASH {id, n}: how far the partition's committed processing has got."""
    return f"b:{{{partition_tag(partition)}}}:progress"


def quarantine_key(partition: int) -> str:
    """Entries that failed on their own (capped): kept for inspection, out of the owner's way."""
    return f"b:{{{partition_tag(partition)}}}:quarantine"


QUARANTINE_MAXLEN = 10_000


async def append_events(redis: Redis, events: Sequence[Event], partitions: int, fsync_timeout_ms: int = 0) -> None:
    """XADD the events, one entry per partition, in one pipeline.

    Returns only after Redis has acknowledged every append, which is what an ingest ack promises: the
    server has written them to its append-only file (a Redis crash keeps them); with `fsync_timeout_ms`,
    also fsynced (a machine crash keeps them too).
    """
    if not events:
        return
    by_partition: dict[int, list[Event]] = {}
    for event in events:
        by_partition.setdefault(partition_of(event.user_id, partitions), []).append(event)
    calls = [
        append_call(partition, BATCH_FIELD, encode_batch(batch), len(batch))
        for partition, batch in by_partition.items()
    ]
    await run_scripts(redis, calls, fsync_timeout_ms=fsync_timeout_ms)


async def append_patch(redis: Redis, patch: ProfilePatch, partitions: int) -> tuple[int, bytes]:
    """XADD a profile patch to the user's partition; returns (partition, entry id)."""
    partition = partition_of(patch.user_id, partitions)
    (entry_id,) = await run_scripts(redis, [append_call(partition, PATCH_FIELD, encode_patch(patch), 1)])
    return partition, entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()


async def append_merges(redis: Redis, merges: Sequence[MergeOut], partitions: int, fsync_timeout_ms: int = 0) -> None:
    """XADD each merge's first step to its source user's partition, in one pipeline (durable as ingest is)."""
    calls = [
        append_call(partition_of(merge.user_id, partitions), MERGE_FIELD, encode_merge(merge), 1) for merge in merges
    ]
    await run_scripts(redis, calls, fsync_timeout_ms=fsync_timeout_ms)


def append_call(partition: int, field: bytes, payload: bytes, count: int) -> ScriptCall:
    """The script call appending one entry (its payload field, payload and item count) to a partition."""
    return ScriptCall(APPEND_SCRIPT, [events_key(partition), progress_key(partition)], [field, payload, count])


def entry_count(fields: dict[bytes, bytes]) -> int:
    """How many items an entry holds (1 when it does not say: it is counted once either way)."""
    try:
        return max(int(fields.get(COUNT_FIELD, b"1")), 1)
    except ValueError:
        return 1


async def read_after(redis: Redis, partition: int, after: bytes, count: int, block_ms: int | None) -> list[Entry]:
    """Entries after stream id `after`, waiting up to `block_ms` for one (None: do not wait)."""
    reply: Any = await redis.xread({events_key(partition): after}, count=count, block=block_ms)
    if not reply:
        return []
    return list(reply[0][1])


def decode_entry(fields: dict[bytes, bytes]) -> list[Item]:
    """The events or the patch of one entry; raises DecodeError (the entry is then quarantined)."""
    if BATCH_FIELD in fields:
        return list(decode_batch(fields[BATCH_FIELD]))
    if PATCH_FIELD in fields:
        return [decode_patch(fields[PATCH_FIELD])]
    if MERGE_FIELD in fields:
        return [decode_merge(fields[MERGE_FIELD])]
    raise DecodeError(f"stream entry without a known field: {sorted(fields)!r}")


async def progress(redis: Redis, partition: int) -> tuple[bytes, int]:
    """(last committed stream id, items committed) of a partition; ("0-0", 0) before the first commit."""
    raw: list[Any] = await redis.hmget(progress_key(partition), [PROGRESS_ID, PROGRESS_COUNT])
    return bytes(raw[0] or b"0-0"), int(raw[1] or 0)


async def backlog(redis: Redis, partitions: int) -> int:
    """Items (events, patches) appended but not yet committed, over all partitions (the processing lag)."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.hmget(progress_key(partition), [PROGRESS_ADDED, PROGRESS_COUNT])
        replies = await pipe.execute()
    return sum(max(int(added or 0) - int(done or 0), 0) for added, done in replies)


async def lag_seconds(redis: Redis, partitions: int) -> list[float]:
    """Per partition, how long its oldest entry not yet committed has waited, by Redis's clock (entry ids carry
    the ms Redis appended them at); 0.0 where nothing waits."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.hget(progress_key(partition), PROGRESS_ID)
        committed: list[Any] = await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for partition, last in enumerate(committed):
            # Exclusive start: the committed entry itself may still be there (trimming is approximate).
            pipe.xrange(events_key(partition), min=f"({_text(last or b'0-0')}", max="+", count=1)
        oldest: list[Any] = await pipe.execute()
    seconds, micros = await redis.time()
    now_ms = seconds * 1000 + micros // 1000
    return [(now_ms - stream_id(entries[0][0])[0]) / 1000 if entries else 0.0 for entries in oldest]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def trim_committed(redis: Redis, partition: int) -> None:
    """Drop entries whose effects are committed, so the stream is as long as its backlog."""
    last, _ = await progress(redis, partition)
    if last != b"0-0":
        await redis.xtrim(events_key(partition), minid=last.decode(), approximate=True)


def quarantined_fields(entry: Entry, error: str) -> dict[bytes, bytes]:
    """What a quarantined entry keeps: its fields, its id and why it failed."""
    entry_id, fields = entry
    return {**fields, b"entry_id": entry_id, b"error": error[:2000].encode()}


# -- consumer groups (the connectors read the outboxes through one) -----------------------------------


async def ensure_group(redis: Redis, key: str, group: str) -> None:
    """Create a stream and a consumer group reading it from the start, if missing (idempotent)."""
    try:
        await redis.xgroup_create(key, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def trim_acknowledged(redis: Redis, key: str) -> None:
    """Drop the entries of stream `key` that every consumer group has read and acknowledged."""
    groups = await redis.xinfo_groups(key)
    floor: tuple[int, int] | None = None
    for group in groups:
        candidate = stream_id(group["last-delivered-id"])
        pending = await redis.xpending(key, group["name"])
        if pending and pending["pending"]:
            candidate = min(candidate, stream_id(pending["min"]))
        floor = candidate if floor is None else min(floor, candidate)
    if floor and floor != (0, 0):
        await redis.xtrim(key, minid=f"{floor[0]}-{floor[1]}", approximate=True)


def stream_id(value: Any) -> tuple[int, int]:
    """A stream entry id (bytes or text) as (ms, seq), which orders ids as Redis does."""
    raw = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)
