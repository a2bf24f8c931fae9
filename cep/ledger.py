"""The delivery ledger as the API shows it: immutable action records joined with their status."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from cep.outbox import RECENT_KEY
from cep.user_state import LEDGER, LEDGER_INDEX, LEDGER_STATUS, user_key


def merge_status(record_raw: bytes | str, status_raw: bytes | str | None) -> dict[str, Any]:
    """One action as listed: its record with the status fields laid over it."""
    action = json.loads(record_raw)
    action.update(json.loads(status_raw) if status_raw else {"status": "unknown"})
    return action


async def _load(redis: Redis, wanted: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    async with redis.pipeline(transaction=False) as pipe:
        for user_id, action_id in wanted:
            pipe.hget(user_key(user_id, LEDGER), action_id)
            pipe.hget(user_key(user_id, LEDGER_STATUS), action_id)
        replies = await pipe.execute()
    return [merge_status(replies[i], replies[i + 1]) for i in range(0, len(replies), 2) if replies[i]]


async def user_actions(
    redis: Redis, user_id: str, rule_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """A user's actions, newest first, optionally only one rule's."""
    # Over-fetch when filtering by rule so the page is still full in the common case.
    ids = await redis.zrevrange(user_key(user_id, LEDGER_INDEX), 0, (limit * 10 if rule_id else limit) - 1)
    actions = await _load(redis, [(user_id, action_id) for action_id in ids])
    if rule_id is not None:
        actions = [action for action in actions if action.get("rule_id") == rule_id]
    return actions[:limit]


async def recent_actions(redis: Redis, rule_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest actions across users (from the capped recent list), with their current status."""
    entries = await redis.xrevrange(RECENT_KEY, count=limit * (10 if rule_id else 2))
    seen: set[bytes] = set()
    wanted: list[tuple[str, bytes]] = []
    for _, fields in entries:
        action_id = fields[b"a"]
        if action_id not in seen:
            seen.add(action_id)
            wanted.append((fields[b"u"].decode(), action_id))
    actions = await _load(redis, wanted)
    if rule_id is not None:
        actions = [action for action in actions if action.get("rule_id") == rule_id]
    return actions[:limit]
