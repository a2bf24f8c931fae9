"""Behaviour history: the events of each behaviour *shape* (a matcher, and a summed field) that journeys'
branches and segments read, kept per user in the user's pattern states (`cep.user_record`).

Recorded by the evaluator for every event of a shape's type whose `where` holds, before rules, journeys
and segments see the event, so a condition evaluated on that event counts it. A backfilled event (a
segment backfill's, from a file or the event archive) is not kept again when the history already holds an
event of that time (and summed value): it is taken to be that event, recorded live since the shape had a
reader, so a backfill whose window overlaps live history does not count those events twice.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from typing import Any

from cep.events import ORIGIN_BACKFILL, Event
from cep.user_record import PatternState, UserState
from rules.journey_compiled import HistoryShape, is_number
from rules.predicates import NO_ATTRS, NO_TAGS, Check

HISTORY_MARGIN_MS = 60_000  # behaviour history outlives its window by this much wall time
_NO_HISTORY: list[Any] = []


def record(state: UserState, roles: list[tuple[HistoryShape, Check]], event: Event, now_ms: int) -> None:
    """Keep the event in every shape of its type whose matcher takes it."""
    for shape, where in roles:
        if where(event.attrs, NO_ATTRS, NO_TAGS):
            remember(state, shape, event, now_ms)


def history_of(state: UserState) -> Callable[[str], list[Any]]:
    """A reader of the user's kept events by shape id, oldest first (what compiled conditions call)."""

    def history(shape_id: str) -> list[Any]:
        pattern = state.patterns.get(shape_id)
        return pattern.parts.get("h", {}).get("_", _NO_HISTORY) if pattern is not None else _NO_HISTORY

    return history


def remember(state: UserState, shape: HistoryShape, event: Event, now_ms: int) -> None:
    """Keep one event of a shape (its timestamp, and the summed value) within the shape's bounds."""
    raw = None
    if shape.sum_field is not None:
        raw = event.attrs.get(shape.sum_field)
        if not is_number(raw):
            return
    pattern = state.patterns.get(shape.id)
    if pattern is not None and event.origin == ORIGIN_BACKFILL and _holds(pattern, shape, event.ts, raw):
        return
    if pattern is None:
        pattern = state.patterns[shape.id] = PatternState(event.ts, 0)
    elif event.ts > pattern.watermark:
        pattern.watermark = event.ts
    # Wall-clock expiry, but never before the newest event's window has passed (an event may be stamped
    # ahead of the server clock, and a segment's window timer fires at that event's ts + window).
    pattern.expires_ms = max(now_ms, pattern.watermark) + shape.window_ms + HISTORY_MARGIN_MS
    pattern.packed = None
    items = pattern.parts.setdefault("h", {}).setdefault("_", [])
    # A branch reads [at - window, at] with at >= newest - horizon: older events can never count.
    settled_at = pattern.watermark - shape.horizon_ms
    if shape.sum_field is None:
        insort(items, event.ts)
        del items[: bisect_left(items, settled_at - shape.window_ms)]
        settled = bisect_right(items, settled_at)
    else:
        insort(items, [event.ts, raw], key=_first)
        del items[: bisect_left(items, settled_at - shape.window_ms, key=_first)]
        settled = bisect_right(items, settled_at, key=_first)
    # Of the events at or before `settled_at`, any window that reads them ends after them: the newest
    # `keep` decide every comparison of a count (a sum keeps them all, up to MAX_HISTORY).
    if settled > shape.keep:
        del items[: settled - shape.keep]


def _holds(pattern: PatternState, shape: HistoryShape, ts: int, raw: Any) -> bool:
    """Whether the kept events hold one at `ts` (with the summed value `raw`, for a sum)."""
    items = pattern.parts.get("h", {}).get("_", _NO_HISTORY)
    if shape.sum_field is None:
        at = bisect_left(items, ts)
        return at < len(items) and items[at] == ts
    at = bisect_left(items, ts, key=_first)
    while at < len(items) and items[at][0] == ts:
        if items[at][1] == raw:
            return True
        at += 1
    return False


def _first(item: list[Any]) -> Any:
    return item[0]
