"""Predicates as durable_rules conditions: a disjunction of conjunctions of slot tests.

Each conjunction ("term") becomes one durable rule. Nested `$and`/`$or` would be shorter but durable
walks every satisfied `$or` branch as its own path: `all` of k `any`s fires up to 2**k times and
overflows its 64-entry match stack (error 303, then a crash), and a rule holds at most 14 `$or`s. So
`any` is expanded here (bounded by MAX_TERMS), and the only `$or`s left inside a term have branches
that exclude each other — a slot absent vs. present, one slot equal to distinct values — so each
still walks one path. `not` has no durable operator: it is pushed down to the leaves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from beacon.errors import ValidationError
from rules.facts import (
    ScalarClass,
    ScalarKey,
    Slots,
    contains_probe,
    json_scalar,
    member_probe,
    prefix_probe,
    scalar_key,
    tag_probe,
)
from rules.model import AllOf, AnyOf, Compare, HasTag, Not, Predicate

MAX_TERMS = 256  # conjunctions per predicate: each is a durable rule, and `all` of `any`s multiplies
# durable fails a rule past 31 expression slots; `$and`/`$or` take 2 each, the rule's own `$and` 2.
EXPRESSION_BUDGET = 29
IN_ENGINE_MAX = 16  # longer `in` lists are a computed flag: a branch per value is a child per value
_DURABLE_OPS = {"!=": "$neq", ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte"}
_NEGATED = {"==": "!=", "!=": "==", ">": "<=", ">=": "<", "<": ">=", "<=": ">"}


@dataclass(frozen=True, slots=True, order=True)
class Literal:
    """One durable condition (JSON text) of a term, the expression slots it takes, the slots it reads."""

    text: str
    cost: int = 0
    slots: frozenset[str] = field(default=frozenset(), compare=False)


Term = frozenset[Literal]


def compile_predicate(predicate: Predicate, slots: Slots, path: str, *, event_only: bool) -> list[Term]:
    """The predicate as minimal conjunctions (`[]`: never holds; `[frozenset()]`: always holds)."""
    terms = _terms(predicate, False, slots, path, event_only)
    if len(terms) > MAX_TERMS:
        raise ValidationError(f"expands to more than {MAX_TERMS} alternatives", path=path)
    for term in terms:
        if sum(literal.cost for literal in term) > EXPRESSION_BUDGET:
            raise ValidationError(
                f"too many negated or `in` tests combined by `all` (at most {EXPRESSION_BUDGET // 2})", path=path
            )
    return sorted(terms, key=lambda term: sorted(term))


def _terms(predicate: Predicate, negate: bool, slots: Slots, path: str, event_only: bool) -> list[Term]:
    if isinstance(predicate, Not):
        return _terms(predicate.item, not negate, slots, path, event_only)
    if isinstance(predicate, AllOf | AnyOf):
        parts = [_terms(item, negate, slots, path, event_only) for item in predicate.items]
        if isinstance(predicate, AllOf) != negate:  # all, or not-any: a conjunction
            return _product(parts, path)
        return _minimal(term for part in parts for term in part)
    if event_only and (isinstance(predicate, HasTag) or predicate.source == "profile"):
        raise ValidationError('profile and tag conditions belong in the rule\'s "if"', path=path)
    if isinstance(predicate, HasTag):
        return _flag(slots.probe(("tag", predicate.tag), lambda: tag_probe(predicate.tag)), negate)
    return _compare(predicate, negate, slots, path)


def _product(parts: list[list[Term]], path: str) -> list[Term]:
    terms: list[Term] = [frozenset()]
    for part in parts:
        if len(terms) * len(part) > MAX_TERMS**2:
            raise ValidationError(f"expands to more than {MAX_TERMS} alternatives", path=path)
        terms = _minimal(left | right for left in terms for right in part)
        if len(terms) > MAX_TERMS:
            raise ValidationError(f"expands to more than {MAX_TERMS} alternatives", path=path)
    return terms


def _minimal(terms: Iterable[Term]) -> list[Term]:
    """Drops terms implied by a smaller one (A or (A and B) is A): fewer rules, fewer duplicate firings."""
    kept: list[Term] = []
    for term in sorted(set(terms), key=len):
        if not any(smaller <= term for smaller in kept):
            kept.append(term)
    return kept


def _compare(leaf: Compare, negate: bool, slots: Slots, path: str) -> list[Term]:
    source, name, op, value = leaf.source, leaf.name, leaf.op, leaf.value
    if op == "exists":
        slot = slots.typed(source, name, "exists")
        return [frozenset({_literal(_present(slot, not negate), slot)})]
    if op in ("contains", "prefix"):
        key = scalar_key(value)
        if key is None or (op == "prefix" and key[0] != "str"):
            raise ValidationError(f"`{op}` takes a {'string' if op == 'prefix' else 'scalar'}", path=path)
        make = contains_probe if op == "contains" else prefix_probe
        return _flag(slots.probe((op, source, name, key), lambda: make(source, name, value)), negate)
    if op in ("in", "not_in"):
        return _membership(leaf, negate, slots, path)
    key = scalar_key(value)
    if key is None or (op not in ("==", "!=") and key[0] != "num"):
        raise ValidationError(f"`{op}` takes a {'scalar' if op in ('==', '!=') else 'finite number'}", path=path)
    slot = slots.typed(source, name, key[0])
    if not negate:
        return [frozenset({_literal(_test(op, slot, key), slot)})]
    # not (x op v): the slot is absent (attribute missing or of another type), or the opposite holds.
    return [frozenset({_literal(_any_of([_present(slot, False), _test(_NEGATED[op], slot, key)]), slot)})]


def _membership(leaf: Compare, negate: bool, slots: Slots, path: str) -> list[Term]:
    keys = [scalar_key(item) for item in leaf.value] if isinstance(leaf.value, list | tuple) else [None]
    if None in keys:
        raise ValidationError(f"`{leaf.op}` takes a list of scalars", path=path)
    unique: list[ScalarKey] = list(dict.fromkeys(key for key in keys if key is not None))  # 1 and 1.0: one
    positive = leaf.op == "in"
    if len(unique) > IN_ENGINE_MAX:
        members = frozenset(unique)
        make = lambda: member_probe(leaf.source, leaf.name, members, negate=not positive)  # noqa: E731
        return _flag(slots.probe((leaf.op, leaf.source, leaf.name, members), make), negate)
    by_class: dict[ScalarClass, list[ScalarKey]] = {}
    for key in unique:
        by_class.setdefault(key[0], []).append(key)
    typed = {kind: slots.typed(leaf.source, leaf.name, kind) for kind in by_class}
    if positive and not negate:  # the attribute's one typed slot equals one of distinct values
        return [frozenset({_literal(_any_of([_test("==", typed[k[0]], k) for k in unique]), *typed.values())})]
    if not negate:  # not_in: a term per type class, that slot present and equal to none of its values
        return [
            frozenset(_literal(_test("!=", typed[kind], key), typed[kind]) for key in keys_of)
            for kind, keys_of in by_class.items()
        ]
    literals = []
    for kind, keys_of in by_class.items():
        slot = typed[kind]
        if positive:  # not (in): the class's slot is absent, or equals none of its values
            rest = [_all_of([_test("!=", slot, key) for key in keys_of])]
        else:  # not (not_in): the class's slot is absent, or equals one of its values
            rest = [_test("==", slot, key) for key in keys_of]
        literals.append(_literal(_any_of([_present(slot, False), *rest]), slot))
    return [frozenset(literals)]


def _flag(slot: str, negate: bool) -> list[Term]:
    """A computed flag is projected only when it holds."""
    return [frozenset({_literal(_present(slot, not negate), slot)})]


# A durable condition as (JSON text, expression slots it takes).
Condition = tuple[str, int]


def _literal(condition: Condition, *slots: str) -> Literal:
    return Literal(condition[0], condition[1], frozenset(slots))


def _test(op: str, slot: str, key: ScalarKey) -> Condition:
    if op == "==":
        return f'{{"{slot}":{json_scalar(key)}}}', 0
    return f'{{"{_DURABLE_OPS[op]}":{{"{slot}":{json_scalar(key)}}}}}', 0


def _present(slot: str, present: bool) -> Condition:
    return f'{{"{"$ex" if present else "$nex"}":{{"{slot}":1}}}}', 0


def _any_of(conditions: list[Condition]) -> Condition:
    """`$or` of conditions that exclude each other (so durable walks one branch at most)."""
    if len(conditions) == 1:
        return conditions[0]
    return '{"$or":[' + ",".join(t for t, _ in conditions) + "]}", 2 + sum(c for _, c in conditions)


def _all_of(conditions: list[Condition]) -> Condition:
    if len(conditions) == 1:
        return conditions[0]
    return '{"$and":[' + ",".join(t for t, _ in conditions) + "]}", 2 + sum(c for _, c in conditions)
