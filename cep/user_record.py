"""One user's packed state: profile, tags, dedupe, re-entry, first-seen, pattern state and identity merges,
and its codec.

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
from cep.packing import packb

RECORD_VERSION = 2
# Version 1 stored pattern timestamps as distances below the watermark: smaller, but flipping every list
# in Python on each encode and decode cost more CPU than the bytes were worth (docs/performance.md).
RECORD_VERSION_RELATIVE = 1
NEVER = 0  # an expiry of 0: kept until deleted (profile, tags, `first`, `once` re-entry)
# A record kept only for the last interaction outlives the 48-hour customer-service window.
LAST_SEEN_TTL_MS = 72 * 3_600_000


# A dedupe entry: the event id's 64-bit hash and when it was processed, in seconds.
_SEEN = struct.Struct("<QI")


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
    # Its stored form while unchanged since decoding or the last encode (None: encode afresh). An event
    # touches the few patterns of its type's rules; the others are copied into the record as bytes.
    packed: bytes | None = field(default=None, repr=False, compare=False)

    def pack(self) -> bytes:
        """The stored form, encoded now if it changed."""
        if self.packed is None:
            self.packed = packb([self.watermark, self.expires_ms, self.parts])
        return self.packed


@dataclass(slots=True)
class Instance:
    """One user's live (or goal-watching) instance of a journey version (see `cep.journeys`).

    `node` indexes the version's node ids (FINISHED: the path ended, the goal is still watched);
    `step_ts` is the event time the current node started at, `seq` counts steps taken (it names the
    instance's timer and its actions' idempotency keys); `entry` is the 64-bit hash of the entry
    event's id (`event_id_hash`); `attrs` keeps only the entry event's fields the journey reads;
    `visited` lists node indexes passed; `goal_by` is the goal deadline (0: none left).
    """

    version: int
    node: int
    step_ts: int
    seq: int
    entry: int
    entry_ts: int
    attrs: dict[str, Any]
    visited: list[int]
    goal_by: int = 0
    due: int = 0  # the pending timer's due time (0: none)
    # [split node index, arm index, ...] of the splits passed: conversions are counted per arm (A/B lift).
    arms: list[int] = field(default_factory=list)

    def pack(self) -> list[Any]:
        """The stored form: a plain list, times as offsets from the entry (smaller integers in msgpack:
        a waiting instance is stored for as long as it waits)."""
        base = self.entry_ts
        return [
            self.version,
            self.node,
            base,
            self.step_ts - base,
            self.seq,
            self.entry,
            self.attrs,
            self.visited,
            self.goal_by - base if self.goal_by else 0,
            self.due - base if self.due else 0,
            self.arms,
        ]

    @classmethod
    def unpack(cls, stored: list[Any]) -> Instance:
        """Inverse of `pack`."""
        version, node, base, step, seq, entry, attrs, visited, goal, due, arms = stored
        return cls(
            version,
            node,
            base + step,
            seq,
            entry,
            base,
            attrs,
            visited,
            base + goal if goal else 0,
            base + due if due else 0,
            arms,
        )


FINISHED = -1
# A finished instance watches its goal this long past the deadline (an on-time goal event may be late).
GOAL_MARGIN_MS = 60_000


@dataclass(slots=True)
class JourneyMarks:
    """One journey's marks for one user: per instance key, how often and when last they entered, and
    until when that must be remembered (for re-entry); and the instances by key."""

    # instance key -> [entries, last entry ts, expires ms (NEVER: kept, for `once` and `max`)]
    entered: dict[str, list[int]] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)


@dataclass(slots=True)
class UserState:
    """Everything the evaluator knows about one user."""

    profile: dict[str, Any] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    # Event id hash -> when processed (wall clock, whole seconds), in processing order: the first entry is
    # the oldest and the last the newest (a clock stepping back only keeps an id a little longer).
    seen: dict[int, int] = field(default_factory=dict)
    fired: dict[str, list[int]] = field(default_factory=dict)  # rule key -> [last trigger ts, expires ms]
    first: dict[str, int] = field(default_factory=dict)  # rule key -> ts of the first matching event
    patterns: dict[str, PatternState] = field(default_factory=dict)  # state id -> pattern state
    journeys: dict[str, JourneyMarks] = field(default_factory=dict)  # journey short key -> marks
    # segment key -> [mark, pending window timer's due (0: none), changes]: the mark > 0 is when the user
    # entered, < 0 when they left (-(ts + 1)), kept for the dedupe horizon; changes names the next one
    # (cep.segments)
    segments: dict[str, list[int]] = field(default_factory=dict)
    # The newest `ts` of the user's own (producer) events: WeChat customer-service messages may only go
    # out within 48 h of it (connectors.delivery). 0: none seen.
    last_seen: int = 0
    # An identity merge (`cep.merges`): the user this one was merged into (a tombstone: its events are forwarded
    # there) and when, or "" for a live user; and the users merged into this one, newest last (their traces
    # are shown with its own).
    merged_into: str = ""
    merged_at: int = 0
    merged_from: list[str] = field(default_factory=list)
    # `seen` as stored (12 bytes per id, in order), kept in step by `remember` so that encoding does not
    # repack every id of the 7-day horizon on each commit; None: rebuild from `seen`.
    seen_packed: bytes | None = field(default=None, repr=False, compare=False)
    # The rule index (`cep.rule_index.RuleIndex`) whose journeys this state's marks were last checked
    # against (instances of deleted journeys are dropped then); not stored.
    journeys_checked: object = field(default=None, repr=False, compare=False)
    segments_checked: object = field(default=None, repr=False, compare=False)  # the same, for segments

    def remember(self, digest: int, now_ms: int) -> None:
        """Record a processed event id (see `seen`)."""
        at = now_ms // 1000
        self.seen[digest] = at
        if self.seen_packed is not None:
            self.seen_packed += _SEEN.pack(digest, at)

    def is_empty(self) -> bool:
        """Nothing worth storing: the record can be deleted."""
        return not (
            self.profile
            or self.tags
            or self.seen
            or self.fired
            or self.first
            or self.patterns
            or self.last_seen
            or self.journeys
            or self.segments
            or self.merged_into
            or self.merged_from
        )

    def prune(self, now_ms: int, dedupe_horizon_ms: int) -> int:
        """Drop what has expired (old dedupe ids, lapsed re-entry marks, pattern states past their TTL or
        empty); returns how long the stored record must live from now (0: for ever), given what it
        holds then.

        One pass over each part: it runs for every user of every batch.
        """
        # A tombstone is kept for as long as events may still name the merged user.
        forever = bool(self.profile or self.tags or self.first or self.merged_into)
        latest = 0
        if self.seen:
            oldest = (now_ms - dedupe_horizon_ms) // 1000
            if next(iter(self.seen.values())) < oldest:
                self.seen = {h: at for h, at in self.seen.items() if at >= oldest}
                self.seen_packed = None
            if self.seen:
                latest = next(reversed(self.seen.values())) * 1000 + dedupe_horizon_ms
        if self.fired:
            lapsed = []
            for rk, (_, expires) in self.fired.items():
                if expires == NEVER:
                    forever = True
                elif expires < now_ms:
                    lapsed.append(rk)
                elif expires > latest:
                    latest = expires
            for rk in lapsed:
                del self.fired[rk]
        if self.patterns:
            gone = []
            for sid, state in self.patterns.items():
                if state.expires_ms < now_ms or not state.parts:
                    gone.append(sid)
                elif state.expires_ms > latest:
                    latest = state.expires_ms
            for sid in gone:
                del self.patterns[sid]
        if self.journeys:
            forever = self._prune_journeys(now_ms) or forever
        if self.segments:
            # A member, or a pending window timer, keeps the record; a "left at" mark only for the dedupe
            # horizon (it names the user's next change of that segment: cep.segments).
            horizon_start = now_ms - dedupe_horizon_ms
            lapsed = []
            for short, (mark, due, _) in self.segments.items():
                if mark > 0 or due:
                    forever = True
                elif mark < 0:
                    left_at = -mark - 1
                    if left_at < horizon_start:
                        lapsed.append(short)
                    else:
                        latest = max(latest, left_at + dedupe_horizon_ms)
            for short in lapsed:
                del self.segments[short]
        if self.last_seen:
            latest = max(latest, now_ms + LAST_SEEN_TTL_MS)
        return 0 if forever else max(latest - now_ms, 1)

    def _prune_journeys(self, now_ms: int) -> bool:
        """Drop finished instances whose goal window closed and marks nothing needs; True while any stay.

        A waiting instance keeps the record for ever: its timer (of any length) needs it when it fires.
        """
        gone = []
        for short, marks in self.journeys.items():
            if marks.instances:
                ended = [
                    key
                    for key, inst in marks.instances.items()
                    if inst.node == FINISHED and inst.goal_by + GOAL_MARGIN_MS < now_ms
                ]
                for key in ended:
                    del marks.instances[key]
            lapsed = [
                key
                for key, (_, _, expires) in marks.entered.items()
                if expires != NEVER and expires < now_ms and key not in marks.instances
            ]
            for key in lapsed:
                del marks.entered[key]
            if not marks.instances and not marks.entered:
                gone.append(short)
        for short in gone:
            del self.journeys[short]
        return bool(self.journeys)


def encode_user_state(state: UserState) -> bytes:
    """The stored form: a versioned msgpack map with empty parts left out.

    Each pattern is its own msgpack string, re-encoded only when evaluation changed it
    (`PatternState.packed`); its lists go to msgpack as they are (packed in C, no per-list Python work).
    Dedupe entries are packed 12-byte pairs, kept packed between commits (`UserState.seen_packed`).
    """
    record: dict[str, Any] = {"v": RECORD_VERSION}
    if state.profile:
        record["p"] = state.profile
    if state.tags:
        record["g"] = sorted(state.tags)
    if state.seen:
        if state.seen_packed is None:
            state.seen_packed = b"".join(_SEEN.pack(digest, at) for digest, at in state.seen.items())
        record["s"] = state.seen_packed
    if state.fired:
        record["f"] = state.fired
    if state.first:
        record["1"] = state.first
    if state.last_seen:
        record["l"] = state.last_seen
    if state.patterns:
        record["x"] = {sid: ps.pack() for sid, ps in state.patterns.items()}
    if state.segments:
        record["m"] = state.segments
    if state.merged_into:
        record["t"] = [state.merged_into, state.merged_at]
    if state.merged_from:
        record["mf"] = state.merged_from
    if state.journeys:
        record["j"] = {
            short: [marks.entered, {key: inst.pack() for key, inst in marks.instances.items()}]
            for short, marks in state.journeys.items()
        }
    return packb(record)


def decode_user_state(raw: bytes | None) -> UserState:
    """Inverse of encode_user_state; an absent record is an empty state. Raises DecodeError."""
    if raw is None:
        return UserState()
    try:
        record = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        version = record.get("v")
        if version not in (RECORD_VERSION, RECORD_VERSION_RELATIVE):
            raise DecodeError(f"unknown user record version {version!r}")
        relative = version == RECORD_VERSION_RELATIVE
        seen_packed = bytes(record.get("s") or b"")
        merged_into, merged_at = record.get("t") or ("", 0)
        return UserState(
            merged_into=merged_into,
            merged_at=int(merged_at),
            merged_from=list(record.get("mf") or ()),
            profile=dict(record.get("p") or {}),
            tags=set(record.get("g") or ()),
            seen=dict(_SEEN.iter_unpack(seen_packed)),
            seen_packed=seen_packed,
            fired={rk: list(value) for rk, value in (record.get("f") or {}).items()},
            first=dict(record.get("1") or {}),
            last_seen=int(record.get("l") or 0),
            patterns={sid: _decode_pattern(value, relative) for sid, value in (record.get("x") or {}).items()},
            segments={short: list(mark) for short, mark in (record.get("m") or {}).items()},
            journeys={
                short: JourneyMarks(
                    {key: list(marks) for key, marks in entered.items()},
                    {key: Instance.unpack(inst) for key, inst in instances.items()},
                )
                for short, (entered, instances) in (record.get("j") or {}).items()
            },
        )
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"unreadable user record: {exc}") from exc


def _decode_pattern(value: Any, relative: bool) -> PatternState:
    if relative:
        watermark, expires_ms, parts = value
        return PatternState(watermark, expires_ms, _flip_parts(watermark, parts))
    watermark, expires_ms, parts = msgpack.unpackb(value, raw=False, strict_map_key=False)
    return PatternState(watermark, expires_ms, parts, packed=bytes(value))


def _flip_parts(watermark: int, parts: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
    """Version-1 pattern lists (distances below the watermark) as timestamps."""
    return {role: {key: _flip(watermark, items) for key, items in lists.items()} for role, lists in parts.items()}


def _flip(watermark: int, items: list[Any]) -> list[Any]:
    """ts <-> watermark - ts (its own inverse) over a list of timestamps or of [ts, ...] entries."""
    if items and isinstance(items[0], list):
        return [[watermark - item[0], *item[1:]] for item in items]
    return [watermark - stamp for stamp in items]
