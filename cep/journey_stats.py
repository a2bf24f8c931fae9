"""Journey statistics: one hash per partition and journey (`b:{p:<n>}:jstats:<journey>`), field -> count.

Fields are `"<version>|<node>|<what>"` (`cep.journeys.counter_field`; node "" for the journey as a
whole). The partition owner's commit adds a batch's increments in the same atomic call that moves its
instances, so the counts are exact: never counted twice, never lost. Reading sums the partitions.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from cep.events import partition_tag

# What a node counts. `waiting` goes up and down (instances waiting there now); the rest only grow.
NODE_COUNTS = ("entered", "waiting", "exited", "converted")
JOURNEY_COUNTS = ("entered", "completed", "exited", "converted")


def stats_key(partition: int, journey_id: str) -> str:
    """The statistics hash of one journey in one partition."""
    return f"b:{{{partition_tag(partition)}}}:jstats:{journey_id}"


async def read_counts(redis: Redis, partitions: int, journey_id: str) -> dict[str, int]:
    """Every field of a journey's statistics, summed over the partitions."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.hgetall(stats_key(partition, journey_id))
        replies = await pipe.execute()
    totals: dict[str, int] = {}
    for reply in replies:
        for field, value in reply.items():
            name = field.decode() if isinstance(field, bytes) else field
            totals[name] = totals.get(name, 0) + int(value)
    return totals


async def delete_counts(redis: Redis, partitions: int, journey_id: str) -> None:
    """Forget a deleted journey's statistics (its id may be reused for a new journey)."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.delete(stats_key(partition, journey_id))
        await pipe.execute()


def waiting_now(counts: dict[str, int], versions: set[int]) -> int:
    """Instances waiting now, over the given (kept) versions and every node: an instance of a version no
    longer kept is cancelled without a count (its nodes are unknown by then)."""
    return sum(
        value
        for field, value in counts.items()
        if field.endswith("|waiting") and int(field.split("|", 1)[0]) in versions
    )


def stats_view(counts: dict[str, int]) -> dict[str, Any]:
    """The counts shaped per version and node: `{"versions": {v: {"journey": {...}, "nodes": {id: {...}}}}}`.

    Per node: entered, waiting now, exited, converted, and `left` by branch label (`arm0`, `else`,
    `holdout`, the awaited event type, `timeout`); per journey: entered, completed, exited (by an exit
    event), converted, and `not_entered` by reason.
    """
    versions: dict[str, dict[str, Any]] = {}
    for field, value in sorted(counts.items()):
        version, node, what = field.split("|", 2)
        view = versions.setdefault(version, {"journey": dict.fromkeys(JOURNEY_COUNTS, 0), "nodes": {}})
        if not node:
            if what.startswith("blocked:"):
                view["journey"].setdefault("not_entered", {})[what.removeprefix("blocked:")] = value
            else:
                view["journey"][what] = value
            continue
        counts_of = view["nodes"].setdefault(node, {**dict.fromkeys(NODE_COUNTS, 0), "left": {}})
        if what.startswith("left:"):
            counts_of["left"][what.removeprefix("left:")] = value
        else:
            counts_of[what] = value
    return {"versions": versions}
