"""One user's packed state: profile, tags, dedupe, re-entry, first-seen and pattern state, and its codec.

The partition owner keeps these in memory and commits changed ones as one msgpack string per user
(`cep.partition_keys.user_state_key`). Pattern state is kept per pattern *shape* (the rule's state id)
and per correlation value, as plain lists of event timestamps: the evaluator (`cep.evaluator`) is the
only code that reads or writes it, and it prunes it on every touch to what the semantics can still use.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from beacon.errors import DecodeError

RECORD_VERSION = 1
NEVER = 0  # an expiry of 0: kept until deleted (profile, tags, `first`, `once` re-entry)
# A record kept only for the last interaction outlives the 48-hour customer-service window.
LAST_SEEN_TTL_MS = 72 * 3_600_000


def event_id_hash(event_id: str) -> int:
    """64 bits of an event id: what the dedupe set keeps (a collision needs ~2**32 ids of one user)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


@dataclass(slots=True)
class PatternState:
    """One rule shape's state for one user: watermark, wall-clock expiry, and lists per role and correlation.

    `parts` maps a role letter to lists by correlation value: `a`/`b` (sequence A and B timestamps;
    absence B timestamps), `p` (absence pending A: [ts, event id, attrs]) and `t` (threshold members:
    ts for counts, [ts, value] for sums). Every list is sorted by ts.
    """

    watermark: int
    expires_ms: int
    parts: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    # The oldest `a` / `b` timestamp over all correlations when known (None: unknown, not stored): lets
    # the evaluator skip pruning without visiting every correlation's list.
    floor_a: int | None = None
    floor_b: int | None = None


@dataclass(slots=True)
class UserState:
    """Everything the evaluator knows about one user."""

    profile: dict[str, Any] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    seen: dict[int, int] = field(default_factory=dict)  # event id hash -> when processed (wall ms)
    fired: dict[str, list[int]] = field(default_factory=dict)  # rule key -> [last trigger ts, expires ms]
    first: dict[str, int] = field(default_factory=dict)  # rule key -> ts of the first matching event
    patterns: dict[str, PatternState] = field(default_factory=dict)  # state id -> pattern state
    # The newest `ts` of the user's own (producer) events: WeChat customer-service messages may only go
    # out within 48 h of it (connectors.delivery). 0: none seen.
    last_seen: int = 0

    def is_empty(self) -> bool:
        """Nothing worth storing: the record can be deleted."""
        return not (
            self.profile or self.tags or self.seen or self.fired or self.first or self.patterns or self.last_seen
        )

    def prune(self, now_ms: int, dedupe_horizon_ms: int) -> None:
        """Drop what has expired: old dedupe ids, lapsed re-entry marks, pattern states past their TTL."""
        oldest = now_ms - dedupe_horizon_ms
        if self.seen and min(self.seen.values()) < oldest:
            self.seen = {h: at for h, at in self.seen.items() if at >= oldest}
        for rk in [rk for rk, (_, expires) in self.fired.items() if expires != NEVER and expires < now_ms]:
            del self.fired[rk]
        for sid in [sid for sid, state in self.patterns.items() if state.expires_ms < now_ms or not state.parts]:
            del self.patterns[sid]

    def ttl_ms(self, now_ms: int, dedupe_horizon_ms: int) -> int:
        """How long the stored record must live (0: for ever), given what it holds now."""
        if self.profile or self.tags or self.first or any(exp == NEVER for _, exp in self.fired.values()):
            return 0
        latest = max(self.seen.values(), default=0) + dedupe_horizon_ms
        latest = max(latest, *(exp for _, exp in self.fired.values()), 0)
        latest = max(latest, *(state.expires_ms for state in self.patterns.values()), 0)
        if self.last_seen:
            latest = max(latest, now_ms + LAST_SEEN_TTL_MS)
        return max(latest - now_ms, 1)


# A dedupe entry: the event id's 64-bit hash and when it was processed, in seconds.
_SEEN = struct.Struct("<QI")


def encode_user_state(state: UserState) -> bytes:
    """The stored form: a versioned msgpack map with empty parts left out.

    Pattern timestamps are stored as distances below the pattern's watermark (small integers take 1-5
    bytes in msgpack where an epoch-ms timestamp takes 9) and dedupe entries as packed 12-byte pairs.
    """
    record: dict[str, Any] = {"v": RECORD_VERSION}
    if state.profile:
        record["p"] = state.profile
    if state.tags:
        record["g"] = sorted(state.tags)
    if state.seen:
        record["s"] = b"".join(_SEEN.pack(digest, at // 1000) for digest, at in state.seen.items())
    if state.fired:
        record["f"] = state.fired
    if state.first:
        record["1"] = state.first
    if state.last_seen:
        record["l"] = state.last_seen
    if state.patterns:
        record["x"] = {
            sid: [ps.watermark, ps.expires_ms, _flip_parts(ps.watermark, ps.parts)]
            for sid, ps in state.patterns.items()
        }
    packed: bytes = msgpack.packb(record, use_bin_type=True)
    return packed


def decode_user_state(raw: bytes | None) -> UserState:
    """Inverse of encode_user_state; an absent record is an empty state. Raises DecodeError."""
    if raw is None:
        return UserState()
    try:
        record = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        if record.get("v") != RECORD_VERSION:
            raise DecodeError(f"unknown user record version {record.get('v')!r}")
        return UserState(
            profile=dict(record.get("p") or {}),
            tags=set(record.get("g") or ()),
            seen={digest: at * 1000 for digest, at in _SEEN.iter_unpack(record.get("s") or b"")},
            fired={rk: list(value) for rk, value in (record.get("f") or {}).items()},
            first=dict(record.get("1") or {}),
            last_seen=int(record.get("l") or 0),
            patterns={
                sid: PatternState(wm, exp, _flip_parts(wm, parts))
                for sid, (wm, exp, parts) in (record.get("x") or {}).items()
            },
        )
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"unreadable user record: {exc}") from exc


def _flip_parts(watermark: int, parts: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
    return {role: {key: _flip(watermark, items) for key, items in lists.items()} for role, lists in parts.items()}


def _flip(watermark: int, items: list[Any]) -> list[Any]:
    """ts <-> watermark - ts (its own inverse) over a list of timestamps or of [ts, ...] entries."""
    if items and isinstance(items[0], list):
        return [[watermark - item[0], *item[1:]] for item in items]
    return [watermark - stamp for stamp in items]
