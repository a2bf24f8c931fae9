"""The condition engine against a brute-force reference of the predicate semantics, and its limits."""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from typing import Any

import durable_rules_engine
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from beacon.errors import ValidationError
from rules.engine import ConditionCheck, ConditionEngine, Role
from rules.model import (
    COMPARE_OPS,
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

# -- the reference: the semantics of rules/engine.py's docstring, evaluated directly ----------------------


def ref_number(value: Any) -> float | None:
    """A finite number (never a bool), as a double."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def ref_class(value: Any) -> str | None:
    """The type class of a scalar, None for anything else."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "str"
    return "num" if ref_number(value) is not None else None


def ref_equal(left: Any, right: Any) -> bool:
    """Scalar equality within one type class; numbers as doubles."""
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
    """The roles of a `when`."""
    if isinstance(when, Sequence):
        return [("first", when.first), ("then", when.then)]
    if isinstance(when, Absence):
        return [("first", when.first), ("missing", when.missing)]
    assert isinstance(when, Single | Threshold | First)
    return [("match", when.match)]


def ref_roles(ruleset: Ruleset, event_type: str, attrs: Mapping[str, Any]) -> frozenset[Role]:
    """Stage 1 by brute force."""
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
    st.sampled_from([math.nan, math.inf, -math.inf, 10**400, "\ud800"]),
    st.lists(SCALARS, max_size=3),
    st.just({"a": 1}),
)
ATTRS = st.fixed_dictionaries({}, optional=dict.fromkeys(NAMES, ATTR_VALUES))
TAG_SETS = st.frozensets(st.sampled_from(TAGS), max_size=2)
# Mixed and single-class lists, short (durable `$or`) and long (computed in Python).
LISTS = st.one_of(
    *(st.lists(values, min_size=1, max_size=4) for values in (SCALARS, NUMBERS, STRINGS)),
    *(st.lists(values, min_size=17, max_size=20) for values in (SCALARS, NUMBERS, STRINGS)),
).map(tuple)


def compares(sources: list[str]) -> st.SearchStrategy[Compare]:
    """Comparison leaves with operands of the type each operator takes."""
    source, name = st.sampled_from(sources), st.sampled_from(NAMES)
    return st.one_of(
        st.builds(Compare, source, name, st.sampled_from(["==", "!=", "contains"]), SCALARS),
        st.builds(Compare, source, name, st.sampled_from([">", ">=", "<", "<="]), NUMBERS),
        st.builds(Compare, source, name, st.sampled_from(["in", "not_in"]), LISTS),
        st.builds(Compare, source, name, st.just("prefix"), STRINGS.filter(bool)),
        st.builds(Compare, source, name, st.just("exists")),
    )


def predicates(*, event_only: bool) -> st.SearchStrategy[Predicate]:
    """Nested all/any/not over leaves."""
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


def make_rule(rule_id: str, when: When, condition: Predicate | None = None) -> Rule:
    """A rule with a placeholder action."""
    return Rule(rule_id, when, ACTIONS, Reentry("always"), condition=condition)


@st.composite
def rulesets(draw: st.DrawFn) -> Ruleset:
    """One to four rules of any kind, with or without conditions."""
    count = draw(st.integers(1, 4))
    rules = tuple(make_rule(f"r{index}", draw(WHENS), draw(st.none() | PREDICATES)) for index in range(count))
    return Ruleset("generated", rules, version=draw(st.integers(0, 3)))


def compile_or_skip(ruleset: Ruleset) -> ConditionEngine:
    """The engine, or skip the example if it exceeds a documented compile limit."""
    try:
        return ConditionEngine(ruleset)
    except ValidationError:
        assume(False)
        raise


# -- properties ------------------------------------------------------------------------------------------


def near(value: Any) -> list[Any]:
    """Attribute values at a leaf operand's edges: itself, its twins in other types, its neighbours, and
    each of those in a list (for `contains`)."""
    if isinstance(value, tuple):
        return [item for listed in value for item in near(listed)]
    twins: list[Any] = [value, str(value)]
    if isinstance(value, bool):
        twins += [not value, int(value), float(value), str(value).lower()]
    elif isinstance(value, str):
        twins += [value + "z", "z" + value, value[:-1], value.upper(), "".join(c for c in value if c.isascii())]
    elif value is not None:
        number = float(value)
        twins += [number, number * 10, number / 10, number + 1, number - 1, -number, math.nextafter(number, math.inf)]
        if number.is_integer() and abs(number) < 2**64:
            twins += [int(number), int(number) + 1, bool(number in (0, 1) and number)]
    return [*twins, *([twin] for twin in twins), [value, "z"]]


@settings(max_examples=150, deadline=None)
@given(
    leaf=st.one_of(compares(["field", "profile"]), st.builds(HasTag, st.sampled_from(TAGS))),
    negate=st.booleans(),
    data=st.data(),
)
def test_leaf_agrees_with_reference(leaf: Predicate, negate: bool, data: st.DataObject) -> None:
    values = ATTR_VALUES if isinstance(leaf, HasTag) else st.sampled_from(near(leaf.value)) | ATTR_VALUES
    attrs = st.fixed_dictionaries({}, optional=dict.fromkeys(NAMES, values))
    cases = data.draw(st.lists(st.tuples(attrs, attrs, TAG_SETS), min_size=3, max_size=12))
    condition = Not(leaf) if negate else leaf
    engine = ConditionEngine(Ruleset("leaf", (make_rule("c", Single(Matcher("pay")), condition),)))
    try:
        results = engine.check_conditions([ConditionCheck("c", *case) for case in cases])
        assert results == [ref_holds(condition, *case) for case in cases]
    finally:
        engine.close()


OPERANDS: dict[str, list[Any]] = {
    "==": [0, 1, -0.0, 2.5, 1e-9, 1e20, 2**53 + 1, True, False, "", "a", "1", "a.b", "日本", "\ud800", '"\\'],
    ">": [0, 1, -0.0, 2.5, -1e-9, 1e20, 1e300, 5e-324, 2**53 + 1],
    "in": [
        (1,),
        (1, "1", True),
        ("a", "b"),
        (0, 2.5, 1e20),
        tuple(range(20)),
        tuple(map(str, range(20))),
        (*range(10), *"abcdefghij", False),
    ],
    "prefix": ["a", "a.b", "日本", "\ud800", ".*"],
    "exists": [None],
}
OPERAND_KIND = {"!=": "==", "contains": "==", ">=": ">", "<": ">", "<=": ">", "not_in": "in"}
EDGE_VALUES = [None, math.nan, math.inf, -math.inf, 10**400, [], {}, {"a": 1}, True, False, 0, 1, "", "x"]


@pytest.mark.parametrize("op", COMPARE_OPS)
def test_every_operator_at_its_edges(op: str) -> None:
    """Brute force: each operator, plain and negated, on values at its operands' edges."""
    for operand in OPERANDS[OPERAND_KIND.get(op, op)]:
        values = [*near(operand), *EDGE_VALUES]
        for source in ("field", "profile"):
            leaf = Compare(source, "a", op, operand)  # type: ignore[arg-type]
            rules = (
                make_rule("plain", Single(Matcher("pay")), leaf),
                make_rule("not", Single(Matcher("pay")), Not(leaf)),
            )
            engine = ConditionEngine(Ruleset("edges", rules))
            try:
                for value in values:
                    attrs = {"a": value}
                    checks = [ConditionCheck(rule.id, attrs, attrs, frozenset()) for rule in rules]
                    expected = [ref_holds(rule.condition, attrs, attrs, set()) for rule in rules if rule.condition]
                    assert engine.check_conditions(checks) == expected, (leaf, value)
                assert engine.check_conditions([ConditionCheck("plain", {}, {}, frozenset())]) == [op == "never"]
            finally:
                engine.close()


@settings(max_examples=200, deadline=None)
@given(condition=PREDICATES, cases=st.lists(st.tuples(ATTRS, ATTRS, TAG_SETS), min_size=1, max_size=10))
def test_condition_agrees_with_reference(
    condition: Predicate, cases: list[tuple[dict[str, Any], dict[str, Any], frozenset[str]]]
) -> None:
    engine = compile_or_skip(Ruleset("one", (make_rule("c", Single(Matcher("pay")), condition),)))
    try:
        results = engine.check_conditions([ConditionCheck("c", *case) for case in cases])
        assert results == [ref_holds(condition, *case) for case in cases]
    finally:
        engine.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ruleset=rulesets(),
    events=st.lists(st.tuples(st.sampled_from([*EVENT_TYPES, "other"]), ATTRS), max_size=5),
    checks=st.lists(st.tuples(ATTRS, ATTRS, TAG_SETS), min_size=1, max_size=3),
)
def test_engine_agrees_with_reference(
    ruleset: Ruleset,
    events: list[tuple[str, dict[str, Any]]],
    checks: list[tuple[dict[str, Any], dict[str, Any], frozenset[str]]],
) -> None:
    engine = compile_or_skip(ruleset)
    try:
        assert engine.match_events(events) == [ref_roles(ruleset, kind, attrs) for kind, attrs in events]
        stage_two = [(rule, ConditionCheck(rule.id, *check)) for rule in ruleset.rules for check in checks]
        expected = [
            rule.condition is None or ref_holds(rule.condition, check.attrs, check.profile, check.tags)
            for rule, check in stage_two
        ]
        assert engine.check_conditions([check for _, check in stage_two]) == expected
    finally:
        engine.close()


# -- examples --------------------------------------------------------------------------------------------


def field(name: str, op: str, value: Any = None) -> Compare:
    """A `field` comparison."""
    return Compare("field", name, op, value)  # type: ignore[arg-type]


def test_roles_of_each_when_kind() -> None:
    big_pay = Matcher("pay", field("amount", ">=", 1000))
    ruleset = Ruleset(
        "kinds",
        (
            make_rule("single", Single(big_pay)),
            make_rule("sequence", Sequence(Matcher("view"), Matcher("pay"), 60_000)),
            make_rule("absence", Absence(Matcher("cart", field("sku", "exists")), Matcher("pay"), 60_000)),
            make_rule("threshold", Threshold(Matcher("view", field("page", "prefix", "/p/")), 60_000, 3)),
            make_rule("first", First(Matcher("signup"))),
        ),
    )
    engine = ConditionEngine(ruleset)
    try:
        events = [
            ("pay", {"amount": 1500}),
            ("pay", {"amount": "5000"}),  # a string is not a number: no coercion
            ("view", {"page": "/p/42"}),
            ("view", {"page": "/home"}),
            ("cart", {"sku": "A1"}),
            ("cart", {"sku": None}),
            ("signup", {}),
            ("unknown", {"amount": 1500}),
        ]
        assert engine.match_events(events) == [
            {("single", "match"), ("sequence", "then"), ("absence", "missing")},
            {("sequence", "then"), ("absence", "missing")},
            {("sequence", "first"), ("threshold", "match")},
            {("sequence", "first")},
            {("absence", "first")},
            set(),
            {("first", "match")},
            set(),
        ]
        assert engine.match_events([]) == []
    finally:
        engine.close()


def test_conditions_read_event_profile_and_tags() -> None:
    condition = AllOf(
        (
            HasTag("vip"),
            Compare("profile", "region", "in", ("SH", "BJ")),
            Not(field("coupon", "==", True)),
            AnyOf((field("amount", ">", 99.5), Compare("profile", "points", ">=", 1e4))),
        )
    )
    ruleset = Ruleset(
        "cond", (make_rule("vip", Single(Matcher("pay")), condition), make_rule("plain", Single(Matcher("pay"))))
    )
    engine = ConditionEngine(ruleset)
    try:
        vip, sh = frozenset({"vip"}), {"region": "SH"}
        checks = [
            ConditionCheck("vip", {"amount": 100}, sh, vip),
            ConditionCheck("vip", {"amount": 100}, sh, frozenset()),
            ConditionCheck("vip", {"amount": 100}, {"region": "GZ"}, vip),
            ConditionCheck("vip", {"amount": 100, "coupon": True}, sh, vip),
            ConditionCheck("vip", {"amount": 100, "coupon": 1}, sh, vip),  # 1 is not True
            ConditionCheck("vip", {"amount": 10}, {**sh, "points": 10_000}, vip),
            ConditionCheck("vip", {"amount": 10}, sh, vip),
            ConditionCheck("plain", {}, {}, frozenset()),
        ]
        assert engine.check_conditions(checks) == [True, False, False, False, True, True, False, True]
        with pytest.raises(KeyError):
            engine.check_conditions([ConditionCheck("nope", {}, {}, frozenset())])
    finally:
        engine.close()


def test_constant_predicates_fold() -> None:
    ruleset = Ruleset(
        "constants",
        (
            make_rule("never", Single(Matcher("pay", AnyOf(()))), AllOf(())),
            make_rule("always", Single(Matcher("pay", AllOf(()))), Not(AnyOf(()))),
            make_rule("no", Single(Matcher("pay")), AnyOf(())),
        ),
    )
    engine = ConditionEngine(ruleset)
    try:
        assert engine.match_events([("pay", {})]) == [{("always", "match"), ("no", "match")}]
        checks = [ConditionCheck(rule_id, {}, {}, frozenset()) for rule_id in ("never", "always", "no")]
        assert engine.check_conditions(checks) == [True, True, False]
    finally:
        engine.close()


def test_close_is_idempotent_and_final() -> None:
    engine = ConditionEngine(Ruleset("closing", (make_rule("r", Single(Matcher("pay"))),)))
    assert engine.match_events([("pay", {})]) == [{("r", "match")}]
    engine.close()
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.match_events([("pay", {})])


def test_an_error_mid_evaluation_leaves_the_engine_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = tuple(make_rule(f"r{i}", Single(Matcher("pay", field("a", ">", i)))) for i in range(3))
    engine = ConditionEngine(Ruleset("recover", rules))
    try:
        real = durable_rules_engine.complete_and_start_action
        calls = iter([KeyboardInterrupt()])

        def flaky(handle: int, state: int) -> str | None:
            failure = next(calls, None)
            if failure is not None:
                raise failure
            return real(handle, state)

        monkeypatch.setattr(durable_rules_engine, "complete_and_start_action", flaky)
        with pytest.raises(KeyboardInterrupt):
            engine.match_events([("pay", {"a": 5})])
        assert engine.match_events([("pay", {"a": 5}), ("pay", {"a": 1.5})]) == [
            {("r0", "match"), ("r1", "match"), ("r2", "match")},
            {("r0", "match"), ("r1", "match")},
        ]
    finally:
        engine.close()


def test_two_versions_of_a_ruleset_coexist() -> None:
    def version(number: int, threshold: int) -> Ruleset:
        return Ruleset(
            "promo", (make_rule("big", Single(Matcher("pay", field("amount", ">", threshold)))),), version=number
        )

    old, new = ConditionEngine(version(1, 100)), ConditionEngine(version(2, 500))
    try:
        events = [("pay", {"amount": 300})]
        assert old.match_events(events) == [{("big", "match")}]
        assert new.match_events(events) == [set()]
        old.close()
        assert new.match_events([("pay", {"amount": 600})]) == [{("big", "match")}]
        again = ConditionEngine(version(1, 100))  # the same id and version compiled again
        assert again.match_events(events) == [{("big", "match")}]
        again.close()
    finally:
        old.close()
        new.close()


def test_numbers_in_exponent_notation_and_huge_ints() -> None:
    ruleset = Ruleset(
        "numbers",
        (
            make_rule("tiny", Single(Matcher("m", field("x", "<", 1e-9)))),
            make_rule("huge", Single(Matcher("m", field("x", ">=", 1e18)))),
            make_rule("eq", Single(Matcher("m", field("x", "==", 2**63 + 1)))),
        ),
    )
    engine = ConditionEngine(ruleset)
    try:
        assert engine.match_events([("m", {"x": 5e-324}), ("m", {"x": 10**20}), ("m", {"x": float(2**63)})]) == [
            {("tiny", "match")},
            {("huge", "match")},
            {("huge", "match"), ("eq", "match")},  # numbers compare as doubles
        ]
        assert engine.match_events([("m", {"x": 10**400}), ("m", {"x": math.inf}), ("m", {"x": "1e30"})]) == [set()] * 3
    finally:
        engine.close()


# -- durable_rules limits the compiler must keep us inside --------------------------------------------


def test_more_than_64_rules_matching_one_event() -> None:
    """durable overflowed its 64-entry match stack (error 303, then a segfault) past 64 matching rules."""
    rules = tuple(make_rule(f"r{i}", Single(Matcher("pay", field("amount", ">", -i)))) for i in range(300))
    engine = ConditionEngine(Ruleset("wide", rules))
    try:
        assert engine.match_events([("pay", {"amount": 1})] * 3) == [{(f"r{i}", "match") for i in range(300)}] * 3
    finally:
        engine.close()


def test_many_identical_matchers() -> None:
    """durable holds at most 256 rules ending at one node: identical matchers share one rule."""
    rules = tuple(make_rule(f"r{i}", Single(Matcher("pay"))) for i in range(300))
    engine = ConditionEngine(Ruleset("same", rules))
    try:
        assert engine.match_events([("pay", {})]) == [{(f"r{i}", "match") for i in range(300)}]
    finally:
        engine.close()


def test_long_in_lists() -> None:
    """durable hung forever compiling a node with 512 children, i.e. a 512-value `in` as `$or`."""
    values = tuple(f"sku-{i}" for i in range(1000))
    ruleset = Ruleset(
        "long",
        (
            make_rule("in", Single(Matcher("pay", field("sku", "in", values)))),
            make_rule("out", Single(Matcher("pay", field("sku", "not_in", (*values, 7))))),
        ),
    )
    engine = ConditionEngine(ruleset)
    try:
        events = [("pay", {"sku": "sku-999"}), ("pay", {"sku": "sku-1000"}), ("pay", {"sku": 7.0}), ("pay", {"sku": 8})]
        in_, out, none = {("in", "match")}, {("out", "match")}, set()
        assert engine.match_events([*events, ("pay", {}), ("pay", {"sku": True})]) == [in_, out, none, out, none, none]
    finally:
        engine.close()


def test_many_negations_in_one_conjunction() -> None:
    """A durable rule holds 14 `$or`s; each negated comparison takes one."""
    fourteen = AllOf(tuple(Not(field(f"f{i}", "==", i)) for i in range(14)))
    engine = ConditionEngine(Ruleset("neg", (make_rule("r", Single(Matcher("pay", fourteen))),)))
    try:
        assert engine.match_events([("pay", {}), ("pay", {"f3": 3})]) == [{("r", "match")}, set()]
    finally:
        engine.close()
    fifteen = AllOf(tuple(Not(field(f"f{i}", "==", i)) for i in range(15)))
    with pytest.raises(ValidationError) as raised:
        ConditionEngine(Ruleset("neg", (make_rule("r", Single(Matcher("pay", fifteen))),)))
    assert raised.value.path == "rules[0].when.where"


def test_expansion_limit_names_the_path() -> None:
    wide = AllOf(tuple(AnyOf((field(f"a{i}", "==", 1), field(f"b{i}", "==", 1))) for i in range(9)))  # 512 terms
    with pytest.raises(ValidationError) as raised:
        ConditionEngine(
            Ruleset("wide", (make_rule("ok", Single(Matcher("pay"))), make_rule("r", First(Matcher("pay")), wide)))
        )
    assert raised.value.path == "rules[1].if"


def test_where_cannot_read_the_profile() -> None:
    where = AnyOf((field("a", "exists"), HasTag("vip")))
    with pytest.raises(ValidationError) as raised:
        ConditionEngine(Ruleset("bad", (make_rule("r", Sequence(Matcher("a"), Matcher("b", where), 1000)),)))
    assert raised.value.path == "rules[0].when.sequence.then.where"


def test_wide_or_deep_predicates_fire_once() -> None:
    """`all` of `any`s whose branches all hold: durable would walk 2**k paths if nested."""
    deep = AllOf(tuple(AnyOf((field(f"a{i}", "exists"), field(f"b{i}", "exists"))) for i in range(8)))
    attrs = {f"{prefix}{i}": 1 for prefix in "ab" for i in range(8)}
    engine = ConditionEngine(Ruleset("deep", (make_rule("r", Single(Matcher("pay", deep)), deep),)))
    try:
        assert engine.match_events([("pay", attrs)]) == [{("r", "match")}]
        assert engine.check_conditions([ConditionCheck("r", attrs, {}, frozenset())]) == [True]
    finally:
        engine.close()


def test_unmatched_facts_on_fresh_rulesets() -> None:
    """durable freed an uninitialised pointer deleting a new state slot that matched nothing (crash)."""
    junk: list[bytearray] = []
    for index in range(2000):
        junk.append(bytearray(b"\xab" * (index % 700)))  # recycled, dirty heap is what made it crash
        del junk[:-50]
        engine = ConditionEngine(Ruleset("fresh", (make_rule("r", Single(Matcher("pay", field("a", "==", index)))),)))
        assert engine.match_events([("pay", {})]) == [set()]
        engine.close()
