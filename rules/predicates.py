"""Predicates compiled to Python closures: the one implementation of the predicate semantics.

Semantics (the JSON language's contract; `tests/rules/test_predicates.py` checks them against a
brute-force reference on random predicates and values):
- Every comparison on a missing, null or wrongly typed attribute is false, `!=` and `not_in`
  included; `{"not": P}` inverts the whole of P. Attribute names are flat keys of attrs / profile.
- Type classes: finite numbers (int or float, never bool), strings, booleans. `==` / `!=` compare
  within one class: 1 == 1.0, "1" != 1 is false (wrong type), True == 1 is false.
- `>` `>=` `<` `<=`: numbers only. `in`: the attribute is a scalar equal to a listed value.
  `not_in`: a scalar of a type class that occurs in the list, equal to none of the values.
- `exists`: present and not null. `contains`: a string holding the (string) value, or a list with
  an element equal to the value. `prefix`: a string starting with the value. `tag`: the user has it.
- `all []` holds; `any []` does not.

Each leaf becomes one small closure specialised on its operator and operand's type class when the
ruleset compiles, so evaluating a `where` costs a few Python calls and no dispatch on the operator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Set
from typing import Any

from rules.model import AllOf, AnyOf, Compare, HasTag, Not, Predicate

# (event attrs, profile attrs, tags) -> holds
Check = Callable[[Mapping[str, Any], Mapping[str, Any], Set[str]], bool]
NO_ATTRS: Mapping[str, Any] = {}
NO_TAGS: frozenset[str] = frozenset()


def always(attrs: Mapping[str, Any], profile: Mapping[str, Any], tags: Set[str]) -> bool:
    """The predicate of a matcher without `where` and a rule without `if`."""
    return True


def never(attrs: Mapping[str, Any], profile: Mapping[str, Any], tags: Set[str]) -> bool:
    """`any []`."""
    return False


def type_class(value: Any) -> str | None:
    """ "num", "str" or "bool" for a scalar (finite numbers only); None for anything else."""
    kind = type(value)
    if kind is bool:
        return "bool"
    if kind is str:
        return "str"
    if kind is int:
        return "num"
    if kind is float:
        return "num" if math.isfinite(value) else None
    # Subclasses (rare: decoded JSON gives exact types) take the slow path.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "str"
    if isinstance(value, int):  # every int is finite; math.isfinite() would overflow past 1e308
        return "num"
    if isinstance(value, float):
        return "num" if math.isfinite(value) else None
    return None


def scalar_key(value: Any) -> tuple[str, Any] | None:
    """A hashable key under which equal JSON scalars meet (1 and 1.0 do; True and 1 do not)."""
    kind = type_class(value)
    return None if kind is None else (kind, value)


def json_equal(left: Any, right: Any) -> bool:
    """Equality of JSON values without coercion: 1 == 1.0, "3" != 3, true != 1."""
    left_kind, right_kind = type_class(left), type_class(right)
    if left_kind is not None or right_kind is not None:
        return left_kind == right_kind and left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[key], right[key]) for key in left)
    return left is None and right is None


def compile_predicate(predicate: Predicate | None) -> Check:
    """A closure deciding `predicate` for (event attrs, profile attrs, tags); None compiles to `always`."""
    if predicate is None:
        return always
    if isinstance(predicate, AllOf):
        items = tuple(compile_predicate(item) for item in predicate.items)
        if not items:
            return always
        if len(items) == 1:
            return items[0]
        if len(items) == 2:
            first, second = items
            return lambda attrs, profile, tags: first(attrs, profile, tags) and second(attrs, profile, tags)
        return lambda attrs, profile, tags: all(item(attrs, profile, tags) for item in items)
    if isinstance(predicate, AnyOf):
        items = tuple(compile_predicate(item) for item in predicate.items)
        if not items:
            return never
        if len(items) == 1:
            return items[0]
        return lambda attrs, profile, tags: any(item(attrs, profile, tags) for item in items)
    if isinstance(predicate, Not):
        inner = compile_predicate(predicate.item)
        return lambda attrs, profile, tags: not inner(attrs, profile, tags)
    if isinstance(predicate, HasTag):
        tag = predicate.tag
        return lambda attrs, profile, tags: tag in tags
    return _compare(predicate)


def _compare(leaf: Compare) -> Check:
    test = _value_test(leaf.op, leaf.value)
    name = leaf.name
    if leaf.source == "field":
        return lambda attrs, profile, tags: test(attrs.get(name))
    return lambda attrs, profile, tags: test(profile.get(name))


def _value_test(op: str, operand: Any) -> Callable[[Any], bool]:
    """The test of one attribute value (None when missing) against the operand."""
    if op == "exists":
        return lambda value: value is not None
    if op in ("==", "!="):
        wanted = type_class(operand)
        equal = op == "=="
        return lambda value: type_class(value) == wanted and (value == operand) == equal
    if op in (">", ">=", "<", "<="):
        compare: Callable[[Any], bool] = {
            ">": lambda value: value > operand,
            ">=": lambda value: value >= operand,
            "<": lambda value: value < operand,
            "<=": lambda value: value <= operand,
        }[op]
        return lambda value: type_class(value) == "num" and compare(value)
    if op == "in":
        members = frozenset(key for key in map(scalar_key, operand) if key is not None)
        return lambda value: scalar_key(value) in members
    if op == "not_in":
        members = frozenset(key for key in map(scalar_key, operand) if key is not None)
        classes = frozenset(kind for kind, _ in members)
        return lambda value: (key := scalar_key(value)) is not None and key[0] in classes and key not in members

    if op == "contains":

        def contains(value: Any) -> bool:
            if isinstance(value, str):
                return isinstance(operand, str) and operand in value
            if isinstance(value, list):
                return any(json_equal(item, operand) for item in value)
            return False

        return contains
    if op == "prefix":
        return lambda value: isinstance(value, str) and value.startswith(operand)
    raise ValueError(f"unknown operator {op!r}")
