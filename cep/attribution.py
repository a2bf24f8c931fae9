"""Measurement in the engine: the funnel counters of rulesets and journeys, and goal attribution.

Pure functions of (user state, event, now) called by the evaluator and the journey runner, so live
processing and dry-runs agree; the counters go to `Effects.measures` and the partition owner's
commit adds them in the same atomic call as the users' state, so a batch processed again after a crash
neither loses nor counts twice (docs/measurement.md).

**Counters.** One statistics hash per scope and partition (`cep.journey_stats` keys): scope `m:rs:<ruleset>`
with unit = rule id, or `m:j:<journey>` (plans: `m:j:plan:<plan>`) with unit = node id, `""` for the
journey as a whole, and `arm:<split node>:<arm>` per split arm. Fields are `<day>|<unit>|<what>`, the day
being the UTC day number (ms // 86,400,000) of the event counted: `triggered` (firings), `entered`,
`acted` (actions created, tags excluded), `delivered`, `skipped:<reason>`, `dead:<reason>` (delivery
outcomes, from the `action_*` events `connectors.delivery_ledger` appends), `clicked` (first click of
each tracked link), `converted`, `converted:reach`, `converted:click` and `revenue`, `revenue:reach`,
`revenue:click` (in hundredths of the goal's `value` field).

**Attribution.** A *touch* is a rule's firing (when the rule has a `goal`) or a journey instance's entry
(when the journey has one). Touches live in the user's record (a pattern state under `STATE_ID`):
`[touched ts, deadline, trigger hash, delivered ts, clicked ts, converted bits]`, one list per rule or
journey, dropped after their deadline. A goal event at `t` converts, for each model, the newest touch
with `touched <= t <= deadline` not yet converted in that model: `acted` (any touch), `reach` (one of its
actions was delivered at or before `t`), `click` (one of its links was clicked at or before `t`). Each
touch converts at most once per model; a goal event that is also a rule's trigger converts only earlier
touches. Journeys convert once per instance (`cep.journeys`) and count the models here from the touch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from cep.events import ORIGIN_DELIVERY, Event
from cep.firing import CreatedAction
from cep.user_record import PatternState, UserState, event_id_hash

STATE_ID = "~at"
DAY_MS = 86_400_000
REVENUE_SCALE = 100
TOUCH_MARGIN_MS = 60_000
ACTED, REACH, CLICK = 1, 2, 4
MODELS = ((ACTED, ""), (REACH, ":reach"), (CLICK, ":click"))
OUTCOMES = {"action_delivered": "delivered", "action_skipped": "skipped", "action_dead": "dead"}
CLICK_EVENT = "click"
MAX_TOUCHES = 32  # per rule or journey and user: the newest are kept


def ruleset_scope(ruleset_id: str) -> str:
    """The counters of a ruleset (units: its rules)."""
    return f"m:rs:{ruleset_id}"


def journey_scope(journey_id: str) -> str:
    """The counters of a journey or a plan's journey (units: its nodes, `""`, `arm:<split>:<arm>`)."""
    return f"m:j:{journey_id}"


def count(effects: Any, scope: str, ts: int, unit: str, what: str, delta: int = 1) -> None:
    """Add `delta` to a counter on the day of `ts`."""
    counts: dict[tuple[str, int, str, str], int] = effects.measures
    key = (scope, ts // DAY_MS, unit, what)
    counts[key] = counts.get(key, 0) + delta


def count_acted(effects: Any, scope: str, ts: int, unit: str, actions: Iterable[CreatedAction]) -> None:
    """Count the actions a firing or a `do` node created, tag actions left out (they are not messages)."""
    acted = sum(1 for action in actions if action.record["type"] != "tag")
    if acted:
        count(effects, scope, ts, unit, "acted", acted)


def trigger_hash(trigger_id: str) -> int:
    """What a touch keeps of its trigger's id (32 bits: one user's touches of one rule are few)."""
    return event_id_hash(trigger_id) & 0xFFFFFFFF


def _touches(state: UserState, key: str, create: bool) -> list[list[int]] | None:
    pattern = state.patterns.get(STATE_ID)
    if pattern is None:
        if not create:
            return None
        pattern = state.patterns[STATE_ID] = PatternState(0, 0)
    found = pattern.parts.setdefault("t", {}).get(key)
    if found is None and create:
        found = pattern.parts["t"][key] = []
    return found


def touch(state: UserState, key: str, trigger: int, ts: int, within_ms: int, now_ms: int) -> None:
    """Record a touch of rule or journey `key` (its short key) that a goal may convert until `ts + within`."""
    touches = _touches(state, key, create=True)
    assert touches is not None
    deadline = ts + within_ms
    touches[:] = [item for item in touches if item[1] >= ts - TOUCH_MARGIN_MS][-(MAX_TOUCHES - 1) :]
    touches.append([ts, deadline, trigger, 0, 0, 0])
    pattern = state.patterns[STATE_ID]
    pattern.expires_ms = max(pattern.expires_ms, max(now_ms, deadline) + within_ms + TOUCH_MARGIN_MS)
    pattern.packed = None


def _mark(state: UserState, key: str, trigger: int, slot: int, ts: int) -> None:
    touches = _touches(state, key, create=False)
    for item in touches or ():
        if item[2] == trigger and (item[slot] == 0 or ts < item[slot]):
            item[slot] = ts
            state.patterns[STATE_ID].packed = None


def convert(state: UserState, key: str, ts: int) -> list[int]:
    """The models in which a goal event at `ts` converts one of `key`'s touches (each touch once per model);
    for each, the newest eligible touch is marked. Returns the converted models' bits."""
    touches = _touches(state, key, create=False)
    if not touches:
        return []
    converted = []
    for model, _ in MODELS:
        for item in reversed(touches):
            if not item[0] <= ts <= item[1] or item[5] & model:
                continue
            if (model == REACH and not 0 < item[3] <= ts) or (model == CLICK and not 0 < item[4] <= ts):
                continue
            item[5] |= model
            converted.append(model)
            state.patterns[STATE_ID].packed = None
            break
    return converted


def touch_flags(state: UserState, key: str, trigger: int, ts: int) -> int:
    """For a journey instance's conversion at `ts`: the models its touch qualifies for (delivered / clicked
    before `ts`), as bits (ACTED always)."""
    bits = ACTED
    for item in _touches(state, key, create=False) or ():
        if item[2] == trigger:
            bits |= REACH if 0 < item[3] <= ts else 0
            bits |= CLICK if 0 < item[4] <= ts else 0
    return bits


def goal_value(event: Event, field: str | None) -> int:
    """The goal's revenue in hundredths (0 without a value field or a number there)."""
    if field is None:
        return 0
    raw = event.attrs.get(field)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return 0
    return round(raw * REVENUE_SCALE)


def count_conversion(effects: Any, scope: str, ts: int, units: list[str], bits: list[int], revenue: int) -> None:
    """Count conversions (and revenue) in each model of `bits`, for every unit."""
    for model, suffix in MODELS:
        if model in bits:
            for unit in units:
                count(effects, scope, ts, unit, "converted" + suffix)
                if revenue:
                    count(effects, scope, ts, unit, "revenue" + suffix, revenue)


def feedback(event: Event) -> tuple[str, str] | None:
    """(what, reason) when the event reports on one of our actions: a delivery outcome or a click."""
    if event.type == CLICK_EVENT:
        return ("clicked", "") if event.attrs.get("action_id") else None
    outcome = OUTCOMES.get(event.type)
    if outcome is None or event.origin != ORIGIN_DELIVERY:
        return None
    reason = event.attrs.get("reason")
    return (outcome, str(reason) if reason else "")


def on_feedback(state: UserState, event: Event, what: str, touch_key: str | None, trigger: int) -> None:
    """A delivery or a click marks the touch its action belongs to (reach and click models)."""
    if touch_key is None:
        return
    if what == "delivered":
        _mark(state, touch_key, trigger, 3, event.ts)
    elif what == "clicked":
        _mark(state, touch_key, trigger, 4, event.ts)
