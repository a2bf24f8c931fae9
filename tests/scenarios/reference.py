"""A brute-force reference for docs/semantics.md: firings and late events recomputed from the whole history.

Written from the documentation (docs/semantics.md, the operator notes in rules/schema.py), not from the
server's pattern code; `compare` says how it reads the one undefined term, "wrongly typed". Every rule
keeps the full list of its on-time events (no pruning) and every question ("is there an A in the
window?", "does some window hold N events?") is answered by scanning that list. Profiles are empty and
rules are assumed to have no `tag` actions, so no event is emitted by a firing.
"""

from __future__ import annotations

import heapq
import itertools
import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rules import model
from rules.schema import parse_ruleset

# When the server clock passes absence deadlines, relative to the arrivals:
# - "frozen": the clock stays before every deadline while the events are processed, then passes them all
#   (the live test: the ManualClock is advanced once, after the workers are idle);
# - "event_time": before each arrival, the timers due at or before that event's `ts` fire, in due order
#   (the dry-run's simulated clock, which "follows the events' ts").
ClockModel = Literal["frozen", "event_time"]

Firing = tuple[str, str, str]  # (rule id, user id, trigger: the completing event's id, or the A event's id)
Late = tuple[str, str]  # (rule id, event id)


@dataclass(frozen=True, slots=True)
class Event:
    """One arrival as the producer sent it."""

    event_id: str
    user_id: str
    type: str
    ts: int
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Event:
        """An event from its wire dict (`user_id`, `type`, `ts`, `event_id`, `attrs`)."""
        return cls(wire["event_id"], wire["user_id"], wire["type"], int(wire["ts"]), dict(wire.get("attrs") or {}))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the reference expects: admitted firings and late (rule, event) pairs."""

    firings: frozenset[Firing]
    late: frozenset[Late]


# -- predicates -------------------------------------------------------------------------------------


def is_number(value: object) -> bool:
    """A finite JSON number; booleans are not numbers."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def json_equal(left: object, right: object) -> bool:
    """Equality of JSON values without coercion: 1 == 1.0, "3" != 3, true != 1."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if is_number(left) and is_number(right):
        return left == right
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[key], right[key]) for key in left)
    return left is None and right is None


ORDERINGS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def type_class(value: object) -> str | None:
    """ "str", "num" or "bool" for a scalar; None for anything else (null, lists, objects)."""
    if isinstance(value, bool):
        return "bool"
    if is_number(value):
        return "num"
    return "str" if isinstance(value, str) else None


def compare(attrs: Mapping[str, Any], name: str, op: str, operand: Any) -> bool:
    """One comparison leaf; a missing or wrongly typed attribute makes it false for every op.

    "Wrongly typed" is read as: not of the operand's type class (string, number, boolean). So `amount != "2"`
    is false for `amount: 3`, and `not_in` needs an attribute of the class of at least one listed value.
    (docs/semantics.md does not define the term; this is the reading rules/schema.py's `"5" == 5` example,
    the "as SQL's NULL never compares" remark and rules/predicates.py's type classes share.)
    """
    if name not in attrs:
        return False
    value = attrs[name]
    if op == "exists":
        return value is not None
    if op in ("==", "!="):
        return (
            type_class(value) is not None
            and type_class(value) == type_class(operand)
            and (json_equal(value, operand) == (op == "=="))
        )
    if op == "in":
        return any(json_equal(value, item) for item in operand)
    if op == "not_in":
        listed_classes = {type_class(item) for item in operand}
        return type_class(value) in listed_classes and not any(json_equal(value, item) for item in operand)
    if op in ORDERINGS:
        if not is_number(value):
            return False
        return bool(ORDERINGS[op](value, operand))
    if op == "contains":
        if isinstance(value, str):
            return isinstance(operand, str) and operand in value
        if isinstance(value, list):
            return any(json_equal(item, operand) for item in value)
        return False
    if op == "prefix":
        return isinstance(value, str) and value.startswith(operand)
    raise ValueError(f"unknown operator {op!r}")


def holds(
    predicate: model.Predicate | None,
    attrs: Mapping[str, Any],
    profile: Mapping[str, Any] | None = None,
    tags: Iterable[str] = (),
) -> bool:
    """Whether a predicate holds for event attributes and a profile (absent predicate: true)."""
    if predicate is None:
        return True
    profile = profile or {}
    tag_set = set(tags)
    if isinstance(predicate, model.Compare):
        source = attrs if predicate.source == "field" else profile
        return compare(source, predicate.name, predicate.op, predicate.value)
    if isinstance(predicate, model.HasTag):
        return predicate.tag in tag_set
    if isinstance(predicate, model.AllOf):
        return all(holds(item, attrs, profile, tag_set) for item in predicate.items)
    if isinstance(predicate, model.AnyOf):
        return any(holds(item, attrs, profile, tag_set) for item in predicate.items)
    if isinstance(predicate, model.Not):
        return not holds(predicate.item, attrs, profile, tag_set)
    raise TypeError(f"not a predicate: {predicate!r}")


def matches(matcher: model.Matcher, event: Event) -> bool:
    """The event has the matcher's type and satisfies its `where`."""
    return event.type == matcher.event and holds(matcher.where, event.attrs)


# -- patterns ---------------------------------------------------------------------------------------


def roles_of(rule: model.Rule, event: Event) -> frozenset[str]:
    """The roles an event plays in a rule (empty: it takes no part, is not late, moves no watermark)."""
    when = rule.when
    if isinstance(when, (model.Single, model.First)):
        return frozenset({"match"} if matches(when.match, event) else ())
    if isinstance(when, model.Threshold):
        if not matches(when.match, event):
            return frozenset()
        if when.sum_field is not None and not is_number(event.attrs.get(when.sum_field)):
            return frozenset()  # with `sum`, a non-number field does not take part
        return frozenset({"match"})
    if not all(name in event.attrs for name in when.correlate):
        return frozenset()  # lacks a correlation attribute
    second = when.then if isinstance(when, model.Sequence) else when.missing
    roles = {"first"} if matches(when.first, event) else set()
    if matches(second, event):
        roles.add("second")
    return frozenset(roles)


def correlated(rule: model.Rule, left: Event, right: Event) -> bool:
    """Both events carry equal values for every correlation attribute."""
    names: tuple[str, ...] = getattr(rule.when, "correlate", ())
    return all(json_equal(left.attrs[name], right.attrs[name]) for name in names)


def has_lateness(rule: model.Rule) -> bool:
    """Single-event and `first` rules have no lateness."""
    return isinstance(rule.when, (model.Sequence, model.Absence, model.Threshold))


@dataclass
class RuleHistory:
    """One rule for one user: everything the reference remembers (nothing is ever pruned)."""

    watermark: int | None = None
    on_time: list[tuple[Event, frozenset[str]]] = field(default_factory=list)  # in processing order
    pending: dict[str, Event] = field(default_factory=dict)  # absence: A events waiting for their deadline
    first_seen: bool = False
    admitted: bool = False
    last_admitted_ts: int = 0


class Reference:
    """Replays arrivals in order against a ruleset, recording admitted firings and late events."""

    def __init__(self, ruleset: model.Ruleset, clock: ClockModel) -> None:
        self.ruleset = ruleset
        self.clock = clock
        self.histories: dict[tuple[str, str], RuleHistory] = {}
        self.processed_ids: set[tuple[str, str]] = set()
        self.timers: list[tuple[int, int, str, str, str]] = []  # (due, seq, rule id, user id, A event id)
        self.timer_seq = itertools.count()  # ties on due time fire in scheduling order
        self.firings: set[Firing] = set()
        self.late: set[Late] = set()

    def history(self, rule: model.Rule, user_id: str) -> RuleHistory:
        """The rule's history for one user (created empty)."""
        return self.histories.setdefault((rule.id, user_id), RuleHistory())

    def run(self, events: Iterable[Event]) -> Outcome:
        """Process every arrival, then let the clock pass every deadline."""
        for event in events:
            if self.clock == "event_time":
                self.fire_timers(up_to=event.ts)
            self.arrive(event)
        self.fire_timers(up_to=None)
        return Outcome(frozenset(self.firings), frozenset(self.late))

    def arrive(self, event: Event) -> None:
        """One producer event: deduplicated per user, then offered to every rule."""
        if (event.user_id, event.event_id) in self.processed_ids:
            return  # a duplicate changes nothing and fires nothing
        self.processed_ids.add((event.user_id, event.event_id))
        for rule in self.ruleset.rules:
            roles = roles_of(rule, event)
            if roles:
                self.step(rule, event, roles)

    def step(self, rule: model.Rule, event: Event, roles: frozenset[str]) -> None:
        """One event that takes part in one rule."""
        state = self.history(rule, event.user_id)
        when = rule.when
        if has_lateness(rule):
            if state.watermark is not None and event.ts < state.watermark - rule.lateness_ms:
                self.late.add((rule.id, event.event_id))
                return
            state.watermark = event.ts if state.watermark is None else max(state.watermark, event.ts)
        if isinstance(when, model.Single):
            self.complete(rule, event.user_id, event.event_id, event.ts, event.attrs)
        elif isinstance(when, model.First):
            if not state.first_seen:
                state.first_seen = True  # consumed even if the condition fails below
                self.complete(rule, event.user_id, event.event_id, event.ts, event.attrs)
        elif isinstance(when, model.Sequence):
            if self.sequence_completes(rule, state, event, roles):
                self.complete(rule, event.user_id, event.event_id, event.ts, event.attrs)
        elif isinstance(when, model.Absence):
            self.absence_step(rule, state, event, roles)
        elif isinstance(when, model.Threshold) and self.threshold_reached(when, state, event):
            self.complete(rule, event.user_id, event.event_id, event.ts, event.attrs)
        state.on_time.append((event, roles))

    def sequence_completes(self, rule: model.Rule, state: RuleHistory, event: Event, roles: frozenset[str]) -> bool:
        """`event` as B after an earlier A in its window, or as A before an earlier-processed B in A's window."""
        assert isinstance(rule.when, model.Sequence)
        within = rule.when.within_ms
        for earlier, earlier_roles in state.on_time:
            if earlier.event_id == event.event_id or not correlated(rule, earlier, event):
                continue
            if "second" in roles and "first" in earlier_roles and earlier.ts <= event.ts <= earlier.ts + within:
                return True
            if "first" in roles and "second" in earlier_roles and event.ts <= earlier.ts <= event.ts + within:
                return True
        return False

    def absence_step(self, rule: model.Rule, state: RuleHistory, event: Event, roles: frozenset[str]) -> None:
        """B cancels pending As in whose window it lies; A becomes pending unless an earlier B covers it."""
        assert isinstance(rule.when, model.Absence)
        within = rule.when.within_ms
        if "second" in roles:
            for a_id, a_event in list(state.pending.items()):
                in_window = a_event.ts <= event.ts <= a_event.ts + within
                if in_window and a_id != event.event_id and correlated(rule, a_event, event):
                    del state.pending[a_id]
        if "first" in roles:
            covered = any(
                "second" in earlier_roles
                and earlier.event_id != event.event_id
                and correlated(rule, earlier, event)
                and event.ts <= earlier.ts <= event.ts + within
                for earlier, earlier_roles in state.on_time
            )
            if not covered:
                state.pending[event.event_id] = event
                due = event.ts + within + rule.lateness_ms
                heapq.heappush(self.timers, (due, next(self.timer_seq), rule.id, event.user_id, event.event_id))

    def threshold_reached(self, when: model.Threshold, state: RuleHistory, event: Event) -> bool:
        """Some window [t - W, t] ending at an on-time event t with ts_e <= t <= ts_e + W reaches the threshold."""
        joined = [earlier for earlier, _ in state.on_time] + [event]

        def weight(member: Event) -> float:
            return 1 if when.sum_field is None else float(member.attrs[when.sum_field])

        for end in joined:
            if not event.ts <= end.ts <= event.ts + when.window_ms:
                continue
            total = sum(weight(member) for member in joined if end.ts - when.window_ms <= member.ts <= end.ts)
            if total >= when.at_least:
                return True
        return False

    def fire_timers(self, up_to: int | None) -> None:
        """Pending absences whose deadline the clock has passed fire, in due order (None: all of them)."""
        while self.timers and (up_to is None or self.timers[0][0] <= up_to):
            _, _, rule_id, user_id, a_id = heapq.heappop(self.timers)
            rule = next(rule for rule in self.ruleset.rules if rule.id == rule_id)
            assert isinstance(rule.when, model.Absence)
            state = self.history(rule, user_id)
            a_event = state.pending.pop(a_id, None)
            if a_event is not None:  # not cancelled by a B meanwhile
                self.complete(rule, user_id, a_id, a_event.ts + rule.when.within_ms, a_event.attrs)

    def complete(
        self, rule: model.Rule, user_id: str, trigger_id: str, trigger_ts: int, attrs: Mapping[str, Any]
    ) -> None:
        """A completed pattern: its `if` on the completing event (empty profile), then re-entry."""
        if not holds(rule.condition, attrs):
            return  # does not fire and does not count for re-entry
        state = self.history(rule, user_id)
        policy = rule.reentry
        if policy.policy == "once" and state.admitted:
            return
        if policy.policy == "once_per" and state.admitted and trigger_ts < state.last_admitted_ts + policy.period_ms:
            return
        state.admitted = True
        state.last_admitted_ts = trigger_ts
        self.firings.add((rule.id, user_id, trigger_id))


def evaluate(
    ruleset: model.Ruleset | Mapping[str, Any],
    events: Iterable[Mapping[str, Any] | Event],
    *,
    clock: ClockModel = "frozen",
    default_lateness_ms: int = 2000,
) -> Outcome:
    """Firings and late events of `ruleset` (document or parsed) over `events` in arrival order, empty profiles."""
    if isinstance(ruleset, model.Ruleset):
        parsed = ruleset
    else:
        parsed = parse_ruleset(ruleset, default_lateness_ms=default_lateness_ms)
    arrivals = [event if isinstance(event, Event) else Event.from_wire(event) for event in events]
    return Reference(parsed, clock).run(arrivals)
