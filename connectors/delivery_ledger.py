"""Delivery status in the ledger (compare-and-swap on the user's status entry) and the due-delivery wake-ups.

An action is two entries of the user's ledger: the immutable record (`acts`, written by the worker) and
its status (`astat`: {status, updated_at, attempts, ...}). The state machine is pure Python
(`claim_state`, `transition`); each transition is made atomic by one CAS script call that replaces the
status only if it still reads what the caller decided from, and sets or removes the action's wake-up
(the partition's due set, same slot) in the same step. So every unfinished status the consumers write
carries its wake-up: a claim wakes the action at its lease's end, a retry or deferral when it is due,
a replay at once, and a final status has none. Nothing else removes a wake-up of an unfinished action,
so an action can never stay `delivering` (or `failed`) with nobody to look at it again, even when the
claim's reply was lost and its outbox entry was acknowledged.

    pending --claim--> delivering --ok--> delivered
       ^                   |-- retryable failure --> failed (next_attempt_at) --claim when due--> delivering
       |                   |-- quiet hours / rate limit --> pending (next_attempt_at, reason)
       +-- replay -- dead <-- last attempt or permanent failure;   skipped <-- the user cannot receive it
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from cep.events import ORIGIN_DELIVERY, Event, encode_batch, partition_of, partition_tag
from cep.scripts import ScriptCall, run_scripts
from cep.streams import BATCH_FIELD, events_key, progress_key
from cep.user_state import LEDGER, LEDGER_STATUS, user_key_for

PENDING = "pending"
DELIVERING = "delivering"
FAILED = "failed"
DELIVERED = "delivered"
SKIPPED = "skipped"
DEAD = "dead"

# KEYS[1] = the user's ledger status HASH (action id -> JSON status), KEYS[2] = the partition's wake-up ZSET
# (`due_key`), KEYS[3] = the partition's event stream, KEYS[4] = its progress HASH (the same slot: all carry
# the partition's hash tag).
# ARGV[1] = action id, ARGV[2] = the status text the caller decided from, ARGV[3] = the new status text,
# ARGV[4] = the action's wake-up member, ARGV[5] = when to wake it (ms), or '' to remove its wake-up,
# ARGV[6] = the stream entry's field, ARGV[7] = an encoded outcome event to append with a final status ('':
# none), so the engine hears of every delivery outcome exactly once (`outcome_event`).
# Returns 1 when the status still read ARGV[2] and now reads ARGV[3], its wake-up set or removed with it;
# 0 when it changed meanwhile (another consumer, a replay, retention) and nothing was written.
SWAP_SCRIPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] ~= ARGV[2] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
if ARGV[5] == '' then
    redis.call('ZREM', KEYS[2], ARGV[4])
else
    redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
end
if ARGV[7] ~= '' then
    redis.call('XADD', KEYS[3], '*', ARGV[6], ARGV[7], 'n', 1)
    redis.call('HINCRBY', KEYS[4], 'added', 1)
end
return 1
"""
# Final statuses the engine hears of, as events of the user (`action_delivered`, ...): rules can act on a
# failed delivery, and attribution counts reach from `action_delivered` (docs/measurement.md).
OUTCOME_EVENTS = {"delivered": "action_delivered", "skipped": "action_skipped", "dead": "action_dead"}
OUTCOME_FIELDS = (
    "action_id", "type", "ruleset_id", "rule_id", "journey_id", "node_id", "plan_id", "occurrence", "source",
    "trigger_id", "entry",
)  # fmt: skip


def outcome_event(record: dict[str, Any], status: dict[str, Any]) -> Event | None:
    """The event a final status sends the engine (None for an unfinished one), with a deterministic id: a
    replayed action delivered again is a second outcome (`attempts` differ), the same CAS retried is not."""
    kind = OUTCOME_EVENTS.get(str(status.get("status")))
    if kind is None:
        return None
    attrs = {name: record[name] for name in OUTCOME_FIELDS if record.get(name) is not None}
    params = record.get("params")
    if isinstance(params, dict) and isinstance(params.get("channel"), str):
        attrs["channel"] = params["channel"]
    if status.get("reason"):
        attrs["reason"] = str(status["reason"])
    at = int(status.get("updated_at") or 0)
    event_id = f"outcome:{record['action_id']}:{status['status']}:{status.get('attempts', 0)}"
    return Event(event_id, str(record["user_id"]), kind, at, attrs, at, ORIGIN_DELIVERY)


@dataclass(frozen=True, slots=True)
class Stored:
    """An action as read: its record, its status, and the status's exact text (the CAS operand)."""

    record: dict[str, Any]
    status: dict[str, Any]
    raw_status: str


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read_actions(redis: Redis, partitions: int, pairs: list[tuple[str, str]]) -> list[Stored | None]:
    """Many actions (by (user, action id)) in one pipelined round trip; None where one is gone."""
    async with redis.pipeline(transaction=False) as pipe:
        for user_id, action_id in pairs:
            pipe.hget(user_key_for(partitions, user_id, LEDGER), action_id)
            pipe.hget(user_key_for(partitions, user_id, LEDGER_STATUS), action_id)
        replies = await pipe.execute()
    found: list[Stored | None] = []
    for record_raw, status_raw in zip(replies[::2], replies[1::2], strict=True):
        if record_raw is None or status_raw is None:
            found.append(None)
        else:
            found.append(Stored(json.loads(record_raw), json.loads(status_raw), _text(status_raw)))
    return found


async def read_action(redis: Redis, partitions: int, user_id: str, action_id: str) -> Stored | None:
    """One action's record and status, or None when the ledger no longer has it."""
    (stored,) = await read_actions(redis, partitions, [(user_id, action_id)])
    return stored


async def swap_status(
    redis: Redis, partitions: int, expected: Stored, status: dict[str, Any], *, wake_at: int | None
) -> Stored | None:
    """Replace the action's status if it is still `expected`'s, and in the same step wake the action at
    `wake_at` (ms) or, with None, forget its wake-up; the new Stored, or None when it had changed.

    Every transition names its wake-up: an unfinished status without one would never be looked at again.
    """
    text = json.dumps(status, separators=(",", ":"), ensure_ascii=False)
    outcome = outcome_event(expected.record, status)
    swapped = await _swap(redis, partitions, expected, text, wake_at, outcome)
    return Stored(expected.record, status, text) if swapped else None


async def forget_wake_up(redis: Redis, partitions: int, stored: Stored) -> bool:
    """Remove the wake-up of an action read as needing none (final, or the worker's: scheduled, cancelled) if
    its status still reads so: a replay that put it back to pending meanwhile keeps the wake-up it set."""
    return await _swap(redis, partitions, stored, stored.raw_status, None)


async def _swap(
    redis: Redis, partitions: int, expected: Stored, text: str, wake_at: int | None, outcome: Event | None = None
) -> bool:
    user_id, action_id = expected.record["user_id"], expected.record["action_id"]
    partition = partition_of(user_id, partitions)
    keys = [
        user_key_for(partitions, user_id, LEDGER_STATUS),
        due_key(partition),
        events_key(partition),
        progress_key(partition),
    ]
    wake = "" if wake_at is None else str(int(wake_at))
    event = encode_batch([outcome]) if outcome is not None and text != expected.raw_status else b""
    args = [action_id, expected.raw_status, text, hint_member(user_id, action_id), wake, BATCH_FIELD, event]
    call = ScriptCall(SWAP_SCRIPT, keys, args)
    (swapped,) = await run_scripts(redis, [call])
    return bool(swapped)


def claim_state(status: dict[str, Any], now_ms: int) -> tuple[str, int]:
    """Whether a delivery may start now: ("claim", 0), ("busy" | "not_due", wake-up time) or ("done", 0)."""
    state = status.get("status")
    if state == DELIVERING:
        lease = int(status.get("lease_until") or 0)
        return ("busy", lease) if lease > now_ms else ("claim", 0)
    if state in (PENDING, FAILED):
        due = int(status.get("next_attempt_at") or 0)
        return ("not_due", due) if due > now_ms else ("claim", 0)
    # delivered / skipped / dead are final; scheduled and cancelled ones are the worker's.
    return ("done", 0)


def transition(status: dict[str, Any], now_ms: int, state: str, **fields: Any) -> dict[str, Any]:
    """A copy of `status` in `state`; fields set to None are removed, and the lease ends unless renewed."""
    updated = {key: value for key, value in status.items() if key != "lease_until"}
    updated.update(status=state, updated_at=now_ms)
    for key, value in fields.items():
        if value is None:
            updated.pop(key, None)
        else:
            updated[key] = value
    return updated


# -- due-delivery wake-ups ----------------------------------------------------------------------------
# A per-partition ZSET of (user, action) -> when to look at the action again: retries, deferrals, replays
# and the ends of leases. A hint is only a wake-up call; the ledger status decides what happens. The
# transitions set and remove hints (SWAP_SCRIPT); the functions below only move one or drop one whose
# action is gone.


def due_key(partition: int) -> str:
    """The wake-up set of one partition."""
    return f"b:{{{partition_tag(partition)}}}:outbox-due"


def hint_member(user_id: str, action_id: str) -> str:
    """The set member naming one action."""
    return json.dumps([user_id, action_id], separators=(",", ":"))


def parse_member(member: bytes | str) -> tuple[str, str]:
    """Inverse of hint_member."""
    user_id, action_id = json.loads(member)
    return str(user_id), str(action_id)


# KEYS[1] = the wake-up ZSET of one partition (member = JSON [user, action], score = due ms).
# ARGV[1] = now ms, ARGV[2] = how many at most, ARGV[3] = lease ms.
# Returns the members due at or before now. Each stays in the set with its score pushed to now + lease:
# if this consumer dies before it reschedules or removes the member, the member wakes someone later.
POP_DUE_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local later = tonumber(ARGV[1]) + tonumber(ARGV[3])
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], later, member) end
return due
"""


async def pop_due(redis: Redis, partition: int, now_ms: int, count: int, lease_ms: int) -> list[tuple[str, str]]:
    """Take up to `count` due (user, action) pairs, leasing them for `lease_ms`."""
    (members,) = await run_scripts(redis, [ScriptCall(POP_DUE_SCRIPT, [due_key(partition)], [now_ms, count, lease_ms])])
    return [parse_member(member) for member in members]


async def set_hint(
    redis: Redis, partition: int, user_id: str, action_id: str, at_ms: int, *, earlier_only: bool
) -> None:
    """Wake the action at `at_ms`; `earlier_only` never postpones a hint that is already set sooner.

    Only for an action read as waiting (busy, not due yet): its status is not changed, so its own hint,
    set by the transition that made it wait, stays whatever this call does to the score."""
    await redis.zadd(due_key(partition), {hint_member(user_id, action_id): at_ms}, lt=earlier_only)


async def drop_hint(redis: Redis, partition: int, user_id: str, action_id: str) -> None:
    """Forget the wake-up of an action the ledger no longer has (`forget_if_final` for a final one)."""
    await redis.zrem(due_key(partition), hint_member(user_id, action_id))
