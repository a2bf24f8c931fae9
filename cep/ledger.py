"""The delivery ledger as the API shows it: immutable action records joined with their status."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from cep.outbox import recent_key
from cep.streams import stream_id
from cep.user_state import LEDGER, LEDGER_INDEX, LEDGER_STATUS, user_key_for


def merge_status(record_raw: bytes | str, status_raw: bytes | str | None) -> dict[str, Any]:
    """One action as listed: its record with the status fields laid over it."""
    action: dict[str, Any] = json.loads(record_raw)
    action.update(json.loads(status_raw) if status_raw else {"status": "unknown"})
    return action


async def _load(redis: Redis, partitions: int, wanted: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    async with redis.pipeline(transaction=False) as pipe:
        for user_id, action_id in wanted:
            pipe.hget(user_key_for(partitions, user_id, LEDGER), action_id)
            pipe.hget(user_key_for(partitions, user_id, LEDGER_STATUS), action_id)
        replies = await pipe.execute()
    return [merge_status(replies[i], replies[i + 1]) for i in range(0, len(replies), 2) if replies[i]]


async def action_outcomes(redis: Redis, partitions: int, user_id: str, action_ids: list[str]) -> dict[str, Any]:
    """The delivery status of some of a user's actions, by id (missing: not in the ledger any more)."""
    key = user_key_for(partitions, user_id, LEDGER_STATUS)
    raws = await redis.hmget(key, action_ids)
    return {action_id: json.loads(raw) for action_id, raw in zip(action_ids, raws, strict=True) if raw}


async def user_actions(
    redis: Redis,
    partitions: int,
    user_id: str,
    rule_id: str | None = None,
    limit: int = 100,
    merged_from: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """A user's actions, newest first, optionally only one rule's; with `merged_from` (the users merged into it,
    `UserState.merged_from`) theirs too, as one ledger: a merge leaves each user's actions under its own id."""
    owners = list(dict.fromkeys([user_id, *merged_from]))
    # Over-fetch when filtering by rule so the page is still full in the common case.
    wanted = limit * 10 if rule_id else limit
    async with redis.pipeline(transaction=False) as pipe:
        for owner in owners:
            pipe.zrevrange(user_key_for(partitions, owner, LEDGER_INDEX), 0, wanted - 1, withscores=True)
        replies = await pipe.execute()
    # By creation time, newest first; ties as ZREVRANGE orders them (the greater action id first).
    newest = sorted(
        ((score, action_id, owner) for owner, reply in zip(owners, replies, strict=True) for action_id, score in reply),
        reverse=True,
    )
    actions = await _load(redis, partitions, [(owner, action_id) for _, action_id, owner in newest[:wanted]])
    if rule_id is not None:
        actions = [action for action in actions if action.get("rule_id") == rule_id]
    return actions[:limit]


async def recent_actions(
    redis: Redis, partitions: int, rule_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest actions across users (merged from the partitions' recent lists), with their status."""
    count = limit * (10 if rule_id else 2)
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.xrevrange(recent_key(partition), count=count)
        replies = await pipe.execute()
    entries = sorted(
        (entry for reply in replies for entry in reply), key=lambda entry: stream_id(entry[0]), reverse=True
    )
    seen: set[bytes] = set()
    wanted: list[tuple[str, bytes]] = []
    for _, fields in entries[:count]:
        action_id = fields[b"a"]
        if action_id not in seen:
            seen.add(action_id)
            wanted.append((fields[b"u"].decode(), action_id))
    actions = await _load(redis, partitions, wanted)
    if rule_id is not None:
        actions = [action for action in actions if action.get("rule_id") == rule_id]
    return actions[:limit]
