"""A brute-force reference of the predicate semantics (rules/predicates.py's docstring), and strategies.

Written from the documented semantics, not from the closures: every leaf is decided by reading the
attribute and applying the rule for its operator directly, numbers compared exactly as fractions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from fractions import Fraction
from typing import Any

from hypothesis import strategies as st

from rules.model import (
    Absence,
    Action,
    AllOf,
    AnyOf,
    Compare,
    First,
    HasTag,
    Matcher,
    Not,
    Predicate,
    Reentry,
    Rule,
    Ruleset,
    Sequence,
    Single,
    Threshold,
    When,
)

Role = tuple[str, str]  # (rule id, role)


def ref_number(value: Any) -> Fraction | None:
    """A finite number (never a bool), exactly: 2**53 + 1 and float(2**53) differ, 10**400 is a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return Fraction(value)


def ref_class(value: Any) -> str | None:
    """The type class of a scalar, None for anything else."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "str"
    return "num" if ref_number(value) is not None else None


def ref_equal(left: Any, right: Any) -> bool:
    """Scalar equality within one type class."""
    kind = ref_class(left)
    if kind is None or kind != ref_class(right):
        return False
    return ref_number(left) == ref_number(right) if kind == "num" else bool(left == right)


def ref_compare(leaf: Compare, attrs: Mapping[str, Any], profile: Mapping[str, Any]) -> bool:
    """One comparison leaf."""
    found = (profile if leaf.source == "profile" else attrs).get(leaf.name)
    value, op = leaf.value, leaf.op
    if op == "exists":
        return found is not None
    if op == "==":
        return ref_equal(found, value)
    if op == "!=":
        return ref_class(found) is not None and ref_class(found) == ref_class(value) and not ref_equal(found, value)
    if op in (">", ">=", "<", "<="):
        number, bound = ref_number(found), ref_number(value)
        if number is None or bound is None:
            return False
        return {">": number > bound, ">=": number >= bound, "<": number < bound, "<=": number <= bound}[op]
    if op == "in":
        return any(ref_equal(found, item) for item in value)
    if op == "not_in":
        fits = ref_class(found) is not None and any(ref_class(found) == ref_class(item) for item in value)
        return fits and not any(ref_equal(found, item) for item in value)
    if op == "contains":
        if isinstance(found, str):
            return isinstance(value, str) and value in found
        return isinstance(found, list) and any(ref_equal(item, value) for item in found)
    if op == "prefix":
        return isinstance(found, str) and found.startswith(value)
    raise AssertionError(op)


def ref_holds(predicate: Predicate, attrs: Mapping[str, Any], profile: Mapping[str, Any], tags: Set[str]) -> bool:
    """A whole predicate."""
    if isinstance(predicate, AllOf):
        return all(ref_holds(item, attrs, profile, tags) for item in predicate.items)
    if isinstance(predicate, AnyOf):
        return any(ref_holds(item, attrs, profile, tags) for item in predicate.items)
    if isinstance(predicate, Not):
        return not ref_holds(predicate.item, attrs, profile, tags)
    if isinstance(predicate, HasTag):
        return predicate.tag in tags
    return ref_compare(predicate, attrs, profile)


def ref_matchers(when: When) -> list[tuple[str, Matcher]]:
    """The roles of a `when`, as the step plan names them (cep/plan.py)."""
    if isinstance(when, Sequence):
        return [("first", when.first), ("then", when.then)]
    if isinstance(when, Absence):
        return [("first", when.first), ("missing", when.missing)]
    assert isinstance(when, Single | Threshold | First)
    return [("match", when.match)]


def ref_roles(ruleset: Ruleset, event_type: str, attrs: Mapping[str, Any]) -> frozenset[Role]:
    """Stage 1 by brute force: every (rule, role) whose matcher takes the event."""
    return frozenset(
        (rule.id, role)
        for rule in ruleset.rules
        for role, matcher in ref_matchers(rule.when)
        if matcher.event == event_type and (matcher.where is None or ref_holds(matcher.where, attrs, {}, set()))
    )


# -- strategies ------------------------------------------------------------------------------------------

NAMES = ["a", "é", "x.y"]  # few names, so leaves and attributes meet often
TAGS = ["vip", "new", "日本"]
EVENT_TYPES = ["pay", "view"]
# Shared pools make rule values and attribute values collide: equality edges, 1 vs 1.0 vs True.
NUMBER_POOL = [0, 1, -1, 1.0, 2.5, -0.0, 1e-9, -1e-9, 1e20, 1e300, 5e-324, 1.7976931348623157e308, 2**53 + 1, 2**70]
STRING_POOL = ["", "a", "ab", "A", "1", "1.0", "true", "a.b", ".*", "a\\", '"', "$or", "é", "日本", "\x00", "\ud800"]
NUMBERS = st.one_of(
    st.sampled_from(NUMBER_POOL),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
)
STRINGS = st.one_of(
    st.sampled_from(STRING_POOL), st.text(max_size=4), st.text(alphabet='a.*\\"[]()$^|?+{}', max_size=4)
)
SCALARS = st.one_of(st.sampled_from([*NUMBER_POOL, *STRING_POOL, True, False]), NUMBERS, STRINGS, st.booleans())
ATTR_VALUES = st.one_of(
    SCALARS,
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(10**400), "\ud800"]),
    st.lists(SCALARS, max_size=3),
    st.just({"a": 1}),
)
ATTRS = st.fixed_dictionaries({}, optional=dict.fromkeys(NAMES, ATTR_VALUES))
TAG_SETS = st.frozensets(st.sampled_from(TAGS), max_size=2)
# Mixed and single-class lists, short and long.
LISTS = st.one_of(
    *(st.lists(values, min_size=1, max_size=4) for values in (SCALARS, NUMBERS, STRINGS)),
    *(st.lists(values, min_size=17, max_size=20) for values in (SCALARS, NUMBERS, STRINGS)),
).map(tuple)


def compares(sources: list[str]) -> st.SearchStrategy[Compare]:
    """Comparison leaves with operands of the type each operator takes (what rules/schema.py admits)."""
    source, name = st.sampled_from(sources), st.sampled_from(NAMES)
    return st.one_of(
        st.builds(Compare, source, name, st.sampled_from(["==", "!=", "contains"]), SCALARS),
        st.builds(Compare, source, name, st.sampled_from([">", ">=", "<", "<="]), NUMBERS),
        st.builds(Compare, source, name, st.sampled_from(["in", "not_in"]), LISTS),
        st.builds(Compare, source, name, st.just("prefix"), STRINGS.filter(bool)),
        st.builds(Compare, source, name, st.just("exists")),
    )


def predicates(*, event_only: bool) -> st.SearchStrategy[Predicate]:
    """Nested all/any/not over leaves; `event_only` leaves read the event's fields alone (a `where`)."""
    leaves: st.SearchStrategy[Predicate] = compares(["field"])
    if not event_only:
        leaves = st.one_of(compares(["field", "profile"]), st.builds(HasTag, st.sampled_from(TAGS)))

    def nest(inner: st.SearchStrategy[Predicate]) -> st.SearchStrategy[Predicate]:
        items = st.lists(inner, max_size=3).map(tuple)
        return st.one_of(st.builds(AllOf, items), st.builds(AnyOf, items), st.builds(Not, inner))

    return st.recursive(leaves, nest, max_leaves=8)


EVENT_PREDICATES = predicates(event_only=True)
PREDICATES = predicates(event_only=False)
MATCHERS = st.builds(Matcher, st.sampled_from(EVENT_TYPES), st.none() | EVENT_PREDICATES)
WHENS = st.one_of(
    st.builds(Single, MATCHERS),
    st.builds(Sequence, MATCHERS, MATCHERS, st.just(1000)),
    st.builds(Absence, MATCHERS, MATCHERS, st.just(1000)),
    st.builds(Threshold, MATCHERS, st.just(1000), st.just(3.0)),
    st.builds(First, MATCHERS),
)
ACTIONS = (Action("tag", {"add": ["seen"]}),)


def make_rule(rule_id: str, when: When, condition: Predicate | None = None, priority: int = 0) -> Rule:
    """A rule with a placeholder action."""
    return Rule(rule_id, when, ACTIONS, Reentry("always"), condition=condition, priority=priority)


@st.composite
def rulesets(draw: st.DrawFn) -> Ruleset:
    """One to five rules of any kind and a few priorities, with or without conditions."""
    count = draw(st.integers(1, 5))
    rules = tuple(
        make_rule(f"r{index}", draw(WHENS), draw(st.none() | PREDICATES), draw(st.integers(-1, 1)))
        for index in range(count)
    )
    return Ruleset("generated", rules, version=draw(st.integers(0, 3)))


def field(name: str, op: str, value: Any = None) -> Compare:
    """A `field` comparison."""
    return Compare("field", name, op, value)  # type: ignore[arg-type]
