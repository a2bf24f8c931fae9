"""Partitioned event streams (`b:{p:<n>}:events`): append, consumer-group reads, acks, reclaim, trim."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from cep.events import Event, decode_event, decode_timer_event, encode_event, partition_of
from cep.interactions import note_interactions

log = logging.getLogger("beacon.streams")

GROUP = "beacon-workers"
FIELD = b"e"  # a producer or tag event, msgpack
TIMER_FIELD = "t"  # a timer event moved here by the sweeper, JSON (with its due time in "due")


def events_key(partition: int) -> str:
    """The event stream of one partition."""
    return f"b:{{p:{partition}}}:events"


async def ensure_group(redis: Redis, key: str, group: str) -> None:
    """Create a stream and a consumer group reading it from the start, if missing (idempotent)."""
    try:
        await redis.xgroup_create(key, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def ensure_groups(redis: Redis, partitions: int) -> None:
    """Create every partition's event stream and the workers' consumer group if missing."""
    for partition in range(partitions):
        await ensure_group(redis, events_key(partition), GROUP)


async def append_events(redis: Redis, events: Sequence[Event], partitions: int) -> list[bytes]:
    """XADD each event to its user's partition in one pipeline; returns the entry ids.

    Returns only after Redis has acknowledged every append, which is what an ingest ack promises.
    """
    if not events:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(events_key(partition_of(event.user_id, partitions)), {FIELD: encode_event(event)})
        # The 48-hour customer-service window of WeChat counts from the user's last interaction.
        await note_interactions(pipe, events)
        return list(await pipe.execute())[: len(events)]


async def read_new(
    redis: Redis, partition: int, consumer: str, count: int, block_ms: int
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Entries never delivered to any consumer of the group, blocking up to `block_ms`."""
    reply = await redis.xreadgroup(GROUP, consumer, {events_key(partition): ">"}, count=count, block=block_ms)
    if not reply:
        return []
    return list(reply[0][1])


def quarantine_key(partition: int) -> str:
    """Entries that failed on their own (capped): kept for inspection, out of the workers' way."""
    return f"b:{{p:{partition}}}:quarantine"


QUARANTINE_MAXLEN = 10_000


async def quarantine(redis: Redis, partition: int, entry: tuple[bytes, dict[bytes, bytes]], error: str) -> None:
    """Move one entry to the partition's quarantine stream with the error, and acknowledge it."""
    entry_id, fields = entry
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(
            quarantine_key(partition),
            {**fields, b"entry_id": entry_id, b"error": error[:2000]},
            maxlen=QUARANTINE_MAXLEN,
            approximate=True,
        )
        pipe.xack(events_key(partition), GROUP, entry_id)
        await pipe.execute()


async def claim_pending(
    redis: Redis, partition: int, consumer: str, count: int
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The oldest entries read but never acknowledged, by any consumer, now claimed by `consumer`.

    Only the partition's owner calls this, so the previous readers are dead or have handed over.
    """
    reply: Any = await redis.xautoclaim(events_key(partition), GROUP, consumer, 0, "0-0", count=count)
    # XAUTOCLAIM returns [next-id, entries, deleted-ids]; deleted entries come back as None.
    return [entry for entry in reply[1] if entry and entry[1]]


async def ack(redis: Redis, partition: int, entry_ids: Iterable[bytes]) -> None:
    """Acknowledge processed entries."""
    ids = list(entry_ids)
    if ids:
        await redis.xack(events_key(partition), GROUP, *ids)


def decode_entries(
    entries: Sequence[tuple[bytes, dict[bytes, bytes]]],
) -> tuple[list[tuple[bytes, Event]], list[bytes]]:
    """Split stream entries into decoded events and ids of entries that cannot be read (poison)."""
    decoded: list[tuple[bytes, Event]] = []
    poison: list[bytes] = []
    for entry_id, fields in entries:
        try:
            if FIELD in fields:
                decoded.append((entry_id, decode_event(fields[FIELD])))
            else:
                due = int(float(fields[b"due"]))
                decoded.append((entry_id, decode_timer_event(fields[TIMER_FIELD.encode()], due)))
        except Exception:
            log.exception("dropping unreadable stream entry %s", entry_id)
            poison.append(entry_id)
    return decoded, poison


async def trim_acknowledged(redis: Redis, key: str) -> None:
    """Drop the entries of stream `key` that every consumer group has read and acknowledged, so the
    stream stays as long as its backlog (event streams and outboxes alike)."""
    groups = await redis.xinfo_groups(key)
    floor: tuple[int, int] | None = None
    for group in groups:
        candidate = _stream_id(group["last-delivered-id"])
        pending = await redis.xpending(key, group["name"])
        if pending and pending["pending"]:
            candidate = min(candidate, _stream_id(pending["min"]))
        floor = candidate if floor is None else min(floor, candidate)
    if floor and floor != (0, 0):
        await redis.xtrim(key, minid=f"{floor[0]}-{floor[1]}", approximate=True)


async def backlog(redis: Redis, partitions: int) -> int:
    """Entries not yet delivered to the group, over all partitions (the stream lag)."""
    total = 0
    for partition in range(partitions):
        try:
            for group in await redis.xinfo_groups(events_key(partition)):
                if group["name"] in (GROUP, GROUP.encode()):
                    total += int(group.get("lag") or 0) + int(group.get("pending") or 0)
        except ResponseError:
            continue
    return total


def _stream_id(value: Any) -> tuple[int, int]:
    raw = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)
