"""The data layout version in Redis (`b:{meta}:layout`): refuse to start on data another layout wrote.

Layout 2 (engine v2) keeps users' state in packed records in their partition's slot and reads streams
by committed position; layout 1 kept per-user keys and consumer groups. The two cannot be mixed, and
the partition count is part of the layout too: it decides where every user's state lives.
"""

from __future__ import annotations

import json

from redis.asyncio import Redis

from beacon.errors import BeaconError
from cep.streams import events_key

LAYOUT_KEY = "b:{meta}:layout"
LAYOUT_VERSION = 2


class LayoutError(BeaconError):
    """Redis holds data this version cannot use; the message says what to do."""

    code = "layout"


async def check_layout(redis: Redis, partitions: int) -> None:
    """Record the layout on an empty database; refuse an old layout or another partition count."""
    raw = await redis.get(LAYOUT_KEY)
    if raw is None:
        if await redis.exists(events_key(0)) and await _has_old_group(redis):
            raise LayoutError(
                "this Redis holds data of Beacon's layout 1 (consumer groups, per-user keys); engine v2 "
                "cannot read it. Drain it with the old version and start on an empty database."
            )
        layout = json.dumps({"version": LAYOUT_VERSION, "partitions": partitions})
        if await redis.set(LAYOUT_KEY, layout, nx=True):
            return
        raw = await redis.get(LAYOUT_KEY)  # another process recorded it first
    stored = json.loads(raw or "{}")
    if stored.get("version") != LAYOUT_VERSION:
        raise LayoutError(f"this Redis holds Beacon layout {stored.get('version')}; this version uses {LAYOUT_VERSION}")
    if int(stored.get("partitions", 0)) != partitions:
        raise LayoutError(
            f"this Redis was set up with {stored['partitions']} partitions, not {partitions}: users' state lives "
            f"in their partition, so the count cannot change. Set BEACON_PARTITIONS={stored['partitions']}."
        )


async def _has_old_group(redis: Redis) -> bool:
    try:
        groups = await redis.xinfo_groups(events_key(0))
    except Exception:
        return False
    return bool(groups)
