"""Dead letters: a capped stream of actions that exhausted their attempts, listing and replay."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from beacon.clock import Clock
from connectors import delivery_ledger as ledger

DEAD_LETTERS_KEY = "b:{dead}:letters"  # stream of {u: user, a: action id, c: connector, r: reason, t: ms}
SCAN_PAGE = 500


async def add_dead_letter(
    redis: Redis, record: dict[str, Any], connector: str, reason: str, now_ms: int, maxlen: int
) -> None:
    """Append an action to the dead-letter stream (before its record turns dead, so none is lost unlisted)."""
    fields: dict[Any, Any] = {
        "u": record["user_id"],
        "a": record["action_id"],
        "c": connector,
        "r": reason,
        "t": str(now_ms),
    }
    await redis.xadd(DEAD_LETTERS_KEY, fields, maxlen=maxlen, approximate=True)


async def dead_letter_count(redis: Redis) -> int:
    """Entries in the dead-letter stream: actions that ran out of attempts and were not replayed since (a replay
    deletes its entry), up to the stream's approximate cap."""
    return int(await redis.xlen(DEAD_LETTERS_KEY))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def list_dead_letters(
    redis: Redis, partitions: int, limit: int, connector: str | None = None
) -> list[dict[str, Any]]:
    """The newest dead actions (one row per action), each with its current ledger record."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    last = "+"
    while len(rows) < limit:
        entries: Any = await redis.xrevrange(DEAD_LETTERS_KEY, max=last, count=SCAN_PAGE)
        if last != "+":
            entries = entries[1:]  # XREVRANGE's max is inclusive: the page starts with the last one seen
        if not entries:
            break
        last = _text(entries[-1][0])
        candidates = []
        for entry_id, fields in entries:
            row = {key: _text(fields[key.encode()]) for key in ("u", "a", "c", "r", "t")}
            if row["a"] in seen or (connector and row["c"] != connector):
                continue
            seen.add(row["a"])
            candidates.append((_text(entry_id), row))
        found = await ledger.read_actions(redis, partitions, [(row["u"], row["a"]) for _, row in candidates])
        for (entry_id, row), stored in zip(candidates, found, strict=True):
            # A replayed or since-delivered action keeps its old entry until trimmed: list only the dead.
            if stored is not None and stored.status.get("status") == ledger.DEAD:
                rows.append(
                    {
                        "id": entry_id,
                        "user_id": row["u"],
                        "action_id": row["a"],
                        "connector": row["c"],
                        "reason": row["r"],
                        "dead_at": int(row["t"]),
                        "action": {**stored.record, **stored.status},
                    }
                )
    return rows[:limit]


async def replay(redis: Redis, clock: Clock, partitions: int, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Put dead actions back to pending with fresh attempts; the consumer redelivers them (same idempotency key)."""
    replayed: list[str] = []
    refused: list[dict[str, str]] = []
    for row in rows:
        user_id, action_id = row["user_id"], row["action_id"]
        stored = await ledger.read_action(redis, partitions, user_id, action_id)
        if stored is None or stored.status.get("status") != ledger.DEAD:
            refused.append({"action_id": action_id, "reason": "not_dead"})
            continue
        now = clock.now_ms()
        fresh = ledger.transition(
            stored.status, now, ledger.PENDING, attempts=0, reason="replayed",
            replays=int(stored.status.get("replays") or 0) + 1, next_attempt_at=None, dead_at=None, reply=None,
        )  # fmt: skip
        # Pending again with a wake-up for now, in one step: a replayed action has no outbox entry.
        if await ledger.swap_status(redis, partitions, stored, fresh, wake_at=now) is None:
            refused.append({"action_id": action_id, "reason": "changed"})
            continue
        replayed.append(action_id)
        if row.get("id"):
            # Listed no more (the listing checks the ledger anyway): the stream's length counts the dead.
            await redis.xdel(DEAD_LETTERS_KEY, row["id"])
    return {"replayed": replayed, "refused": refused}


async def rows_by_ids(redis: Redis, entry_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Dead-letter rows (user_id, action_id) for the given entry ids; unknown ids are left out."""
    rows = []
    for entry_id in entry_ids:
        found: Any = await redis.xrange(DEAD_LETTERS_KEY, min=entry_id, max=entry_id)
        for _, fields in found:
            rows.append({"user_id": _text(fields[b"u"]), "action_id": _text(fields[b"a"]), "id": entry_id})
    return rows
