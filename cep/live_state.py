"""The "why didn't it fire?" view: a user's live pattern state, read from the pattern index."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from cep.user_state import FIRED, FIRST, PATTERN_INDEX, WATERMARK, user_key

ROLE_NAMES = {"a": "first_seen", "b": "then_or_missing_seen", "pending": "pending_absence", "t": "window"}


async def live_state(redis: Redis, user_id: str) -> dict[str, Any]:
    """Per rule key: its watermark, last firing, first-seen marker and live pattern sets with entries."""
    index = await redis.hgetall(user_key(user_id, PATTERN_INDEX))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(user_key(user_id, WATERMARK))
        pipe.hgetall(user_key(user_id, FIRED))
        pipe.hgetall(user_key(user_id, FIRST))
        keys = list(index)
        for key in keys:
            pipe.zrange(key, 0, 99, withscores=True)
        replies = await pipe.execute()
    watermarks, fired, first, sets = replies[0], replies[1], replies[2], replies[3:]
    rules: dict[str, dict[str, Any]] = {}

    def rule(rk: bytes) -> dict[str, Any]:
        return rules.setdefault(rk.decode(), {"sets": []})

    for rk, ts in watermarks.items():
        rule(rk)["watermark"] = int(float(ts))
    for rk, ts in fired.items():
        rule(rk)["last_fired_ts"] = int(float(ts))
    for rk, ts in first.items():
        rule(rk)["first_seen_ts"] = int(float(ts))
    for key, entries in zip(keys, sets, strict=True):
        if not entries:
            continue  # expired or emptied since the index was written
        role = key.decode().rsplit(":", 2)[-2]
        rule(index[key])["sets"].append(
            {
                "kind": ROLE_NAMES.get(role, role),
                "entries": [
                    {"event_id": member.decode().split("|", 1)[0], "ts": int(score)} for member, score in entries
                ],
            }
        )
    return rules
