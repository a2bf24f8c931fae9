"""Live segment membership: re-evaluated on the events, tag changes and profile patches that can change it,
and at the exact event time a behaviour window next changes (a timer), with no event needed.

Pure functions of (user state, event / patch / timer, now), called by the evaluator, so live processing,
dry-runs and backtests agree. A user's memberships live in the record (`UserState.segments`: segment key
-> [mark, pending timer due (0: none), changes], the mark > 0 the time the user entered, < 0 when they
left (`left_mark`), 0 never). A change emits `segment_entered` /
`segment_exited` (attrs `{"segment": id}`), evaluated at once like tag events, so rules and journeys
(`"entry": {"segment": id}`) act on it; the commit adds the user to (or removes them from) the segment's
member SET and size counter (`cep.segment_members`) in the same atomic call.

Time is event time: membership is evaluated at the event's `ts` (a patch: the server clock), and the
timer is due when the earliest kept behaviour event enters or leaves a window of the segment's
conditions (`ts + within + 1`: a window is `[t - within, t]`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cep.events import ORIGIN_ACTION, Event
from cep.firing import TIMER_SEPARATOR
from cep.history import history_of
from cep.rule_index import RuleIndex, SegmentEntry
from cep.user_record import UserState
from rules.predicates import NO_ATTRS
from rules.segments import CompiledSegment

SEGMENT_TIMER = "g"
NEVER_MEMBER = 0


def left_mark(at: int) -> int:
    """The mark of a user who left at `at`: negative (and never 0, which means "never a member")."""
    return -(at + 1)


ENTERED = "segment_entered"
EXITED = "segment_exited"


def segment_timer(user_id: str, segment_id: str) -> str:
    """The timer-set member of a user's next window change for a segment (one per user and segment: a new
    due time replaces the old one, as ZADD does)."""
    return TIMER_SEPARATOR.join((SEGMENT_TIMER, user_id, segment_id))


@dataclass(slots=True)
class SegmentChange:
    """A user joined (`added`) or left a segment."""

    segment_id: str
    user_id: str
    added: bool


class Segments:
    """Keeps users' segment memberships for one RuleIndex; holds no user state itself.

    `effects` is the evaluator's `Effects`: changes go to `segment_changes`, timers to `segment_timers`
    (member -> due, 0: none; the last write of a batch wins), trace entries to `trace`.
    """

    def __init__(self, index: RuleIndex) -> None:
        self.index = index

    def on_event(self, state: UserState, event: Event, now_ms: int, effects: Any) -> list[Event]:
        """Re-evaluate the segments the event's type can change; returns `segment_*` events."""
        if state.segments and state.segments_checked is not self.index:
            self._drop_retired(state)
        entries = self.index.segments_by_type.get(event.type)
        if not entries:
            return []
        return self._evaluate(state, event.user_id, entries, event.ts, event.event_id, effects)

    def on_patch(self, state: UserState, user_id: str, cause_id: str, now_ms: int, effects: Any) -> list[Event]:
        """A profile or tag patch: re-evaluate the segments that read the profile or tags, at `now_ms`."""
        if state.segments and state.segments_checked is not self.index:
            self._drop_retired(state)
        entries = self.index.segments_on_patch
        return self._evaluate(state, user_id, entries, now_ms, cause_id, effects) if entries else []

    def on_merged(self, state: UserState, user_id: str, cause_id: str, now_ms: int, effects: Any) -> list[Event]:
        """Another user's history was merged into this one (an identity merge): every active segment, at `now_ms`."""
        if state.segments and state.segments_checked is not self.index:
            self._drop_retired(state)
        entries = list(self.index.segments.values())
        return self._evaluate(state, user_id, entries, now_ms, cause_id, effects) if entries else []

    def on_backfill(self, state: UserState, event: Event, now_ms: int, effects: Any) -> None:
        """A past event just added to the history: membership as of now, silently — the changes it would have
        made back then are not replayed, and no `segment_*` event tells rules or journeys about it."""
        if state.segments and state.segments_checked is not self.index:
            self._drop_retired(state)
        entries = self.index.segments_by_type.get(event.type)
        if entries:
            self._evaluate(state, event.user_id, entries, max(now_ms, event.ts), f"backfill:{event.event_id}", effects)

    def on_timer(self, state: UserState, member: str, due_ms: int, now_ms: int, effects: Any) -> list[Event]:
        """A window boundary: re-evaluate the segment at the due time (a superseded due time does nothing)."""
        _, user_id, segment_id = member.split(TIMER_SEPARATOR)
        entry = self.index.segments.get(segment_id)
        mark = state.segments.get(entry.short_key) if entry is not None else None
        if entry is None or mark is None or mark[1] != due_ms:
            return []
        mark[1] = 0  # this timer is spent; _evaluate sets the next one
        return self._evaluate(state, user_id, [entry], due_ms, f"due:{member}:{due_ms}", effects)

    def _evaluate(
        self, state: UserState, user_id: str, entries: list[SegmentEntry], at: int, cause_id: str, effects: Any
    ) -> list[Event]:
        history = history_of(state)
        caused: list[Event] = []
        for entry in entries:
            compiled = entry.compiled
            member = compiled.check(NO_ATTRS, state.profile, state.tags, history, at)
            mark = state.segments.get(entry.short_key)
            since, due, changes = (mark[0], mark[1], mark[2]) if mark is not None else (NEVER_MEMBER, 0, 0)
            if member != (since > 0):
                # The count of changes names the change: one cause (a timer re-set to the same due time
                # after an out-of-order event) may change membership twice, and both events must pass
                # dedupe. It is committed state, so a batch processed again emits the same ids; it restarts
                # only once the mark has lapsed, after the dedupe horizon has forgotten the old ids.
                changes += 1
                event_id_tail = f"{cause_id}:{changes}"
                since = at if member else left_mark(at)
                effects.segment_changes.append(SegmentChange(entry.id, user_id, member))
                kind = ENTERED if member else EXITED
                event_id = f"{kind}:{entry.id}:{event_id_tail}"
                caused.append(Event(event_id, user_id, kind, at, {"segment": entry.id}, at, ORIGIN_ACTION))
                if effects.trace is not None:
                    effects.trace.append(
                        (user_id, {"kind": "segment", "ts": at, "segment": entry.id, "what": kind, "cause": cause_id})
                    )
            next_due = next_change(compiled, history, at)
            if next_due != due:
                effects.segment_timers[segment_timer(user_id, entry.id)] = next_due
                due = next_due
            if since != NEVER_MEMBER or due:
                state.segments[entry.short_key] = [since, due, changes]
        return caused

    def _drop_retired(self, state: UserState) -> None:
        """Memberships of deleted segments: forgotten (their SETs and sizes went with the segment)."""
        state.segments_checked = self.index
        for short in [short for short in state.segments if short not in self.index.segment_by_short]:
            del state.segments[short]


def next_change(compiled: CompiledSegment, history: Callable[[str], list[Any]], at: int) -> int:
    """The earliest event time after `at` at which a kept behaviour event enters or leaves one of the
    segment's windows (0: none: with no new event, membership can no longer change)."""
    found = 0
    for window in compiled.windows:
        for item in history(window.shape):
            ts = item if isinstance(item, int) else item[0]
            for boundary in (ts, ts + window.within_ms + 1):
                if boundary > at and (found == 0 or boundary < found):
                    found = boundary
    return found
