"""Per-user state in Redis: the one module that names `b:{u:<user>}:*` keys and calls the step script.

Every key of a user carries the `{u:<user>}` hash tag, so one Lua call can touch all of them on a
Redis Cluster. The step script (`cep.step_lua`) is the only writer of dedupe, pattern, re-entry and
ledger-creation state: one atomic call per user per batch, never read -> await -> write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgpack

from cep.scripts import ScriptCall
from cep.step_lua import STEP_SCRIPT


def user_key(user_id: str, family: str) -> str:
    """The key of one family of one user's state."""
    return f"b:{{u:{user_id}}}:{family}"


SEEN = "seen"  # ZSET event_id -> processing time
RESULTS = "res"  # HASH event_id -> JSON reply, replayed for duplicates
FIRED = "fired"  # HASH rule key -> trigger ts of the last admitted firing
LEDGER = "acts"  # HASH action_id -> JSON action record (immutable)
LEDGER_INDEX = "actx"  # ZSET action_id -> created_at
LEDGER_STATUS = "astat"  # HASH action_id -> JSON delivery status
TAGS = "tags"  # SET
FIRST = "first"  # HASH rule key -> ts of the first matching event
WATERMARK = "wm"  # HASH rule key -> highest event ts seen by the rule
PATTERN_INDEX = "pidx"  # HASH pattern state key -> rule key
PROFILE = "prof"  # HASH attribute -> JSON value
LAST_SEEN = "seen_at"  # ZSET {"ts": newest producer event ts}: the 48-hour WeChat window (cep.interactions)
CAPS = "cap"  # prefix of ZSETs cap:<channel> action_id -> send time: frequency caps (connectors.caps)
STEP_FAMILIES = (SEEN, RESULTS, FIRED, LEDGER, LEDGER_INDEX, LEDGER_STATUS, TAGS, FIRST, WATERMARK, PATTERN_INDEX)


def pattern_key(user_id: str, state_id: str, role: str, correlation: str) -> str:
    """A pattern's per-correlation state: `state_id` names the rule's pattern shape, `role` the set."""
    return user_key(user_id, f"p:{state_id}:{role}:{correlation}")


@dataclass(slots=True)
class UserPlan:
    """The step script's input for one user: KEYS (fixed families first) and the events' ops."""

    user_id: str
    keys: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    fired_ttl_ms: int = 0  # longest once_per period among the rules; -1: a `once` rule (persist)
    _index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for family in STEP_FAMILIES:
            self.key_index(user_key(self.user_id, family))

    def key_index(self, key: str) -> int:
        """The 1-based KEYS index of `key`, adding it on first use."""
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = len(self.keys)
        return index

    def add_event(self, event_id: str, ts: int, ops: list[dict[str, Any]]) -> None:
        """Append one event's ops (in stream order)."""
        # cjson turns null into a truthy userdata: absent keys are the only safe "nothing" for Lua.
        cleaned = [{key: value for key, value in op.items() if value is not None} for op in ops]
        self.events.append({"id": event_id, "ts": ts, "ops": cleaned})

    def note_reentry(self, policy: str, period_ms: int) -> None:
        """Keep the re-entry hash alive for the longest period of any rule it serves."""
        if policy == "once" or self.fired_ttl_ms < 0:
            self.fired_ttl_ms = -1
        elif policy == "once_per":
            self.fired_ttl_ms = max(self.fired_ttl_ms, period_ms)

    def call(self, *, now_ms: int, dedupe_horizon_ms: int, ledger_retention_ms: int) -> ScriptCall:
        """The step script call (run pipelined by the caller)."""
        plan = {
            "now": now_ms,
            "horizon": dedupe_horizon_ms,
            "retention": ledger_retention_ms,
            "fired_ttl": max(self.fired_ttl_ms, 0),
            "events": self.events,
        }
        return ScriptCall(STEP_SCRIPT, self.keys, [msgpack.packb(plan, use_bin_type=False)])


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one event produced in the step script; `duplicate` if its id was processed before."""

    duplicate: bool
    created: tuple[dict[str, Any], ...]  # action records created by admitted firings
    queue: tuple[dict[str, Any], ...]  # records to append to the outbox now
    timers: tuple[tuple[int, str], ...]  # (due ms, member) to schedule
    tags_added: tuple[str, ...]
    tags_removed: tuple[str, ...]
    fired: tuple[str, ...]  # rule keys admitted
    late: tuple[str, ...]  # rule keys for which the event was too late


def decode_step_reply(raw: bytes) -> StepResult:
    """Decode one per-event reply of the step script."""
    data = msgpack.unpackb(raw, raw=False)
    return StepResult(
        duplicate=bool(data.get("dup")),
        created=tuple(json.loads(rec) for rec in _as_list(data.get("acts"))),
        queue=tuple(json.loads(rec) for rec in _as_list(data.get("queue")) if rec),
        timers=tuple((int(due), member) for due, member in _as_list(data.get("timers"))),
        tags_added=tuple(_as_list(data.get("added"))),
        tags_removed=tuple(_as_list(data.get("removed"))),
        fired=tuple(_as_list(data.get("fired"))),
        late=tuple(_as_list(data.get("late"))),
    )


def _as_list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {} rather than [].
    return list(value) if isinstance(value, list) else []
