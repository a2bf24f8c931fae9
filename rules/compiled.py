"""A ruleset version ready to evaluate: its matchers by event type and its `if` conditions as closures.

Stage 1 (which rule roles does an event match) walks `matchers[event.type]` and calls each `where`;
stage 2 (does a rule's `if` hold for the completing event, the profile and tags) calls
`conditions[rule.id]`. Both are plain Python closures from `rules.predicates`, so a compiled ruleset
owns no outside resource: a replaced version is dropped like any object, even mid-batch.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rules.model import (
    Absence,
    AllOf,
    AnyOf,
    Compare,
    First,
    Matcher,
    Not,
    Predicate,
    Rule,
    Ruleset,
    Single,
    Threshold,
    When,
)
from rules.model import Sequence as SequenceWhen
from rules.predicates import Check, compile_predicate
from rules.templates import compile_value


@dataclass(frozen=True, slots=True)
class RoleMatch:
    """One role a rule's matcher gives events of its type, and the `where` their attrs must pass."""

    rule: Rule
    role: str  # "match" (single, first, threshold); "first" and "then" / "missing" (sequence / absence)
    where: Check


def roles_of(when: When) -> tuple[tuple[str, Matcher], ...]:
    """(role, matcher) for each matcher of a `when`, named as the step plan names them."""
    if isinstance(when, SequenceWhen):
        return (("first", when.first), ("then", when.then))
    if isinstance(when, Absence):
        return (("first", when.first), ("missing", when.missing))
    assert isinstance(when, Single | Threshold | First)
    return (("match", when.match),)


def pattern_state_id(ruleset_id: str, rule: Rule) -> str:
    """Names a rule's pattern state; changes when the pattern changes, so a new version starts afresh
    on a changed pattern but keeps its state when only conditions or actions were edited."""
    shape = json.dumps([ruleset_id, rule.id, repr(rule.when), rule.lateness_ms], sort_keys=True)
    return hashlib.sha256(shape.encode()).hexdigest()[:12]


_EVENT_FIELD = re.compile(r"\{\{\s*event\.([^\s{}]+)\s*\}\}")


def trigger_fields(rule: Rule) -> frozenset[str]:
    """The event attributes firing the rule reads: its `if` fields and `{{event.<name>}}` templates.

    An absence keeps its A event's attributes until the deadline; it keeps only these.
    """
    names = set(_EVENT_FIELD.findall(json.dumps([action.params for action in rule.actions])))
    pending: list[Predicate] = [rule.condition] if rule.condition is not None else []
    while pending:
        predicate = pending.pop()
        if isinstance(predicate, AllOf | AnyOf):
            pending.extend(predicate.items)
        elif isinstance(predicate, Not):
            pending.append(predicate.item)
        elif isinstance(predicate, Compare) and predicate.source == "field":
            names.add(predicate.name)
    return frozenset(names)


# eq=False: identity equality and hashing; comparing two versions field by field (closures included)
# would mean nothing.
@dataclass(frozen=True, slots=True, eq=False)
class CompiledRuleset:
    """One ruleset version with everything the worker derives from it once, not per event."""

    ruleset: Ruleset
    rules: dict[str, Rule]
    state_ids: dict[str, str]
    # event type -> its roles, by rule priority (highest first), then the rules' order in the document.
    matchers: dict[str, tuple[RoleMatch, ...]]
    # rule id -> its `if` (`predicates.always` for a rule without one).
    conditions: dict[str, Check]
    # rule id -> one renderer of params per action in `then` (templates parsed once).
    renderers: dict[str, tuple[Callable[[Mapping[str, Any]], Any], ...]]
    # rule id -> the event attributes its firing reads (see trigger_fields).
    trigger_fields: dict[str, frozenset[str]]

    @classmethod
    def build(cls, ruleset: Ruleset) -> CompiledRuleset:
        """Compile a validated ruleset."""
        by_type: dict[str, list[RoleMatch]] = {}
        # sorted() is stable: equal priorities keep the document's order.
        for rule in sorted(ruleset.rules, key=lambda rule: -rule.priority):
            for role, matcher in roles_of(rule.when):
                by_type.setdefault(matcher.event, []).append(RoleMatch(rule, role, compile_predicate(matcher.where)))
        return cls(
            ruleset=ruleset,
            rules={rule.id: rule for rule in ruleset.rules},
            state_ids={rule.id: pattern_state_id(ruleset.id, rule) for rule in ruleset.rules},
            matchers={event_type: tuple(roles) for event_type, roles in by_type.items()},
            conditions={rule.id: compile_predicate(rule.condition) for rule in ruleset.rules},
            renderers={
                rule.id: tuple(compile_value(action.params) for action in rule.actions) for rule in ruleset.rules
            },
            trigger_fields={rule.id: trigger_fields(rule) for rule in ruleset.rules},
        )
