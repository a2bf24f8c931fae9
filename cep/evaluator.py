"""The one evaluator: a user's state, an event or a due timer, and `now` in; state changes and effects out.

Pure Python, no I/O: the partition owner (live), dry-runs and backtests all call it, so they agree by
construction. It implements docs/semantics.md — matching, correlation, lateness and watermarks,
sequence / absence / threshold / first, `if`, re-entry and actions — over `cep.user_record` state,
and runs events caused by actions (`tag_added` / `tag_removed`) at once, depth first, so the next
event of the same batch sees the tag and the chained rule sees the cause's time (never "late").
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field
from typing import Any

from cep import attribution, history
from cep.correlation import correlation_key
from cep.events import ORIGIN_BACKFILL, ORIGIN_PRODUCER, ORIGIN_TIMER, Event, ProfilePatch
from cep.firing import ACTION_TIMER, TIMER_SEPARATOR, CreatedAction, build_actions, schedule_and_tag
from cep.item_index import ItemMark, item_value
from cep.journeys import JOURNEY_TIMER, JourneyFiring, Journeys
from cep.merge_items import Handoff
from cep.rule_index import RuleEntry, RuleIndex, rule_key, short_rule_key
from cep.segments import SEGMENT_TIMER, SegmentChange, Segments
from cep.user_record import NEVER, PatternState, UserState, event_id_hash
from rules.model import Absence, First, Sequence, Single, Threshold
from rules.predicates import NO_ATTRS, NO_TAGS, Check

# State outlives its window by this much wall time, so a slow consumer does not lose it to expiry.
TTL_MARGIN_MS = 60_000
# Events caused by actions caused by events ...: a chain stops here (two rules flipping tags would loop).
MAX_HOPS = 8
ABSENCE_TIMER = "a"


@dataclass(slots=True)  # not frozen, like Event: built per firing, and treated as immutable
class Firing:
    """An admitted firing: which rule, on which trigger, and the actions it created."""

    entry: RuleEntry
    user_id: str
    trigger: Event
    actions: tuple[CreatedAction, ...]


@dataclass(slots=True)
class Effects:
    """What evaluation produced beyond user state: the commit writes it, metrics and dry-runs read it."""

    firings: list[Firing] = field(default_factory=list)
    timers_added: list[tuple[int, str]] = field(default_factory=list)  # (due ms, member)
    timers_removed: list[str] = field(default_factory=list)  # members consumed or cancelled
    releases: list[tuple[str, str, bool]] = field(default_factory=list)  # (user, action id, cancel)
    late: list[tuple[RuleEntry, Event]] = field(default_factory=list)
    duplicates: int = 0
    hop_limited: int = 0
    chained: list[Event] = field(default_factory=list)  # events emitted by actions and evaluated
    journey_firings: list[JourneyFiring] = field(default_factory=list)
    # (journey, version, node, what) -> delta of that statistic (`cep.journey_stats`)
    journey_counts: dict[tuple[str, int, str, str], int] = field(default_factory=dict)
    # (scope, day, unit, what) -> delta of a measurement counter (`cep.attribution`)
    measures: dict[tuple[str, int, str, str], int] = field(default_factory=dict)
    segment_changes: list[SegmentChange] = field(default_factory=list)
    segment_timers: dict[str, int] = field(default_factory=dict)  # member -> due (0: remove); last write wins
    item_marks: list[ItemMark] = field(default_factory=list)  # indexed events on items (cep.item_index)
    # Entries for other users' partitions (identity merges and what follows a merged user: cep.merges)
    handoffs: list[Handoff] = field(default_factory=list)
    identities: dict[str, int] = field(default_factory=dict)  # merge steps and forwards, for metrics
    # origin -> events handed on from a merged user: counted as processed where they are evaluated, not here
    forwarded_events: dict[str, int] = field(default_factory=dict)
    # (user, entry) for the per-user trace (`GET /v1/users/{id}/trace`); None: not traced (backtests).
    trace: list[tuple[str, dict[str, Any]]] | None = None
    # Also trace, per event, which rules' matchers took it and which refused it (`where_false`): the
    # fullest answer to "why not?", and most of the trace's cost (an entry for nearly every event).
    trace_matches: bool = False
    # Every event evaluated for the first time (stream and chained events, not backfills nor duplicates), for
    # the event archive (`cep.archive_stream`); None: not collected (dry-runs, backtests).
    processed: list[Event] | None = None


def absence_timer(user_id: str, state_id: str, correlation: str, a_event_id: str) -> str:
    """The timer-set member of an absence deadline."""
    return TIMER_SEPARATOR.join((ABSENCE_TIMER, user_id, state_id, correlation, a_event_id))


def timer_user(member: str) -> str:
    """The user a timer member belongs to."""
    return member.split(TIMER_SEPARATOR, 2)[1]


class Evaluator:
    """Evaluates events and timers against one RuleIndex; holds no user state itself."""

    def __init__(self, index: RuleIndex) -> None:
        self.index = index
        self.journeys = Journeys(index)
        self.segments = Segments(index)
        self._correlations: dict[tuple[str, ...], str | None] = {}  # of the event being evaluated

    # -- entry points ------------------------------------------------------------------------------

    def on_event(self, state: UserState, event: Event, now_ms: int, effects: Effects, hops: int = 0) -> None:
        """One event of the user's stream, then every event its actions cause (bounded by MAX_HOPS)."""
        queue = [(event, hops)]
        while queue:
            current, hops = queue.pop(0)
            caused = self._event(state, current, now_ms, effects)
            if not caused:
                continue
            if hops + 1 > MAX_HOPS:
                effects.hop_limited += len(caused)
                continue
            effects.chained.extend(caused)
            # Depth first, in order: the chain completes before the next stream event.
            queue[0:0] = [(item, hops + 1) for item in caused]

    def on_timer(self, state: UserState, member: str, due_ms: int, now_ms: int, effects: Effects) -> None:
        """A due timer of this user: an absence deadline or a delayed action."""
        effects.timers_removed.append(member)
        kind, user_id, *rest = member.split(TIMER_SEPARATOR)
        if kind == ACTION_TIMER:
            action_id, owner = rest
            # The owner is a ruleset id, or "journey:<id>" for a journey's delayed action.
            journey_id = owner.removeprefix("journey:") if owner.startswith("journey:") else None
            gone = owner not in self.index.rulesets if journey_id is None else journey_id not in self.index.journeys
            effects.releases.append((user_id, action_id, gone))
            return
        if kind == JOURNEY_TIMER:
            self._chain(state, self.journeys.on_timer(state, member, due_ms, now_ms, effects), now_ms, effects)
            return
        if kind == SEGMENT_TIMER:
            self._chain(state, self.segments.on_timer(state, member, due_ms, now_ms, effects), now_ms, effects)
            return
        state_id, correlation, a_event_id = rest
        pattern = state.patterns.get(state_id)
        pending = pattern.parts.get("p", {}).get(correlation) if pattern else None
        if pattern is None or not pending:
            return
        found = next((item for item in pending if item[1] == a_event_id), None)
        if found is None:
            return  # cancelled by a B meanwhile
        pending.remove(found)
        pattern.packed = None
        if not pending:
            del pattern.parts["p"][correlation]
            if not pattern.parts["p"]:
                del pattern.parts["p"]
        a_ts, _, a_attrs = found
        entry = self.index.by_state.get(state_id)
        if entry is None or not isinstance(entry.rule.when, Absence):
            return  # the rule is gone or changed shape: the pending A is simply dropped
        when = entry.rule.when
        trigger = Event(
            event_id=f"due:{state_id}:{a_event_id}",
            user_id=user_id,
            type=when.first.event,
            ts=a_ts + when.within_ms,
            attrs=a_attrs,
            received_ms=due_ms,
            origin=ORIGIN_TIMER,
        )
        self._chain(state, self._fire(state, entry, trigger, now_ms, effects), now_ms, effects)

    def _chain(self, state: UserState, caused: list[Event], now_ms: int, effects: Effects) -> None:
        """Events a timer's actions caused, evaluated at once (one hop from the timer)."""
        for event in caused:
            effects.chained.append(event)
            self.on_event(state, event, now_ms, effects, hops=1)

    # -- one event ---------------------------------------------------------------------------------

    def _event(self, state: UserState, event: Event, now_ms: int, effects: Effects) -> list[Event]:
        """Dedupe, match and step every rule the event takes part in; returns the events actions caused."""
        digest = event_id_hash(event.event_id)
        if digest in state.seen:
            effects.duplicates += 1
            return []
        state.remember(digest, now_ms)
        if effects.processed is not None and event.origin != ORIGIN_BACKFILL:
            effects.processed.append(event)
        if event.origin == ORIGIN_PRODUCER and event.ts > state.last_seen:
            state.last_seen = event.ts
        recorded = self.index.history_roles.get(event.type)
        if recorded:
            history.record(state, recorded, event, now_ms)
        if event.origin == ORIGIN_BACKFILL:
            # History only, and the segments it feeds re-judged as of now, silently: no rule, journey or item
            # index acts on the past (docs/audiences.md, Backfill).
            self.segments.on_backfill(state, event, now_ms, effects)
            return []
        indexed = self.index.items_by_type.get(event.type)
        if indexed:
            for attr, window_ms in indexed:
                value = item_value(event.attrs.get(attr))
                if value is not None:
                    effects.item_marks.append(ItemMark(attr, event.type, value, event.user_id, event.ts, window_ms))
        reported = attribution.feedback(event)
        if reported is not None:
            self._feedback(state, event, *reported, effects)
        goals = self.index.goals_by_type.get(event.type)
        if goals:
            self._goals(state, event, goals, effects)
        roles: dict[RuleEntry, set[str]] = {}
        attrs = event.attrs
        candidates = self.index.by_type.get(event.type, ())
        for candidate in candidates:
            if candidate.where(attrs, NO_ATTRS, NO_TAGS):
                found = roles.get(candidate.entry)
                if found is None:
                    roles[candidate.entry] = {candidate.role}
                else:
                    found.add(candidate.role)
        if effects.trace is not None and effects.trace_matches and candidates:
            matched = sorted({entry.key for entry in roles})
            missed = sorted({c.entry.key for c in candidates if c.entry not in roles})
            effects.trace.append(
                (
                    event.user_id,
                    {
                        "kind": "event",
                        "ts": event.ts,
                        "event_id": event.event_id,
                        "type": event.type,
                        "matched": matched,
                        "where_false": missed,
                    },
                )
            )
        caused: list[Event] = []
        self._correlations = {}
        for entry, entry_roles in roles.items():
            if self._step(state, entry, event, entry_roles, now_ms, effects):
                caused.extend(self._fire(state, entry, event, now_ms, effects))
        if self.index.journey_roles or state.journeys:
            caused.extend(self.journeys.on_event(state, event, now_ms, effects))
        if self.index.segments_by_type or state.segments:
            caused.extend(self.segments.on_event(state, event, now_ms, effects))
        return caused

    def on_merged(self, state: UserState, user_id: str, cause_id: str, now_ms: int, effects: Effects) -> None:
        """Another user's state was merged into this one (`cep.merges`): every active segment, at `now_ms`, and
        what their events cause."""
        if self.index.segments:
            self._chain(state, self.segments.on_merged(state, user_id, cause_id, now_ms, effects), now_ms, effects)

    def _feedback(self, state: UserState, event: Event, what: str, reason: str, effects: Effects) -> None:
        """A delivery outcome or a click of one of our actions: counted for its rule or journey node, and
        marked on the touch it belongs to (reach and click attribution)."""
        attrs = event.attrs
        counted = f"{what}:{reason or 'unknown'}" if what in ("skipped", "dead") else what
        journey_id, ruleset_id = attrs.get("journey_id"), attrs.get("ruleset_id")
        if isinstance(journey_id, str):
            attribution.count(
                effects, attribution.journey_scope(journey_id), event.ts, str(attrs.get("node_id") or ""), counted
            )
            journey = self.index.journeys.get(journey_id)
            entry_hash = attrs.get("entry")
            if journey is not None and isinstance(entry_hash, str) and entry_hash.lstrip("-").isdigit():
                attribution.on_feedback(state, event, what, journey.short_key, int(entry_hash) & 0xFFFFFFFF)
        elif isinstance(ruleset_id, str) and isinstance(attrs.get("rule_id"), str):
            rule_id = attrs["rule_id"]
            attribution.count(effects, attribution.ruleset_scope(ruleset_id), event.ts, rule_id, counted)
            trigger = attrs.get("trigger_id")
            if isinstance(trigger, str):
                short = short_rule_key(rule_key(ruleset_id, rule_id))
                attribution.on_feedback(state, event, what, short, attribution.trigger_hash(trigger))

    def _goals(self, state: UserState, event: Event, goals: list[tuple[RuleEntry, Check]], effects: Effects) -> None:
        """A possible goal event: converts the rules' touches (each once per model), before the event can
        fire anything itself."""
        for entry, where in goals:
            goal = entry.rule.goal
            if goal is None or not where(event.attrs, NO_ATTRS, NO_TAGS):
                continue
            converted = attribution.convert(state, entry.short_key, event.ts)
            if converted:
                scope = attribution.ruleset_scope(entry.compiled.ruleset.id)
                revenue = attribution.goal_value(event, goal.value)
                attribution.count_conversion(effects, scope, event.ts, [entry.rule.id], converted, revenue)

    def on_patch(self, state: UserState, patch: ProfilePatch, cause_id: str, now_ms: int, effects: Effects) -> None:
        """A profile change, then the segments it changes and what their events cause."""
        apply_patch(state, patch)
        if self.index.segments_on_patch:
            self._chain(state, self.segments.on_patch(state, patch.user_id, cause_id, now_ms, effects), now_ms, effects)

    def _step(
        self, state: UserState, entry: RuleEntry, event: Event, roles: set[str], now_ms: int, effects: Effects
    ) -> bool:
        """Advance the rule's pattern with the event; True when the pattern completes on it."""
        when = entry.rule.when
        if isinstance(when, Single):
            return True
        if isinstance(when, First):
            if entry.short_key in state.first:
                return False
            state.first[entry.short_key] = event.ts
            return True
        if isinstance(when, Threshold):
            correlation = self._correlation(when.correlate, event)
            if correlation is None:
                return False
            value: float = 1
            if when.sum_field is not None:
                raw = event.attrs.get(when.sum_field)
                if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
                    return False  # nothing to add up
                value = raw
            pattern = self._on_time(state, entry, when.window_ms, event, now_ms, effects)
            return pattern is not None and _threshold(pattern, when, entry.rule.lateness_ms, correlation, event, value)
        correlation = self._correlation(when.correlate, event)
        if correlation is None:
            return False
        pattern = self._on_time(state, entry, when.within_ms, event, now_ms, effects)
        if pattern is None:
            return False
        if isinstance(when, Sequence):
            return _sequence(pattern, when, entry.rule.lateness_ms, correlation, event, roles)
        member = _absence(pattern, when, entry, correlation, event, roles)
        if member is not None:
            cancelled, pending_a = member
            for a_event_id in cancelled:
                effects.timers_removed.append(absence_timer(event.user_id, entry.state_id, correlation, a_event_id))
                _trace(effects, entry, event, "timer_cancelled", cancelled_by=event.event_id, first_event=a_event_id)
            if pending_a:
                due = event.ts + when.within_ms + entry.rule.lateness_ms
                effects.timers_added.append(
                    (due, absence_timer(event.user_id, entry.state_id, correlation, event.event_id))
                )
                _trace(effects, entry, event, "timer_set", due=due)
        return False  # an absence completes on its timer

    def _correlation(self, fields: tuple[str, ...], event: Event) -> str | None:
        # Rules of one ruleset tend to correlate on the same fields (`sku`): once per event and fields.
        if fields in self._correlations:
            return self._correlations[fields]
        found = self._correlations[fields] = correlation_key(fields, event.attrs)
        return found

    def _on_time(
        self, state: UserState, entry: RuleEntry, window_ms: int, event: Event, now_ms: int, effects: Effects
    ) -> PatternState | None:
        """The rule's pattern state if the event is on time for it (moving the watermark), else None."""
        lateness = entry.rule.lateness_ms
        pattern = state.patterns.get(entry.state_id)
        if pattern is None:
            pattern = state.patterns[entry.state_id] = PatternState(event.ts, 0)
        elif event.ts < pattern.watermark - lateness:
            effects.late.append((entry, event))
            _trace(effects, entry, event, "late", watermark=pattern.watermark)
            return None
        elif event.ts > pattern.watermark:
            pattern.watermark = event.ts
        pattern.expires_ms = now_ms + window_ms + lateness + TTL_MARGIN_MS
        pattern.packed = None  # the caller changes it: encode it afresh
        return pattern

    # -- firing ------------------------------------------------------------------------------------

    def _fire(self, state: UserState, entry: RuleEntry, trigger: Event, now_ms: int, effects: Effects) -> list[Event]:
        """A completed pattern: `if`, then re-entry, then the actions; returns the events tag actions cause."""
        if not entry.condition(trigger.attrs, state.profile, state.tags):
            _trace(effects, entry, trigger, "condition_false")
            return []
        rule = entry.rule
        policy = rule.reentry.policy
        last = state.fired.get(entry.short_key)
        if last is not None and (
            policy == "once" or (policy == "once_per" and trigger.ts < last[0] + rule.reentry.period_ms)
        ):
            _trace(effects, entry, trigger, "reentry_blocked", policy=policy, last_fired_ts=last[0])
            return []
        if policy == "once":
            state.fired[entry.short_key] = [trigger.ts, NEVER]
        elif policy == "once_per":
            state.fired[entry.short_key] = [trigger.ts, now_ms + rule.reentry.period_ms + TTL_MARGIN_MS]
        actions = build_actions(
            entry.compiled.ruleset, rule, entry.renderers, trigger, state.profile, now_ms, self.index.links
        )
        effects.firings.append(Firing(entry, trigger.user_id, trigger, actions))
        scope = attribution.ruleset_scope(entry.compiled.ruleset.id)
        attribution.count(effects, scope, trigger.ts, rule.id, "triggered")
        attribution.count_acted(effects, scope, trigger.ts, rule.id, actions)
        if rule.goal is not None:
            trigger_key = attribution.trigger_hash(trigger.event_id)
            attribution.touch(state, entry.short_key, trigger_key, trigger.ts, rule.goal.within_ms, now_ms)
        _trace(effects, entry, trigger, "fired", actions=[action.action_id for action in actions])
        owner = entry.compiled.ruleset.id
        return schedule_and_tag(actions, trigger, owner, state.tags, effects.timers_added, tag_event_per_action=False)


def apply_patch(state: UserState, patch: ProfilePatch) -> None:
    """A profile change from `PATCH /v1/users/{id}`, in stream order with the user's events."""
    for name, value in patch.attrs.items():
        if value is None:
            state.profile.pop(name, None)
        else:
            state.profile[name] = value
    state.tags.update(patch.add_tags)
    state.tags.difference_update(patch.remove_tags)


# -- pattern kinds (pure functions over one PatternState; every list is kept sorted by ts) ---------------


def _sequence(
    pattern: PatternState, when: Sequence, lateness: int, correlation: str, event: Event, roles: set[str]
) -> bool:
    """A then B: completes when B finds an A in [ts - w, ts], or A finds an earlier-processed B in [ts, ts + w]."""
    ts, within = event.ts, when.within_ms
    # Both checks look at what was there before this event: an event playing both roles never pairs with itself.
    done = "then" in roles and _any_between(_stamps(pattern, "a", correlation), ts - within, ts)
    if "first" in roles and not done:
        done = _any_between(_stamps(pattern, "b", correlation), ts, ts + within)
    # Lists are created only for the role an event plays: an empty list would be stored and never pruned.
    if "then" in roles:
        insort(pattern.parts.setdefault("b", {}).setdefault(correlation, []), ts)
        if pattern.floor_b is not None and ts < pattern.floor_b:
            pattern.floor_b = ts
    if "first" in roles:
        insort(pattern.parts.setdefault("a", {}).setdefault(correlation, []), ts)
        if pattern.floor_a is not None and ts < pattern.floor_a:
            pattern.floor_a = ts
    # Any future on-time event has ts >= cutoff: an A can still pair while ts_A + w >= cutoff, a B (for an
    # out-of-order A) while ts_B >= cutoff. Everything older can only matter to a late event.
    cutoff = pattern.watermark - lateness
    _prune(pattern, "a", cutoff - within)
    _prune(pattern, "b", cutoff)
    return done


def _absence(
    pattern: PatternState, when: Absence, entry: RuleEntry, correlation: str, event: Event, roles: set[str]
) -> tuple[list[str], bool] | None:
    """B cancels pending As whose window holds it; A becomes pending unless an earlier-processed B covers it.

    Returns (cancelled A event ids, whether this event became a pending A), or None when nothing changed.
    A pending A keeps only the attributes its firing reads (`if` fields and templates).
    """
    pending = pattern.parts.setdefault("p", {}).setdefault(correlation, [])
    ts, within = event.ts, when.within_ms
    cancelled: list[str] = []
    if "missing" in roles and pending:
        kept = []
        for item in pending:
            if item[0] <= ts <= item[0] + within:
                cancelled.append(item[1])
            else:
                kept.append(item)
        pending[:] = kept
    became_pending = "first" in roles and not _any_between(_stamps(pattern, "b", correlation), ts, ts + within)
    if became_pending:
        attrs = {name: event.attrs[name] for name in entry.trigger_fields if name in event.attrs}
        insort(pending, [ts, event.event_id, attrs], key=_first_item)
    if "missing" in roles:
        insort(pattern.parts.setdefault("b", {}).setdefault(correlation, []), ts)
        if pattern.floor_b is not None and ts < pattern.floor_b:
            pattern.floor_b = ts
    _prune(pattern, "b", pattern.watermark - entry.rule.lateness_ms)
    if not pending:
        del pattern.parts["p"][correlation]
        if not pattern.parts["p"]:
            del pattern.parts["p"]
    return (cancelled, became_pending) if cancelled or became_pending else None


def _threshold(
    pattern: PatternState, when: Threshold, lateness: int, correlation: str, event: Event, value: float
) -> bool:
    """Some window [t - w, t] ending at a kept event t with ts <= t <= ts + w reaches the target."""
    members = pattern.parts.setdefault("t", {}).setdefault(correlation, [])
    ts, window = event.ts, when.window_ms
    cutoff = pattern.watermark - lateness
    if when.sum_field is None:
        insort(members, ts)
        if members[-1] == ts:
            # In order (the common case): the only window to check ends at this event.
            done = len(members) - bisect_left(members, ts - window) >= when.at_least
        else:
            # Out of order: also the windows ending at later kept events that now hold this one.
            done = any(
                bisect_right(members, end) - bisect_left(members, end - window) >= when.at_least
                for end in members[bisect_left(members, ts) : bisect_right(members, ts + window)]
            )
        del members[: bisect_left(members, cutoff - window)]
        # Below the cutoff only the n - 1 newest can still share a window with an on-time event.
        older = bisect_left(members, cutoff)
        keep_older = max(int(when.at_least) - 1, 0)
        if older > keep_older:
            del members[: older - keep_older]
        return done
    insort(members, [ts, value], key=_first_item)
    if members[-1][0] == ts:
        # In order: the window ending at this event, summed from the newest member back.
        total, start = 0.0, ts - window
        for member in reversed(members):
            if member[0] < start:
                break
            total += member[1]
        done = total >= when.at_least
    else:
        stamps = [member[0] for member in members]
        done = False
        for end in stamps[bisect_left(stamps, ts) : bisect_right(stamps, ts + window)]:
            low = bisect_left(stamps, end - window)
            if sum(member[1] for member in members[low : bisect_right(stamps, end)]) >= when.at_least:
                done = True
                break
    del members[: bisect_left(members, cutoff - window, key=_first_item)]
    return done


_NO_STAMPS: list[int] = []


def _stamps(pattern: PatternState, role: str, correlation: str) -> list[int]:
    """One correlation's list of a role, for reading only (an absent list reads as empty)."""
    lists = pattern.parts.get(role)
    return lists.get(correlation, _NO_STAMPS) if lists else _NO_STAMPS


def _any_between(stamps: list[int], low: int, high: int) -> bool:
    """Whether the sorted list holds a timestamp in [low, high]."""
    index = bisect_left(stamps, low)
    return index < len(stamps) and stamps[index] <= high


def _first_item(item: list[Any]) -> Any:
    return item[0]


def _prune(pattern: PatternState, role: str, keep_from: int) -> None:
    """Drop timestamps below `keep_from` from every correlation's list of role `a` or `b`."""
    floor = pattern.floor_a if role == "a" else pattern.floor_b
    if floor is not None and floor >= keep_from:
        return  # the common case: nothing is old enough, known without visiting the lists
    lists = pattern.parts.get(role)
    oldest: int | None = None
    if lists:
        emptied = []
        for correlation, stamps in lists.items():
            if stamps and stamps[0] < keep_from:
                del stamps[: bisect_left(stamps, keep_from)]
            if not stamps:
                emptied.append(correlation)
            elif oldest is None or stamps[0] < oldest:
                oldest = stamps[0]
        for correlation in emptied:
            del lists[correlation]
        if not lists:
            del pattern.parts[role]
    if role == "a":
        pattern.floor_a = oldest
    else:
        pattern.floor_b = oldest


def _trace(effects: Effects, entry: RuleEntry, event: Event, what: str, **details: Any) -> None:
    """A rule's outcome for an event (or timer) in the user's trace, when tracing."""
    if effects.trace is not None:
        found = {"kind": "rule", "ts": event.ts, "rule": entry.key, "event_id": event.event_id, "what": what}
        effects.trace.append((event.user_id, {**found, **details}))
