"""User profiles: attributes (JSON values) and tags, part of the user's packed record.

Only the partition owner writes a record, so a profile change is a stream entry (`ProfilePatch`)
applied in order with the user's events: every later event, even of the same batch, sees it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from cep import streams
from cep.events import ProfilePatch
from cep.user_state import read_state

POLL_S = 0.005


@dataclass(frozen=True, slots=True)
class Profile:
    """A user's profile attributes and tags."""

    attrs: dict[str, Any]
    tags: frozenset[str]


async def get_profile(redis: Redis, partitions: int, user_id: str) -> Profile:
    """One user's committed profile (empty when the user is unknown)."""
    state = await read_state(redis, partitions, user_id)
    return Profile(state.profile, frozenset(state.tags))


async def patch_profile(redis: Redis, partitions: int, patch: ProfilePatch, wait_s: float) -> bool:
    """Queue a profile change in the user's stream; True once it is committed (waits up to `wait_s`)."""
    partition, entry_id = await streams.append_patch(redis, patch, partitions)
    deadline = time.monotonic() + wait_s
    while True:
        committed, _ = await streams.progress(redis, partition)
        if streams.stream_id(committed) >= streams.stream_id(entry_id):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_S)
