"""A journey version ready to run: its matchers by event type, branch conditions and action renderers.

Like `rules.compiled` for rulesets: predicates become closures once per version, so stepping an
instance costs Python calls, not interpretation. Branch conditions may read the user's behaviour
history (`Behaviour`): the runner keeps a timestamp list per behaviour *shape* (matcher and summed
field) for every user whose events match it, and a condition counts or sums the part of that list
inside its window, ending when the branch runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from rules.journey_model import (
    Behaviour,
    Branch,
    BranchAll,
    BranchAny,
    BranchNot,
    Condition,
    Do,
    Journey,
    Wait,
    WaitFor,
)
from rules.model import AllOf, AnyOf, Compare, Matcher, Not
from rules.plans import PLAN_PREFIX
from rules.predicates import Check, compile_predicate, type_class
from rules.templates import compile_value

# A behaviour shape's kept events, oldest first: timestamps (counts) or [ts, value] (sums).
HistoryOf = Callable[[str], list[Any]]
# (entry attrs, profile, tags, history, the branch's event time) -> holds
BranchCheck = Callable[[Mapping[str, Any], Mapping[str, Any], Set[str], HistoryOf, int], bool]
MAX_HISTORY = 10_000  # events kept per user and behaviour shape (sums keep every event in the window)

_EVENT_FIELD = re.compile(r"\{\{\s*event\.([^\s{}]+)\s*\}\}")


@dataclass(frozen=True, slots=True)
class HistoryShape:
    """What one behaviour shape keeps: events of `match` (with `sum_field`'s value) for `window_ms`.

    A branch runs at an event time at most `horizon_ms` (its journey's lateness) before the newest
    event kept: every event newer than `newest - horizon` is kept, and of the older ones in the window
    only the newest `keep`, which is enough to decide any count comparison (see `events_needed`).
    """

    id: str
    match: Matcher
    sum_field: str | None
    window_ms: int
    keep: int
    horizon_ms: int = 0


def history_id(match: Matcher, sum_field: str | None) -> str:
    """Names a behaviour shape's kept events in users' state (shared by every journey that reads them)."""
    shape = json.dumps(["history", match.event, repr(match.where), sum_field])
    return "h" + hashlib.sha256(shape.encode()).hexdigest()[:11]


def behaviours_of(condition: Condition | None) -> list[Behaviour]:
    """Every behaviour condition inside a branch condition."""
    found: list[Behaviour] = []
    pending: list[Condition] = [condition] if condition is not None else []
    while pending:
        item = pending.pop()
        if isinstance(item, Behaviour):
            found.append(item)
        elif isinstance(item, BranchAll | BranchAny | AllOf | AnyOf):
            pending.extend(item.items)
        elif isinstance(item, BranchNot | Not):
            pending.append(item.item)
    return found


def events_needed(behaviour: Behaviour) -> int:
    """How many of the newest events decide the condition: one more than the compared count."""
    if behaviour.kind == "sum":
        return MAX_HISTORY
    if behaviour.kind == "did_not":
        return 1
    return min(int(behaviour.value) + 1, MAX_HISTORY)


def compile_condition(condition: Condition) -> BranchCheck:
    """A closure deciding a branch condition; plain predicates go through `rules.predicates`."""
    if isinstance(condition, Behaviour):
        return _behaviour(condition)
    if isinstance(condition, BranchAll | BranchAny):
        items = tuple(compile_condition(item) for item in condition.items)
        if isinstance(condition, BranchAll):
            return lambda attrs, profile, tags, history, at: all(i(attrs, profile, tags, history, at) for i in items)
        return lambda attrs, profile, tags, history, at: any(i(attrs, profile, tags, history, at) for i in items)
    if isinstance(condition, BranchNot):
        inner = compile_condition(condition.item)
        return lambda attrs, profile, tags, history, at: not inner(attrs, profile, tags, history, at)
    check: Check = compile_predicate(condition)
    return lambda attrs, profile, tags, history, at: check(attrs, profile, tags)


def _behaviour(behaviour: Behaviour) -> BranchCheck:
    shape = history_id(behaviour.match, behaviour.sum_field)
    within = behaviour.within_ms
    # The count or sum is compared like a `profile` comparison of that number, so ops mean what they
    # mean everywhere (one implementation of the operators).
    compare = compile_predicate(Compare("profile", "n", behaviour.op, behaviour.value))
    if behaviour.kind == "sum":

        def summed(
            attrs: Mapping[str, Any], profile: Mapping[str, Any], tags: Set[str], history: HistoryOf, at: int
        ) -> bool:
            items = history(shape)
            low = bisect_left(items, at - within, key=_first)
            high = bisect_right(items, at, key=_first)
            return compare({}, {"n": sum(item[1] for item in items[low:high])}, tags)

        return summed

    def counted(
        attrs: Mapping[str, Any], profile: Mapping[str, Any], tags: Set[str], history: HistoryOf, at: int
    ) -> bool:
        stamps = history(shape)
        count = bisect_right(stamps, at) - bisect_left(stamps, at - within)
        return count == 0 if behaviour.kind == "did_not" else compare({}, {"n": count}, tags)

    return counted


def _first(item: list[Any]) -> Any:
    return item[0]


def kept_fields(journey: Journey) -> frozenset[str]:
    """The entry event's attributes an instance keeps: its key, correlations, branch `field`s, templates."""
    names = set(journey.key)
    if journey.id.startswith(PLAN_PREFIX):
        names.add("occurrence")  # a plan's actions name their occurrence
    for journey_exit in journey.exits:
        names.update(journey_exit.correlate)
    for node in journey.nodes.values():
        if isinstance(node, WaitFor):
            for arm in node.arms:
                names.update(arm.correlate)
        elif isinstance(node, Branch):
            pending: list[Condition] = [arm.condition for arm in node.arms]
            while pending:
                item = pending.pop()
                if isinstance(item, BranchAll | BranchAny | AllOf | AnyOf):
                    pending.extend(item.items)
                elif isinstance(item, BranchNot | Not):
                    pending.append(item.item)
                elif isinstance(item, Compare) and item.source == "field":
                    names.add(item.name)
        elif isinstance(node, Do):
            names.update(_EVENT_FIELD.findall(json.dumps([action.params for action in node.actions])))
        elif isinstance(node, Wait) and node.until_entry is not None:
            names.add(node.until_entry)
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class JourneyRole:
    """A matcher of one journey version for one event type: `entry`, `exit` (`arm`: its index in `exit`),
    `goal`, `arm` (of a `wait_for` node: `node`, `arm` index) or `history` (a behaviour shape's `node`
    is its id)."""

    role: str
    where: Check
    node: str = ""
    arm: int = 0


# eq=False: identity equality and hashing, as CompiledRuleset.
@dataclass(frozen=True, slots=True, eq=False)
class CompiledJourney:
    """One journey version with everything the runner derives from it once."""

    journey: Journey
    node_ids: tuple[str, ...]  # document order; an instance stores its node as an index into this
    node_index: dict[str, int]
    matchers: dict[str, tuple[JourneyRole, ...]]  # event type -> roles (entry, exit, goal, arms)
    conditions: dict[str, tuple[BranchCheck, ...]]  # branch node -> one check per arm
    renderers: dict[str, tuple[Callable[[Mapping[str, Any]], Any], ...]]  # do node -> per action
    histories: tuple[HistoryShape, ...]
    kept_fields: frozenset[str]

    @classmethod
    def build(cls, journey: Journey) -> CompiledJourney:
        """Compile a validated journey."""
        roles: dict[str, list[JourneyRole]] = {}

        def add(match: Matcher, role: str, node: str = "", arm: int = 0) -> None:
            roles.setdefault(match.event, []).append(JourneyRole(role, compile_predicate(match.where), node, arm))

        if journey.entry is not None:
            add(journey.entry, "entry")
        for index, journey_exit in enumerate(journey.exits):
            add(journey_exit.match, "exit", arm=index)
        if journey.goal is not None:
            add(journey.goal.match, "goal")
        conditions: dict[str, tuple[BranchCheck, ...]] = {}
        renderers: dict[str, tuple[Callable[[Mapping[str, Any]], Any], ...]] = {}
        shapes: dict[str, HistoryShape] = {}
        for node_id, node in journey.nodes.items():
            if isinstance(node, WaitFor):
                for index, arm in enumerate(node.arms):
                    add(arm.match, "arm", node_id, index)
            elif isinstance(node, Branch):
                conditions[node_id] = tuple(compile_condition(arm.condition) for arm in node.arms)
                for branch_arm in node.arms:
                    for behaviour in behaviours_of(branch_arm.condition):
                        shape_id = history_id(behaviour.match, behaviour.sum_field)
                        known = shapes.get(shape_id)
                        window = max(behaviour.within_ms, known.window_ms if known else 0)
                        keep = max(events_needed(behaviour), known.keep if known else 0)
                        horizon = max(journey.lateness_ms, known.horizon_ms if known else 0)
                        shapes[shape_id] = HistoryShape(
                            shape_id, behaviour.match, behaviour.sum_field, window, keep, horizon
                        )
            elif isinstance(node, Do):
                renderers[node_id] = tuple(compile_value(action.params) for action in node.actions)
        for shape in shapes.values():
            add(shape.match, "history", shape.id)
        node_ids = tuple(journey.nodes)
        return cls(
            journey=journey,
            node_ids=node_ids,
            node_index={node_id: index for index, node_id in enumerate(node_ids)},
            matchers={event_type: tuple(found) for event_type, found in roles.items()},
            conditions=conditions,
            renderers=renderers,
            histories=tuple(shapes.values()),
            kept_fields=kept_fields(journey),
        )

    def wait_node(self, node_id: str) -> Wait | WaitFor | None:
        """The node if it is one an instance waits at."""
        node = self.journey.nodes.get(node_id)
        return node if isinstance(node, Wait | WaitFor) else None


def is_number(value: Any) -> bool:
    """A finite number that is not a boolean (what a `sum` adds up)."""
    return type_class(value) == "num"


@dataclass(frozen=True, slots=True)
class JourneyVersions:
    """An active journey's kept versions, oldest first (the active one last), and the version that
    created it (`born`): users' marks are kept per (id, born), so a re-created journey starts afresh."""

    born: int
    versions: tuple[CompiledJourney, ...]

    @property
    def active(self) -> CompiledJourney:
        """The version new instances start on."""
        return self.versions[-1]
