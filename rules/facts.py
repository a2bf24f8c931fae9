"""Engine facts: typed slots projected from event attrs, profile and tags, written as durable JSON.

durable_rules compares whatever JSON it gets with coercion (`"abc" >= 1000` holds, `"1" < 2.5` holds),
rejects numbers in exponent notation (error 204) and parses integers with `atoll` (saturating past
2**63). So no attribute reaches it raw: every slot holds one type class only — a finite number
(always written as a positional double), a string, a boolean, or a `true` flag computed here — and is
absent when the attribute does not fit.
"""

from __future__ import annotations

import json.encoder
import math
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

ScalarClass = Literal["num", "str", "bool"]
ScalarKey = tuple[ScalarClass, Any]
# A computed flag: (event attrs, profile attrs, tags) -> does it hold.
Probe = Callable[[Mapping[str, Any], Mapping[str, Any], Set[str]], bool]

_encode_string = json.encoder.encode_basestring_ascii  # ASCII output: lone surrogates stay escaped
FIXED_NAMES = ("sid", "id")  # durable's own fact properties


def number_value(value: Any) -> float | None:
    """The value as a finite float if it is a number (booleans are not), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int past the float range
        return None
    return number if math.isfinite(number) else None


def scalar_key(value: Any) -> ScalarKey | None:
    """(type class, value) of a scalar; equal keys are equal under the language's `==` (1 == 1.0)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, str):
        return ("str", value)
    number = number_value(value)
    return None if number is None else ("num", number)


def json_number(number: float) -> str:
    """A finite float as a JSON double durable parses exactly: positional digits, always a point."""
    text = repr(number)
    if "e" in text:
        text = format(Decimal(text), "f")  # repr's shortest digits, so atof() reads the same double
        if "." not in text:
            text += ".0"
    return text


def json_scalar(key: ScalarKey) -> str:
    """The JSON text of a scalar key's value."""
    kind, value = key
    if kind == "num":
        return json_number(value)
    if kind == "bool":
        return "true" if value else "false"
    return _encode_string(value)


def fnv1_32(name: str) -> int:
    """durable's property hash (FNV-1, 32 bit): it tells properties apart by this hash alone."""
    value = 2166136261
    for byte in name.encode():
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value


def distinct_names(prefix: str, taken: set[int]) -> Iterable[str]:
    """Endless `prefix0, prefix1, ...`, skipping names whose FNV-1 hash is in `taken` (and adding theirs)."""
    index = 0
    while True:
        name = f"{prefix}{index}"
        index += 1
        digest = fnv1_32(name)
        if digest not in taken:
            taken.add(digest)
            yield name


# -- probes: conditions durable cannot express, computed here and projected as `true` flags -----------


def _attribute(source: str, name: str) -> Callable[[Mapping[str, Any], Mapping[str, Any]], Any]:
    if source == "profile":
        return lambda attrs, profile: profile.get(name)
    return lambda attrs, profile: attrs.get(name)


def contains_probe(source: str, name: str, value: Any) -> Probe:
    """The attribute is a string holding `value` (a string), or a list with an element equal to it."""
    read, key = _attribute(source, name), scalar_key(value)

    def probe(attrs: Mapping[str, Any], profile: Mapping[str, Any], tags: Set[str]) -> bool:
        found = read(attrs, profile)
        if isinstance(found, str):
            return isinstance(value, str) and value in found
        if isinstance(found, list | tuple):
            return key is not None and any(scalar_key(item) == key for item in found)
        return False

    return probe


def prefix_probe(source: str, name: str, value: Any) -> Probe:
    """The attribute is a string starting with `value` (a string)."""
    read = _attribute(source, name)

    def probe(attrs: Mapping[str, Any], profile: Mapping[str, Any], tags: Set[str]) -> bool:
        found = read(attrs, profile)
        return isinstance(found, str) and isinstance(value, str) and found.startswith(value)

    return probe


def member_probe(source: str, name: str, keys: frozenset[ScalarKey], negate: bool) -> Probe:
    """`in` (or `not_in`: a scalar of a listed type class, equal to none) for lists too long for durable."""
    read, classes = _attribute(source, name), {kind for kind, _ in keys}

    def probe(attrs: Mapping[str, Any], profile: Mapping[str, Any], tags: Set[str]) -> bool:
        key = scalar_key(read(attrs, profile))
        if key is None:
            return False
        return key[0] in classes and key not in keys if negate else key in keys

    return probe


def tag_probe(tag: str) -> Probe:
    """The user carries the tag."""
    return lambda attrs, profile, tags: tag in tags


# -- projection ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    """The slots one attribute feeds, each as the fact text before its value (`,"a3":`)."""

    profile: bool
    name: str
    exists: str | None
    num: str | None
    text: str | None
    flag: str | None


class Slots:
    """The slot names of one compiled ruleset: one per (source, attribute, type class) or probe."""

    def __init__(self, reserved: Iterable[str]) -> None:
        self._taken = {fnv1_32(name) for name in (*FIXED_NAMES, *reserved)}
        self._names = distinct_names("a", self._taken)
        self._by_key: dict[tuple[Any, ...], str] = {}
        self._typed: dict[str, tuple[str, str, str]] = {}  # slot -> (source, attribute, kind)
        self._probes: dict[str, Probe] = {}

    def typed(self, source: str, name: str, kind: ScalarClass | Literal["exists"]) -> str:
        """The slot holding the attribute when it is of `kind` (`exists`: `true` when not null)."""
        key = ("typed", source, name, kind)
        if key not in self._by_key:
            self._by_key[key] = slot = next(self._names)
            self._typed[slot] = (source, name, kind)
        return self._by_key[key]

    def probe(self, key: tuple[Any, ...], make: Callable[[], Probe]) -> str:
        """The flag slot of a computed condition, `key` naming it so equal conditions share a slot."""
        if ("probe", *key) not in self._by_key:
            self._by_key[("probe", *key)] = slot = next(self._names)
            self._probes[slot] = make()
        return self._by_key[("probe", *key)]

    def projection(self, head: str, head_size: int, used: Iterable[str]) -> Projection:
        """The projection writing `head` (`head_size` properties after `sid`) and the `used` slots."""
        fields: dict[tuple[str, str], dict[str, str]] = {}
        probes = []
        for slot in sorted(used):
            if slot in self._probes:
                probes.append((f',"{slot}":true', self._probes[slot]))
            else:
                source, name, kind = self._typed[slot]
                fields.setdefault((source, name), {})[kind] = f',"{slot}":'
        plans = [
            _Field(
                source == "profile", name, kinds.get("exists"), kinds.get("num"), kinds.get("str"), kinds.get("bool")
            )
            for (source, name), kinds in sorted(fields.items())
        ]
        return Projection(head, head_size, plans, probes)


class Projection:
    """Writes the fact of one evaluation unit: its fixed head, then every slot the attributes fill."""

    __slots__ = ("_fields", "_head", "_probes", "size")

    def __init__(self, head: str, head_size: int, fields: list[_Field], probes: list[tuple[str, Probe]]) -> None:
        self._head = head
        self._fields = fields
        self._probes = probes
        # Most properties one fact can carry (an attribute fills one typed slot at most): durable
        # holds 255 per fact.
        self.size = (
            1
            + head_size
            + len(probes)
            + sum(
                (plan.exists is not None) + any(s is not None for s in (plan.num, plan.text, plan.flag))
                for plan in fields
            )
        )

    def fact(self, sid: str, attrs: Mapping[str, Any], profile: Mapping[str, Any], tags: Set[str]) -> str:
        """The fact's JSON text for state `sid`."""
        parts = ['{"sid":"', sid, '",', self._head]
        for plan in self._fields:
            value = (profile if plan.profile else attrs).get(plan.name)
            if value is None:  # missing and null alike: no slot, so every test on it fails
                continue
            if plan.exists is not None:
                parts += (plan.exists, "true")
            if isinstance(value, str):
                if plan.text is not None:
                    parts += (plan.text, _encode_string(value))
            elif isinstance(value, bool):
                if plan.flag is not None:
                    parts += (plan.flag, "true" if value else "false")
            elif plan.num is not None and (number := number_value(value)) is not None:
                parts += (plan.num, json_number(number))
        for text, probe in self._probes:
            if probe(attrs, profile, tags):
                parts.append(text)
        parts.append("}")
        return "".join(parts)
