"""User profiles: attributes (JSON values) and tags, stored under the user's `{u:<user>}` keys."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from cep.user_state import PROFILE, TAGS, user_key


@dataclass(frozen=True, slots=True)
class Profile:
    """A user's profile attributes and tags."""

    attrs: dict[str, Any]
    tags: frozenset[str]


def _decode_attrs(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    return {key.decode(): json.loads(value) for key, value in raw.items()}


async def get_profiles(redis: Redis, user_ids: Sequence[str]) -> dict[str, Profile]:
    """Profiles of many users in one pipelined round trip."""
    if not user_ids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for user_id in user_ids:
            pipe.hgetall(user_key(user_id, PROFILE))
            pipe.smembers(user_key(user_id, TAGS))
        replies = await pipe.execute()
    return {
        user_id: Profile(
            attrs=_decode_attrs(replies[2 * i]),
            tags=frozenset(tag.decode() for tag in replies[2 * i + 1]),
        )
        for i, user_id in enumerate(user_ids)
    }


async def get_profile(redis: Redis, user_id: str) -> Profile:
    """One user's profile (empty when the user is unknown)."""
    return (await get_profiles(redis, [user_id]))[user_id]


async def patch_profile(
    redis: Redis,
    user_id: str,
    attrs: Mapping[str, Any],
    add_tags: Iterable[str] = (),
    remove_tags: Iterable[str] = (),
) -> Profile:
    """Set attributes (None deletes one) and change tags in one MULTI/EXEC; returns the new profile."""
    profile_key, tags_key = user_key(user_id, PROFILE), user_key(user_id, TAGS)
    to_set = {name: json.dumps(value, ensure_ascii=False) for name, value in attrs.items() if value is not None}
    to_delete = [name for name, value in attrs.items() if value is None]
    add, remove = list(add_tags), list(remove_tags)
    async with redis.pipeline(transaction=True) as pipe:
        if to_set:
            pipe.hset(profile_key, mapping=to_set)
        if to_delete:
            pipe.hdel(profile_key, *to_delete)
        if add:
            pipe.sadd(tags_key, *add)
        if remove:
            pipe.srem(tags_key, *remove)
        pipe.hgetall(profile_key)
        pipe.smembers(tags_key)
        replies = await pipe.execute()
    return Profile(attrs=_decode_attrs(replies[-2]), tags=frozenset(tag.decode() for tag in replies[-1]))
