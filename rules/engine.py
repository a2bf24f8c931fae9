"""The condition engine: a ruleset's matchers and `if` conditions as one durable_rules ruleset.

durable_rules is used statelessly, on the caller's thread (not `durable.engine.Host`: it starts
timer threads): each evaluation asserts one fact, completes every action it fired to learn the rule
names, and retracts it, so the engine holds nothing between evaluations. All facts go through one
long-lived state, because creating and deleting a state costs a few allocations per rule — 300 us
per evaluation at 1,000 rules against 3.5 us for assert and retract. A fact belongs to one
evaluation *unit* — an event type (stage 1: which roles does the event match) or a distinct `if`
condition (stage 2) — and carries only that unit's typed slots (`rules.facts`).

Semantics (the JSON language's contract; `tests/rules/test_engine.py` checks them against a
brute-force reference):
- Every comparison on a missing, null or wrongly typed attribute is false, `!=` and `not_in`
  included; `{"not": P}` inverts the whole of P. Attribute names are flat keys of attrs / profile.
- Type classes: finite numbers (int or float, never bool; compared as doubles), strings, booleans.
  `==` / `!=` compare within one class: 1 == 1.0, "1" != 1 is false (wrong type), True == 1 is false.
- `>` `>=` `<` `<=`: numbers only. `in`: the attribute is a scalar equal to a listed value.
  `not_in`: a scalar of a type class that occurs in the list, equal to none of the values.
- `exists`: present and not null. `contains`: a string holding the (string) value, or a list with
  an element equal to the value. `prefix`: a string starting with the value. `tag`: the user has it.
- `all []` holds; `any []` does not. `where` may test the event's fields only.

durable evaluates the comparisons, `exists`, short `in`/`not_in` lists and the and/or/not structure;
`contains`, `prefix`, tags and long lists are flags computed in Python. Its limits shape the
compiled form: conjunctions only (`rules.conditions`); a unit is picked by two small integer slots
and its rules grouped under always-true tests, because durable hangs when a node has 512 children
and overflows (then crashes) when more than 64 branches match at once; at most 4095 rules and 255
properties per fact.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import durable_rules_engine as dre

from beacon.errors import ValidationError
from rules.conditions import Term, compile_predicate
from rules.facts import Projection, Slots, distinct_names
from rules.model import Absence, First, Matcher, Ruleset, Single, Threshold, When
from rules.model import Sequence as SequenceWhen

Role = tuple[str, str]  # (rule_id, role): "match"; or "first" and "then" / "missing"

FANOUT = 16  # children per group: stack <= 1 + (FANOUT - 1) * levels + FANOUT, well under 64
UNIT_SPLIT = 32  # units per `uh` value: keeps the root's children few
MAX_ENGINE_RULES = 4000  # durable fails past 4095 rules per ruleset
MAX_FACT_PROPERTIES = 255
_UNIT_HI, _UNIT_LO, _ALWAYS = "uh", "ul", "k"  # unit selector slots; `k` is 0 in every fact
_HEAD_SIZE = len(("id", _UNIT_HI, _UNIT_LO, _ALWAYS))  # properties of a fact's head, after `sid`
_SID = "0"  # the one state: a fact is asserted into it and retracted before the next
_PRIMER = "prime"  # a rule firing on the primer fact only (`uh` is never negative otherwise)
_PRIMER_RULE = f'"{_PRIMER}":{{"all":[{{"m":{{"{_UNIT_HI}":-1}}}}]}}'
_PRIMER_FACT = f'{{"sid":"{_SID}","id":"1","{_UNIT_HI}":-1}}'
_ruleset_names = itertools.count()  # durable cannot re-create a name: one per engine per process
_NO_PROFILE: Mapping[str, Any] = MappingProxyType({})  # stage 1 sees the event alone
_NO_TAGS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ConditionCheck:
    """Stage 2 input: a rule whose pattern completed, the completing event's attrs, the profile."""

    rule_id: str
    attrs: Mapping[str, Any]
    profile: Mapping[str, Any]
    tags: frozenset[str]


@dataclass(slots=True)
class _Unit:
    """An evaluation unit while compiling: its conjunctions, each with what it stands for."""

    index: int
    path: str
    terms: dict[Term, set[Role]]


class ConditionEngine:
    """Evaluates a ruleset's matchers (stage 1) and `if` conditions (stage 2) with durable_rules."""

    def __init__(self, ruleset: Ruleset) -> None:
        """Compile every matcher and condition into one durable_rules ruleset."""
        slots = Slots(reserved=(_UNIT_HI, _UNIT_LO, _ALWAYS))
        by_event: dict[str, _Unit] = {}
        by_condition: dict[tuple[Term, ...], _Unit] = {}
        units: list[_Unit] = []

        def unit_for(table: dict[Any, _Unit], key: Any, path: str) -> _Unit:
            if key not in table:
                table[key] = _Unit(len(units), path, {})
                units.append(table[key])
            return table[key]

        # rule id -> the unit deciding its `if`, or the constant it folds to (no condition: True).
        self._conditions: dict[str, _Unit | bool] = {}
        for index, rule in enumerate(ruleset.rules):
            for role, matcher, path in _matchers(rule.when, f"rules[{index}].when"):
                where = f"{path}.where"
                terms = (
                    [frozenset()]
                    if matcher.where is None
                    else compile_predicate(matcher.where, slots, where, event_only=True)
                )
                unit = unit_for(by_event, matcher.event, path)
                for term in terms:
                    unit.terms.setdefault(term, set()).add((rule.id, role))
            if rule.condition is None:
                self._conditions[rule.id] = True
                continue
            path = f"rules[{index}].if"
            terms = compile_predicate(rule.condition, slots, path, event_only=False)
            if terms in ([], [frozenset()]):  # `any []`, `all []` and the like: no engine work
                self._conditions[rule.id] = bool(terms)
                continue
            unit = unit_for(by_condition, tuple(terms), path)
            unit.terms.update((term, set()) for term in terms)
            self._conditions[rule.id] = unit

        definitions: list[str] = []
        self._roles: dict[str, frozenset[Role]] = {}  # durable rule name -> roles it stands for
        self._projections: dict[int, Projection] = {}
        names = distinct_names("r", set())
        for unit in units:
            high, low = divmod(unit.index, UNIT_SPLIT)
            selector = (f'{{"{_UNIT_HI}":{high}}}', f'{{"{_UNIT_LO}":{low}}}')
            for groups, term in _grouped(sorted(unit.terms, key=sorted)):
                name = next(names)
                literals = ",".join((*selector, *groups, *(literal.text for literal in sorted(term))))
                definitions.append(f'"{name}":{{"all":[{{"m":{{"$and":[{literals}]}}}}]}}')
                self._roles[name] = frozenset(unit.terms[term])
            head = f'"id":"1","{_UNIT_HI}":{high},"{_UNIT_LO}":{low},"{_ALWAYS}":0'
            used = {slot for term in unit.terms for literal in term for slot in literal.slots}
            projection = slots.projection(head, _HEAD_SIZE, used)
            if projection.size > MAX_FACT_PROPERTIES:
                raise ValidationError(
                    f"tests too many attributes ({projection.size} slots; the engine's facts hold "
                    f"{MAX_FACT_PROPERTIES})",
                    path=unit.path,
                )
            self._projections[unit.index] = projection
        if len(definitions) > MAX_ENGINE_RULES:
            raise ValidationError(f"compiles to {len(definitions)} engine rules (at most {MAX_ENGINE_RULES})")
        self._event_units = {event: unit.index for event, unit in by_event.items()}
        self._name = f"{ruleset.id}@{ruleset.version}#{next(_ruleset_names)}"
        self._handle: int = dre.create_ruleset(self._name, "{" + ",".join((_PRIMER_RULE, *definitions)) + "}")
        # Frees the durable ruleset on close() or, failing that, when the engine is collected.
        self._release = weakref.finalize(self, _free, self._handle)
        self._open_state()

    def match_events(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> list[frozenset[Role]]:
        """Stage 1: the (rule_id, role) pairs each (event type, attrs) matches."""
        self._check_open()
        matched: list[frozenset[Role]] = []
        for event_type, attrs in events:
            unit = self._event_units.get(event_type)
            if unit is None:
                matched.append(frozenset())
                continue
            fired = self._fire(self._projections[unit].fact(_SID, attrs, _NO_PROFILE, _NO_TAGS))
            if len(fired) == 1:
                matched.append(self._roles[fired[0]])
            else:
                matched.append(frozenset(role for name in fired for role in self._roles[name]))
        return matched

    def check_conditions(self, checks: Sequence[ConditionCheck]) -> list[bool]:
        """Stage 2: whether each rule's `if` holds for the completing event and the user's profile."""
        self._check_open()
        results = []
        for check in checks:
            unit = self._conditions[check.rule_id]
            if isinstance(unit, bool):
                results.append(unit)
                continue
            fact = self._projections[unit.index].fact(_SID, check.attrs, check.profile, check.tags)
            results.append(bool(self._fire(fact)))
        return results

    def close(self) -> None:
        """Free the durable_rules ruleset; idempotent."""
        self._release()

    def _check_open(self) -> None:
        # A freed handle number is reused by the next ruleset created: never evaluate on one.
        if not self._release.alive:
            raise RuntimeError(f"condition engine {self._name} is closed")

    def _open_state(self) -> None:
        """Create the one state with a fact that fires a rule, and retract it."""
        # durable never initialises a new state's action context, and delete_state (at close) frees
        # it: a state whose first fact fired nothing crashes there. Running an action sets it.
        if self._fire(_PRIMER_FACT) != [_PRIMER]:
            raise RuntimeError("durable_rules did not fire the primer rule")

    def _fire(self, fact: str) -> list[str]:
        """Names of the rules the fact fires; the state holds nothing afterwards."""
        handle, fired = self._handle, []
        try:
            code, state = dre.assert_fact(handle, fact)
            if code == 0:  # 0: some rule matched; 1: none did (not an error)
                message = dre.start_action_for_state(handle, state)[1]
                # Every action must be completed: retracting a fact with an action still pending
                # (or abandoned) leaves a dangling frame that later reads freed memory.
                while message:
                    # {"<rule name>":{"m":<fact>}}; names are [a-z0-9] so no JSON parsing.
                    fired.append(message[2 : message.index('"', 2)])
                    message = dre.complete_and_start_action(handle, state)
            dre.retract_fact(handle, fact)
        except BaseException:
            # The state may hold the fact or half-run actions: replace it (its context is set).
            with contextlib.suppress(dre.error):
                dre.delete_state(handle, _SID)
            if fact != _PRIMER_FACT:
                self._open_state()
            raise
        return fired


def _free(handle: int) -> None:
    """Delete the state, then the ruleset (which frees its state pool but not what states hold)."""
    with contextlib.suppress(dre.error):  # runs as a finalizer too: it must not raise
        dre.delete_state(handle, _SID)
    dre.delete_ruleset(handle)


def _matchers(when: When, path: str) -> list[tuple[str, Matcher, str]]:
    """(role, matcher, JSON path of its `where`) for each matcher of a `when`."""
    if isinstance(when, SequenceWhen):
        return [("first", when.first, f"{path}.sequence.first"), ("then", when.then, f"{path}.sequence.then")]
    if isinstance(when, Absence):
        return [("first", when.first, f"{path}.absence.first"), ("missing", when.missing, f"{path}.absence.missing")]
    if isinstance(when, Threshold):
        return [("match", when.match, f"{path}.threshold.match")]
    if isinstance(when, First):
        return [("match", when.match, f"{path}.first")]
    assert isinstance(when, Single)
    return [("match", when.match, path)]


def _grouped(terms: list[Term]) -> list[tuple[tuple[str, ...], Term]]:
    """Terms under nested always-true group tests, at most FANOUT per node (see module docstring)."""
    if len(terms) <= FANOUT:
        return [((), term) for term in terms]
    size = -(-len(terms) // FANOUT)
    return [
        ((f'{{"$lte":{{"{_ALWAYS}":{start // size}}}}}', *groups), term)
        for start in range(0, len(terms), size)
        for groups, term in _grouped(terms[start : start + size])
    ]
