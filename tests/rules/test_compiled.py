"""CompiledRuleset: stage 1 (`matchers`) and stage 2 (`conditions`) against the brute-force reference."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.compiled import CompiledRuleset, pattern_state_id
from rules.model import (
    Absence,
    AllOf,
    AnyOf,
    Compare,
    First,
    HasTag,
    Matcher,
    Not,
    Ruleset,
    Sequence,
    Single,
    Threshold,
)
from rules.predicates import NO_ATTRS, NO_TAGS, always
from rules.registry import compile_ruleset
from tests.rules.predicate_reference import (
    ATTRS,
    EVENT_TYPES,
    TAG_SETS,
    Role,
    field,
    make_rule,
    ref_holds,
    ref_matchers,
    ref_roles,
    rulesets,
)


def stage_one(compiled: CompiledRuleset, event_type: str, attrs: dict[str, Any]) -> frozenset[Role]:
    """The (rule id, role) pairs an event matches, as the worker computes them."""
    return frozenset(
        (match.rule.id, match.role)
        for match in compiled.matchers.get(event_type, ())
        if match.where(attrs, NO_ATTRS, NO_TAGS)
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ruleset=rulesets(),
    events=st.lists(st.tuples(st.sampled_from([*EVENT_TYPES, "other"]), ATTRS), max_size=5),
    checks=st.lists(st.tuples(ATTRS, ATTRS, TAG_SETS), min_size=1, max_size=3),
)
def test_compiled_agrees_with_reference(
    ruleset: Ruleset,
    events: list[tuple[str, dict[str, Any]]],
    checks: list[tuple[dict[str, Any], dict[str, Any], frozenset[str]]],
) -> None:
    compiled = CompiledRuleset.build(ruleset)
    for event_type, attrs in events:
        assert stage_one(compiled, event_type, attrs) == ref_roles(ruleset, event_type, attrs)
    for rule in ruleset.rules:
        for attrs, profile, tags in checks:
            expected = rule.condition is None or ref_holds(rule.condition, attrs, profile, tags)
            assert compiled.conditions[rule.id](attrs, profile, tags) == expected
    # Every matcher once, under its event type, by priority (highest first), then document order.
    ranked = sorted(enumerate(ruleset.rules), key=lambda item: (-item[1].priority, item[0]))
    for event_type in {*EVENT_TYPES, "other"}:
        expected_order = [
            (rule.id, role)
            for _, rule in ranked
            for role, matcher in ref_matchers(rule.when)
            if matcher.event == event_type
        ]
        assert [(match.rule.id, match.role) for match in compiled.matchers.get(event_type, ())] == expected_order


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
            make_rule("self", Sequence(Matcher("view"), Matcher("view", field("page", "==", "/cart")), 60_000)),
        ),
    )
    compiled = CompiledRuleset.build(ruleset)
    events: list[tuple[str, dict[str, Any], set[Role]]] = [
        ("pay", {"amount": 1500}, {("single", "match"), ("sequence", "then"), ("absence", "missing")}),
        ("pay", {"amount": "5000"}, {("sequence", "then"), ("absence", "missing")}),  # a string is not a number
        ("view", {"page": "/p/42"}, {("sequence", "first"), ("threshold", "match"), ("self", "first")}),
        ("view", {"page": "/cart"}, {("sequence", "first"), ("self", "first"), ("self", "then")}),
        ("cart", {"sku": "A1"}, {("absence", "first")}),
        ("cart", {"sku": None}, set()),
        ("signup", {}, {("first", "match")}),
        ("unknown", {"amount": 1500}, set()),
    ]
    for event_type, attrs, expected in events:
        assert stage_one(compiled, event_type, attrs) == expected, (event_type, attrs)
    assert set(compiled.matchers) == {"pay", "view", "cart", "signup"}


def test_matchers_by_priority_then_document_order() -> None:
    rules = (
        make_rule("low", Single(Matcher("pay")), priority=-5),
        make_rule("plain", Single(Matcher("pay"))),
        make_rule("high", Sequence(Matcher("pay"), Matcher("pay"), 1000), priority=10),
        make_rule("plain-too", Single(Matcher("pay"))),
    )
    compiled = CompiledRuleset.build(Ruleset("order", rules))
    assert [(match.rule.id, match.role) for match in compiled.matchers["pay"]] == [
        ("high", "first"),
        ("high", "then"),
        ("plain", "match"),
        ("plain-too", "match"),
        ("low", "match"),
    ]
    assert all(match.rule is compiled.rules[match.rule.id] for match in compiled.matchers["pay"])


def test_conditions_read_event_profile_and_tags() -> None:
    condition = AllOf((HasTag("vip"), Compare("profile", "region", "==", "SH"), field("amount", ">", 99.5)))
    rules = (make_rule("vip", Single(Matcher("pay")), condition), make_rule("plain", Single(Matcher("pay"))))
    compiled = CompiledRuleset.build(Ruleset("cond", rules))
    vip = compiled.conditions["vip"]
    assert vip({"amount": 100}, {"region": "SH"}, frozenset({"vip"}))
    assert not vip({"amount": 100}, {"region": "SH"}, frozenset())
    assert not vip({"amount": 100, "region": "SH"}, {}, frozenset({"vip"}))
    assert compiled.conditions["plain"] is always


def test_state_ids_follow_the_pattern_only() -> None:
    """A new version keeps a rule's pattern state when only its `if` or actions changed."""
    rule = make_rule("r", Threshold(Matcher("view"), 60_000, 3))
    same_shape = make_rule("r", Threshold(Matcher("view"), 60_000, 3), condition=HasTag("vip"))
    other_window = make_rule("r", Threshold(Matcher("view"), 120_000, 3))
    other_where = make_rule("r", Threshold(Matcher("view", field("a", "==", True)), 60_000, 3))
    other_value = make_rule("r", Threshold(Matcher("view", field("a", "==", 1)), 60_000, 3))  # 1 is not True
    ids = [pattern_state_id("rs", r) for r in (rule, same_shape, other_window, other_where, other_value)]
    assert ids[0] == ids[1]
    assert len(set(ids[1:])) == 4
    assert pattern_state_id("rs", rule) != pattern_state_id("other", rule)
    compiled = CompiledRuleset.build(Ruleset("rs", (rule,)))
    assert compiled.state_ids == {"r": ids[0]}


def test_predicates_past_durable_rules_limits_compile_and_hold() -> None:
    """What durable_rules could not hold (512 alternatives, 15 negations in one `all`, 300 rules matching
    one event) now validates and evaluates like any other ruleset."""

    def rule(rule_id: str, where: Any = None, condition: Any = None) -> dict[str, Any]:
        document: dict[str, Any] = {"id": rule_id, "when": {"event": "pay"}, "then": [{"action": "tag", "add": ["x"]}]}
        if where is not None:
            document["when"]["where"] = where
        if condition is not None:
            document["if"] = condition
        return document

    def equals(name: str, value: Any) -> dict[str, Any]:
        return {"field": name, "op": "==", "value": value}

    wide = {"all": [{"any": [equals(f"a{i}", 1), equals(f"b{i}", 1)]} for i in range(9)]}  # 2**9 alternatives
    negations = {"all": [{"not": equals(f"f{i}", i)} for i in range(15)]}
    document = {
        "rules": [
            rule("wide", condition=wide),
            rule("negations", where=negations),
            *(rule(f"r{i}", where={"field": "amount", "op": ">", "value": -i}) for i in range(300)),
        ]
    }
    compiled = CompiledRuleset.build(compile_ruleset(document, ruleset_id="limits", lateness_ms=1000))
    everyone = {("wide", "match"), ("negations", "match"), *((f"r{i}", "match") for i in range(300))}
    assert stage_one(compiled, "pay", {"amount": 1}) == everyone
    assert stage_one(compiled, "pay", {"amount": 0, "f3": 3}) == everyone - {("negations", "match"), ("r0", "match")}
    attrs = {f"{'ab'[i % 2]}{i}": 1 for i in range(9)}
    assert compiled.conditions["wide"](attrs, {}, frozenset())
    assert not compiled.conditions["wide"]({**attrs, "a8": 2}, {}, frozenset())
    assert not compiled.conditions["wide"]({}, {}, frozenset())


def test_not_any_and_constant_matchers() -> None:
    rules = (
        make_rule("never", Single(Matcher("pay", AnyOf(()))), AllOf(())),
        make_rule("always", Single(Matcher("pay", AllOf(()))), Not(AnyOf(()))),
        make_rule("no", Single(Matcher("pay")), AnyOf(())),
    )
    compiled = CompiledRuleset.build(Ruleset("constants", rules))
    assert stage_one(compiled, "pay", {}) == {("always", "match"), ("no", "match")}
    assert [compiled.conditions[r](NO_ATTRS, NO_ATTRS, NO_TAGS) for r in ("never", "always", "no")] == [
        True,
        True,
        False,
    ]
