"""Segment membership in Redis: per partition a SET of member user ids per segment
(`b:{p:<n>}:seg:<segment>`) and a HASH of sizes (`b:{p:<n>}:segsize`, segment -> members).

Both are written only by the partition owner's commit (`cep.commit`), in the same atomic call as the
users' records that hold the memberships, so sizes and member lists never disagree with the users.
Reading sums or walks the partitions.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from cep.events import partition_tag

MEMBERS_PAGE_MAX = 1000


def members_key(partition: int, segment_id: str) -> str:
    """The SET of one segment's members in one partition."""
    return f"b:{{{partition_tag(partition)}}}:seg:{segment_id}"


def sizes_key(partition: int) -> str:
    """The HASH segment id -> members in one partition."""
    return f"b:{{{partition_tag(partition)}}}:segsize"


async def segment_size(redis: Redis, partitions: int, segment_id: str) -> int:
    """Members of a segment, over all partitions."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.hget(sizes_key(partition), segment_id)
        return sum(int(value or 0) for value in await pipe.execute())


async def segment_sizes(redis: Redis, partitions: int, segment_ids: Sequence[str]) -> dict[str, int]:
    """Members of each of some segments (a page of the list), over all partitions, in one round trip."""
    if not segment_ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.hmget(sizes_key(partition), list(segment_ids))
        counts = await pipe.execute()
    return {
        segment_id: sum(int(partition_counts[index] or 0) for partition_counts in counts)
        for index, segment_id in enumerate(segment_ids)
    }


async def members_page(
    redis: Redis, partitions: int, segment_id: str, cursor: str, count: int
) -> tuple[list[str], str]:
    """Up to about `count` members from `cursor` ("" to start), and the next cursor ("" when done).

    The cursor is `<partition>:<SSCAN cursor>`: partitions are walked in order, each with SSCAN, so a
    member present for the whole walk is listed once (SSCAN's guarantee), whatever changes meanwhile.
    """
    partition, scan = _parse_cursor(cursor, partitions)
    found: list[str] = []
    while partition < partitions and len(found) < count:
        scan, members = await redis.sscan(members_key(partition, segment_id), scan, count=count - len(found))
        found.extend(member.decode() if isinstance(member, bytes) else member for member in members)
        if scan == 0:
            partition += 1
    return found, (f"{partition}:{scan}" if partition < partitions else "")


def _parse_cursor(cursor: str, partitions: int) -> tuple[int, int]:
    if not cursor:
        return 0, 0
    head, _, tail = cursor.partition(":")
    if not (head.isdigit() and tail.isdigit()) or int(head) >= partitions:
        raise ValueError(f"not a members cursor: {cursor!r}")
    return int(head), int(tail)


async def delete_members(redis: Redis, partitions: int, segment_id: str) -> None:
    """Forget a deleted segment's members and sizes (users' records drop it when next touched)."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.delete(members_key(partition, segment_id))
            pipe.hdel(sizes_key(partition), segment_id)
        await pipe.execute()
