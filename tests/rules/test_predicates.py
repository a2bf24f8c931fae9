"""compile_predicate against a brute-force reference of the predicate semantics, and worked examples."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.model import COMPARE_OPS, AllOf, AnyOf, Compare, HasTag, Not, Predicate
from rules.predicates import always, compile_predicate, json_equal, never, scalar_key, type_class
from tests.rules.predicate_reference import (
    ATTR_VALUES,
    ATTRS,
    NAMES,
    PREDICATES,
    TAG_SETS,
    TAGS,
    compares,
    field,
    ref_holds,
)

Case = tuple[dict[str, Any], dict[str, Any], frozenset[str]]  # (event attrs, profile attrs, tags)


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
        if isinstance(value, int):  # exact neighbours a double cannot tell apart from the value
            twins += [value + 1, value - 1]
        if number.is_integer() and abs(number) < 2**64:
            twins += [int(number), int(number) + 1, bool(number in (0, 1) and number)]
    return [*twins, *([twin] for twin in twins), [value, "z"]]


@settings(max_examples=200, deadline=None)
@given(
    leaf=st.one_of(compares(["field", "profile"]), st.builds(HasTag, st.sampled_from(TAGS))),
    negate=st.booleans(),
    data=st.data(),
)
def test_leaf_agrees_with_reference(leaf: Compare | HasTag, negate: bool, data: st.DataObject) -> None:
    values = ATTR_VALUES if isinstance(leaf, HasTag) else st.sampled_from(near(leaf.value)) | ATTR_VALUES
    attrs = st.fixed_dictionaries({}, optional=dict.fromkeys(NAMES, values))
    cases: list[Case] = data.draw(st.lists(st.tuples(attrs, attrs, TAG_SETS), min_size=3, max_size=12))
    condition = Not(leaf) if negate else leaf
    check = compile_predicate(condition)
    assert [check(*case) for case in cases] == [ref_holds(condition, *case) for case in cases]


OPERANDS: dict[str, list[Any]] = {
    "==": [0, 1, -0.0, 2.5, 1e-9, 1e20, 2**53 + 1, True, False, "", "a", "1", "a.b", "日本", "\ud800", '"\\'],
    ">": [0, 1, -0.0, 2.5, -1e-9, 1e20, 1e300, 5e-324, 2**53 + 1],
    "in": [
        (1,),
        (1, "1", True),
        ("a", "b"),
        (0, 2.5, 1e20),
        (2**53 + 1,),
        tuple(range(20)),
        tuple(map(str, range(20))),
        (*range(10), *"abcdefghij", False),
    ],
    "prefix": ["a", "a.b", "日本", "\ud800", ".*"],
    "exists": [None],
}
OPERAND_KIND = {"!=": "==", "contains": "==", ">=": ">", "<": ">", "<=": ">", "not_in": "in"}
EDGE_VALUES: list[Any] = [None, math.nan, math.inf, -math.inf, 10**400, [], {}, {"a": 1}, True, False, 0, 1, "", "x"]


@pytest.mark.parametrize("op", COMPARE_OPS)
def test_every_operator_at_its_edges(op: str) -> None:
    """Brute force: each operator, plain and negated, on event or profile values at its operands' edges."""
    for operand in OPERANDS[OPERAND_KIND.get(op, op)]:
        values = [*near(operand), *EDGE_VALUES]
        for source in ("field", "profile"):
            leaf = Compare(source, "a", op, operand)  # type: ignore[arg-type]
            for predicate in (leaf, Not(leaf)):
                check = compile_predicate(predicate)
                for value in values:
                    attrs = {"a": value}
                    assert check(attrs, attrs, frozenset()) == ref_holds(predicate, attrs, attrs, set()), (
                        predicate,
                        value,
                    )
                # Missing: every comparison is false, so its negation holds.
                assert check({}, {}, frozenset()) == isinstance(predicate, Not)


@settings(max_examples=300, deadline=None)
@given(condition=PREDICATES, cases=st.lists(st.tuples(ATTRS, ATTRS, TAG_SETS), min_size=1, max_size=10))
def test_condition_agrees_with_reference(condition: Predicate, cases: list[Case]) -> None:
    check = compile_predicate(condition)
    assert [check(*case) for case in cases] == [ref_holds(condition, *case) for case in cases]


# -- examples --------------------------------------------------------------------------------------------


def test_conditions_read_event_profile_and_tags() -> None:
    check = compile_predicate(
        AllOf(
            (
                HasTag("vip"),
                Compare("profile", "region", "in", ("SH", "BJ")),
                Not(field("coupon", "==", True)),
                AnyOf((field("amount", ">", 99.5), Compare("profile", "points", ">=", 1e4))),
            )
        )
    )
    vip, sh = frozenset({"vip"}), {"region": "SH"}
    cases: list[tuple[Case, bool]] = [
        (({"amount": 100}, sh, vip), True),
        (({"amount": 100}, sh, frozenset()), False),
        (({"amount": 100}, {"region": "GZ"}, vip), False),
        (({"amount": 100, "coupon": True}, sh, vip), False),
        (({"amount": 100, "coupon": 1}, sh, vip), True),  # 1 is not True
        (({"amount": 10}, {**sh, "points": 10_000}, vip), True),
        (({"amount": 10}, sh, vip), False),
        (({"region": "SH", "amount": 100}, {}, vip), False),  # the profile's region, not the event's
    ]
    assert [check(*case) for case, _ in cases] == [expected for _, expected in cases]


def test_constant_predicates() -> None:
    """`all []` holds, `any []` does not, whatever the input; no predicate at all is `always`."""
    assert compile_predicate(None) is always
    assert compile_predicate(AllOf(())) is always
    assert compile_predicate(AnyOf(())) is never
    inputs: list[Case] = [({}, {}, frozenset()), ({"a": 1}, {"a": 1}, frozenset({"vip"}))]
    for case in inputs:
        assert compile_predicate(Not(AnyOf(())))(*case) is True
        assert compile_predicate(Not(AllOf(())))(*case) is False
        assert compile_predicate(AllOf((AnyOf(()), field("a", "exists"))))(*case) is False


def test_single_and_double_items_keep_their_meaning() -> None:
    """`all`/`any` of one and of two items are specialised closures: each still means what it says."""
    a, b = field("a", "==", 1), field("b", "==", 1)
    for attrs in ({}, {"a": 1}, {"b": 1}, {"a": 1, "b": 1}):
        for predicate in (AllOf((a,)), AnyOf((a,)), AllOf((a, b)), AnyOf((a, b)), AllOf((a, b, a)), AnyOf((b, a, b))):
            assert compile_predicate(predicate)(attrs, {}, frozenset()) == ref_holds(predicate, attrs, {}, set())


def test_numbers_compare_exactly() -> None:
    """Integers and floats compare as numbers, exactly: durable_rules compared them as doubles."""
    assert compile_predicate(field("x", "<", 1e-9))({"x": 5e-324}, {}, frozenset())
    assert compile_predicate(field("x", ">=", 1e18))({"x": 10**20}, {}, frozenset())
    equal = compile_predicate(field("x", "==", 2**63 + 1))
    assert not equal({"x": float(2**63)}, {}, frozenset())  # equal as doubles, not as numbers
    assert equal({"x": 2**63 + 1}, {}, frozenset())
    assert compile_predicate(field("x", "in", (2**53 + 1,)))({"x": 2**53 + 1}, {}, frozenset())
    assert not compile_predicate(field("x", "in", (2**53 + 1,)))({"x": 2.0**53}, {}, frozenset())
    assert compile_predicate(field("x", ">", 1e300))({"x": 10**400}, {}, frozenset())  # past the double range
    for value in (math.inf, -math.inf, math.nan, "1e30", True):
        for op in (">", "<", "!="):
            assert not compile_predicate(field("x", op, 0))({"x": value}, {}, frozenset()), (op, value)


def test_long_in_lists() -> None:
    """1,000 values, as many as the schema admits; 7 and 7.0 are one value, True is not 1."""
    values = tuple(f"sku-{i}" for i in range(1000))
    in_, out = compile_predicate(field("sku", "in", values)), compile_predicate(field("sku", "not_in", (*values, 7)))
    attrs: list[dict[str, Any]] = [
        {"sku": "sku-999"},
        {"sku": "sku-1000"},
        {"sku": 7.0},
        {"sku": 8},
        {},
        {"sku": True},
        {"sku": None},
    ]
    assert [in_(a, {}, frozenset()) for a in attrs] == [True, False, False, False, False, False, False]
    assert [out(a, {}, frozenset()) for a in attrs] == [False, True, False, True, False, False, False]


def test_contains_and_prefix() -> None:
    contains_a = compile_predicate(field("s", "contains", "a"))
    contains_1 = compile_predicate(field("s", "contains", 1))
    prefix = compile_predicate(field("s", "prefix", "/p/"))
    values: list[Any] = ["cat", "dog", ["a", "b"], ["ab"], [1.0], [True], "1", 1, None, {"a": 1}, "/p/42", "/P/4"]
    assert [contains_a({"s": v}, {}, frozenset()) for v in values] == [
        *(True, False, True, False, False, False, False, False, False, False, False, False)
    ]
    assert [contains_1({"s": v}, {}, frozenset()) for v in values] == [
        *(False, False, False, False, True, False, False, False, False, False, False, False)
    ]
    assert [prefix({"s": v}, {}, frozenset()) for v in values] == [*(False,) * 10, True, False]


def test_scalar_helpers() -> None:
    samples: list[Any] = [1, 1.5, True, "x", None, [], math.nan, math.inf, 10**400]
    assert [type_class(v) for v in samples] == [*("num", "num", "bool", "str", None, None, None, None, "num")]
    assert scalar_key(1) == scalar_key(1.0) and hash(scalar_key(1)) == hash(scalar_key(1.0))
    assert scalar_key(True) != scalar_key(1)
    assert json_equal([1, {"a": "x"}], [1.0, {"a": "x"}])
    assert not json_equal([1], [True]) and not json_equal({"a": 1}, {"a": 1, "b": 2}) and json_equal(None, None)


def test_number_subclasses_take_the_slow_path() -> None:
    """An int subclass past the double range made type_class raise OverflowError (math.isfinite)."""

    class Count(int):
        pass

    class Amount(float):
        pass

    assert [type_class(v) for v in (Count(10**400), Count(3), Amount(2.5), Amount(math.inf))] == [
        *("num", "num", "num", None)
    ]
    assert compile_predicate(field("x", ">", 1e300))({"x": Count(10**400)}, {}, frozenset())


def test_unknown_operator_fails_at_compile_time() -> None:
    with pytest.raises(ValueError, match="unknown operator"):
        compile_predicate(field("a", "~=", 1))
