"""The validated ruleset, as frozen dataclasses: what `rules.schema` builds and the core reads.

Durations are integers in milliseconds. Predicate leaves read either the event's `attrs`
(`Compare(source="field")`), the user's profile attributes (`source="profile"`) or tags (`HasTag`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

COMPARE_OPS = ("==", "!=", ">", ">=", "<", "<=", "in", "not_in", "contains", "exists", "prefix")
CompareOp = Literal["==", "!=", ">", ">=", "<", "<=", "in", "not_in", "contains", "exists", "prefix"]
Source = Literal["field", "profile"]


@dataclass(frozen=True, slots=True)
class Compare:
    """`{"field"|"profile": name, "op": op, "value": value}`; `value` is None for `exists`."""

    source: Source
    name: str
    op: CompareOp
    value: Any = None


@dataclass(frozen=True, slots=True)
class HasTag:
    """`{"tag": "vip"}`: the user's profile carries the tag."""

    tag: str


@dataclass(frozen=True, slots=True)
class AllOf:
    """`{"all": [...]}`: every item holds (an empty list holds)."""

    items: tuple[Predicate, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    """`{"any": [...]}`: at least one item holds (an empty list does not)."""

    items: tuple[Predicate, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """`{"not": P}`."""

    item: Predicate


Predicate = Compare | HasTag | AllOf | AnyOf | Not


@dataclass(frozen=True, slots=True)
class Matcher:
    """An event matcher M: an event type and an optional predicate."""

    event: str
    where: Predicate | None = None


@dataclass(frozen=True, slots=True)
class Single:
    """`when` is a matcher: fires on each matching event."""

    match: Matcher


@dataclass(frozen=True, slots=True)
class Sequence:
    """A then B with ts_A <= ts_B <= ts_A + within, sharing the `correlate` attribute values."""

    first: Matcher
    then: Matcher
    within_ms: int
    correlate: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Absence:
    """A, and no B with ts_A <= ts_B <= ts_A + within (same correlation): fires at the deadline."""

    first: Matcher
    missing: Matcher
    within_ms: int
    correlate: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Threshold:
    """Count (or sum of `sum_field`) of matching events in [ts - window, ts] reaches `at_least`;
    with `correlate`, counted separately per value of those attributes (e.g. per product)."""

    match: Matcher
    window_ms: int
    at_least: float
    sum_field: str | None = None  # None: count events
    correlate: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class First:
    """The user's first matching event ever."""

    match: Matcher


When = Single | Sequence | Absence | Threshold | First

ACTION_TYPES = ("coupon", "points", "tag", "message", "webhook", "notify_staff")
MESSAGE_CHANNELS = ("sms", "wechat_template", "wechat_cs", "miniprogram_subscribe", "wecom")


@dataclass(frozen=True, slots=True)
class Action:
    """One action of a rule's `then`. `params` holds the action's own fields (JSON values, may hold
    `{{event.x}}` / `{{profile.y}}` templates in strings); `delay_ms` is 0 for immediate."""

    type: str
    params: dict[str, Any] = field(hash=False, compare=True)
    delay_ms: int = 0
    tracked: bool = False  # its params hold `{{link "..."}}` templates (rules.templates, cep.links)
    # How late after its due time (in event time) the connectors may still send it; None: the deployment's
    # bound (BEACON_CONNECTOR_MAX_STALENESS_MS). Past it the action is skipped as `stale`.
    max_staleness_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Reentry:
    """How often a rule may fire per user: `once` ever, `once_per` `period_ms`, or `always`."""

    policy: Literal["once", "once_per", "always"]
    period_ms: int = 0


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: a pattern, an optional condition checked when it completes, and its actions."""

    id: str
    when: When
    actions: tuple[Action, ...]
    reentry: Reentry
    condition: Predicate | None = None
    priority: int = 0
    lateness_ms: int = 2_000
    description: str = ""
    goal: Goal | None = None  # what counts as a conversion of its firings (docs/measurement.md)


@dataclass(frozen=True, slots=True)
class Goal:
    """A conversion: a matching event within `within_ms` of the touch (a rule's firing, a journey's entry),
    counted once per touch; `value` names the event attribute holding its revenue."""

    match: Matcher
    within_ms: int
    value: str | None = None


@dataclass(frozen=True, slots=True)
class Fatigue:
    """`{"max": N, "per": "7d"}` on a ruleset or journey: at most N marketing messages from it per user in
    any window of `per_ms` (transactional messages exempt; counted by the connectors at delivery)."""

    max: int
    per_ms: int

    def record(self, scope: str) -> dict[str, Any]:
        """What an action record carries for the connectors: the cap's name, size and window."""
        return {"cap": scope, "max": self.max, "per_ms": self.per_ms}


@dataclass(frozen=True, slots=True)
class Ruleset:
    """A validated ruleset document. `version` is 0 until storage assigns one."""

    id: str
    rules: tuple[Rule, ...]
    description: str = ""
    version: int = 0
    fatigue: Fatigue | None = None
