"""The active rulesets as the evaluator reads them: matchers by event type, rules by pattern state id.

Built once per registry revision, shared by live processing, dry-runs and backtests.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cep.links import LinkSigner
from rules.compiled import CompiledRuleset
from rules.item_indexes import ItemIndex
from rules.journey_compiled import CompiledJourney, HistoryShape, JourneyRole, JourneyVersions
from rules.model import AllOf, Compare, Rule
from rules.plans import PLAN_EVENT, Plan, journey_targets
from rules.predicates import Check, compile_predicate
from rules.segments import CompiledSegment


def rule_key(ruleset_id: str, rule_id: str) -> str:
    """Re-entry is tracked per ruleset and rule, not per version: a replaced ruleset keeps its history."""
    return f"{ruleset_id}/{rule_id}"


def short_rule_key(key: str) -> str:
    """What users' records store for a rule key (re-entry, first-seen): 8 characters instead of ~30."""
    return base64.urlsafe_b64encode(hashlib.blake2b(key.encode(), digest_size=6).digest()).decode()


@dataclass(frozen=True, slots=True, eq=False)
class RuleEntry:
    """One live rule with what evaluation needs of it, derived once."""

    compiled: CompiledRuleset
    rule: Rule
    key: str  # rule key: "<ruleset id>/<rule id>"
    short_key: str  # the rule key as users' records store it
    state_id: str  # names the rule's pattern shape (see rules.compiled.pattern_state_id)
    condition: Check
    renderers: tuple[Callable[[Mapping[str, Any]], Any], ...]
    trigger_fields: frozenset[str]


@dataclass(frozen=True, slots=True)
class RoleEntry:
    """A matcher of one rule for one event type: the role it plays and its `where`."""

    entry: RuleEntry
    role: str
    where: Check


def journey_key(journey_id: str, born: int) -> str:
    """What users' records store for a journey (its marks and instances): 8 characters, for its id and
    the version that created it, so marks of a deleted journey do not carry over to a re-created one."""
    return short_rule_key(f"journey/{journey_id}/{born}")


@dataclass(frozen=True, slots=True, eq=False)
class JourneyEntry:
    """One active journey: its current version (new instances start on it) and every kept version
    (running instances finish on the version they started)."""

    id: str
    short_key: str
    active: CompiledJourney
    versions: dict[int, CompiledJourney]


@dataclass(frozen=True, slots=True, eq=False)
class SegmentEntry:
    """One active segment: its id, its key in users' records, and its compiled form."""

    id: str
    short_key: str
    compiled: CompiledSegment


@dataclass(frozen=True, slots=True)
class JourneyMatch:
    """A matcher of one journey version for one event type."""

    entry: JourneyEntry
    compiled: CompiledJourney
    role: JourneyRole


class RuleIndex:
    """Matchers by event type (by descending rule priority, then ruleset and rule order), rules by state id;
    journeys by id and record key, their matchers by event type, and the behaviour shapes they read."""

    def __init__(
        self,
        rulesets: Sequence[CompiledRuleset],
        journeys: Sequence[JourneyVersions] = (),
        segments: Sequence[CompiledSegment] = (),
        item_indexes: Sequence[ItemIndex] = (),
        plans: Sequence[Plan] = (),
    ) -> None:
        """`journeys`: per journey, its kept versions with the active one last (plans' journeys included);
        `segments`: the active ones; `plans`: the active ones, whose branches may enter journeys."""
        self.journeys: dict[str, JourneyEntry] = {}
        self.segments: dict[str, SegmentEntry] = {}
        self.segment_by_short: dict[str, SegmentEntry] = {}
        self.segments_by_type: dict[str, list[SegmentEntry]] = {}  # event type -> segments it may change
        self.segments_on_patch: list[SegmentEntry] = []  # segments a profile or tag patch may change
        # event type -> (behaviour shape, its matcher's where) whose events users keep (cep.history)
        self.history_roles: dict[str, list[tuple[HistoryShape, Check]]] = {}
        self.journey_by_short: dict[str, JourneyEntry] = {}
        self.journey_roles: dict[str, tuple[JourneyMatch, ...]] = {}
        self.histories: dict[str, HistoryShape] = {}
        # Signs tracked links (`{{link}}`) where clicks can be followed: set by the worker, None in dry-runs.
        self.links: LinkSigner | None = None
        self._index_journeys(journeys, plans)
        self._index_segments(segments)
        # event type -> (item attribute, window) of the item indexes that record it (cep.item_index)
        self.items_by_type: dict[str, list[tuple[str, int]]] = {}
        for item_index in item_indexes:
            for event_type in item_index.events:
                self.items_by_type.setdefault(event_type, []).append((item_index.attr, item_index.window_ms))
        self.rulesets = {compiled.ruleset.id: compiled for compiled in rulesets}
        self.by_state: dict[str, RuleEntry] = {}
        self.by_short_key: dict[str, RuleEntry] = {}
        ordered: list[tuple[int, int, RoleEntry, str]] = []
        for compiled in rulesets:
            entries = {
                rule.id: RuleEntry(
                    compiled,
                    rule,
                    rule_key(compiled.ruleset.id, rule.id),
                    short_rule_key(rule_key(compiled.ruleset.id, rule.id)),
                    compiled.state_ids[rule.id],
                    compiled.conditions[rule.id],
                    compiled.renderers[rule.id],
                    compiled.trigger_fields[rule.id],
                )
                for rule in compiled.ruleset.rules
            }
            self.by_state.update((entry.state_id, entry) for entry in entries.values())
            self.by_short_key.update((entry.short_key, entry) for entry in entries.values())
            for event_type, matches in compiled.matchers.items():
                for match in matches:
                    role = RoleEntry(entries[match.rule.id], match.role, match.where)
                    ordered.append((-match.rule.priority, len(ordered), role, event_type))
        # event type -> the rules whose goal it may be, with the goal's `where` (cep.attribution)
        self.goals_by_type: dict[str, list[tuple[RuleEntry, Check]]] = {}
        for entry in self.by_short_key.values():
            goal = entry.rule.goal
            if goal is not None:
                self.goals_by_type.setdefault(goal.match.event, []).append((entry, compile_predicate(goal.match.where)))
        ordered.sort(key=lambda item: (item[0], item[1]))
        by_type: dict[str, list[RoleEntry]] = {}
        for _, _, role, event_type in ordered:
            by_type.setdefault(event_type, []).append(role)
        self.by_type: dict[str, tuple[RoleEntry, ...]] = {key: tuple(value) for key, value in by_type.items()}

    def _index_journeys(self, journeys: Sequence[JourneyVersions], plans: Sequence[Plan]) -> None:
        journey_roles: dict[str, list[JourneyMatch]] = {}
        targets = journey_targets(list(plans))
        for kept in journeys:
            active, versions = kept.active, kept.versions
            journey_id = active.journey.id
            entry = JourneyEntry(
                journey_id,
                journey_key(journey_id, kept.born),
                active,
                {compiled.journey.version: compiled for compiled in versions},
            )
            self.journeys[journey_id] = self.journey_by_short[entry.short_key] = entry
            for compiled in versions:
                for event_type, found in compiled.matchers.items():
                    for journey_role in found:
                        # Only the active version admits new instances.
                        if journey_role.role != "entry" or compiled is active:
                            journey_roles.setdefault(event_type, []).append(JourneyMatch(entry, compiled, journey_role))
                for shape in compiled.histories:
                    self._add_history(shape)
            for plan_id, branch in targets.get(journey_id, ()):
                # A plan branch that enters this journey: its events are one more entry matcher.
                where = AllOf((Compare("field", "plan", "==", plan_id), Compare("field", "branch", "==", branch)))
                role = JourneyRole("entry", compile_predicate(where))
                journey_roles.setdefault(PLAN_EVENT, []).append(JourneyMatch(entry, active, role))
        for event_type, matches in journey_roles.items():
            self.journey_roles[event_type] = tuple(match for match in matches if match.role.role != "history")

    def _add_history(self, shape: HistoryShape) -> None:
        """A behaviour shape some journey or segment reads: kept once per user whoever reads it, for the
        longest window, the most events and the widest horizon any reader needs."""
        known = self.histories.get(shape.id)
        if known is not None:
            shape = HistoryShape(
                shape.id,
                shape.match,
                shape.sum_field,
                max(shape.window_ms, known.window_ms),
                max(shape.keep, known.keep),
                max(shape.horizon_ms, known.horizon_ms),
            )
        self.histories[shape.id] = shape

    def _index_segments(self, segments: Sequence[CompiledSegment]) -> None:
        for compiled in segments:
            short = short_rule_key(f"segment/{compiled.segment.id}/{compiled.born}")
            entry = SegmentEntry(compiled.segment.id, short, compiled)
            self.segments[entry.id] = self.segment_by_short[entry.short_key] = entry
            for shape in compiled.shapes:
                self._add_history(shape)
            triggers = {shape.match.event for shape in compiled.shapes}
            if compiled.reads_tags:
                triggers.update(("tag_added", "tag_removed"))
            for event_type in triggers:
                self.segments_by_type.setdefault(event_type, []).append(entry)
            if compiled.reads_profile or compiled.reads_tags:
                self.segments_on_patch.append(entry)
        # History roles: one per shape and event type, for whichever journeys and segments read it.
        for shape in self.histories.values():
            self.history_roles.setdefault(shape.match.event, []).append((shape, compile_predicate(shape.match.where)))
