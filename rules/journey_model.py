"""The validated journey, as frozen dataclasses: what `rules.journey_schema` builds and the core reads.

A journey is a graph of named nodes that an *instance* walks, one per user and instance key: it
starts at `start` when an entry event arrives, runs `do` / `branch` / `split` nodes at once, and
stops at a `wait` or `wait_for` node until a timer or a matching event moves it on. A node without
`next` (and every `exit` node) ends the instance. Durations are integers in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rules.model import Action, CompareOp, Fatigue, Goal, Matcher, Predicate


@dataclass(frozen=True, slots=True)
class Behaviour:
    """A behaviour condition in a branch: what the user did in the `within_ms` before the branch runs.

    `did` with `count` ops: the number of matching events compared with `value` (default `>= 1`);
    `did_not`: no matching event; `sum`: the sum of `sum_field` over the matching events, compared.
    """

    kind: Literal["did", "did_not", "sum"]
    match: Matcher
    within_ms: int
    op: CompareOp = ">="
    value: float = 1
    sum_field: str | None = None


# A branch condition: a rule predicate (its `field` leaves read the entry event's attributes), or a
# behaviour condition, combined with all / any / not like any predicate.
@dataclass(frozen=True, slots=True)
class BranchAll:
    """`{"all": [...]}` over branch conditions."""

    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class BranchAny:
    """`{"any": [...]}` over branch conditions."""

    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class BranchNot:
    """`{"not": C}` over a branch condition."""

    item: Condition


Condition = Predicate | Behaviour | BranchAll | BranchAny | BranchNot


@dataclass(frozen=True, slots=True)
class Do:
    """Run actions (the same action language and connectors as rules), then go on at once."""

    actions: tuple[Action, ...]
    next: str | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait in event time: a duration, until a local time of day, or until a date in the profile.

    Exactly one of `duration_ms`, `until` ((hour, minute) in `tz`), `until_profile` and `until_entry` is
    set. `until_entry` names an entry-event attribute holding a local date-time without a zone
    ("2026-12-12T10:00"): a plan at each user's local time waits for it in the zone the profile attribute
    `tz_profile` names, or in `tz` when that is missing or not a zone (`rules.plans` builds such waits;
    the journey language does not offer them).
    """

    duration_ms: int | None = None
    until: tuple[int, int] | None = None
    until_profile: str | None = None
    tz: str = "UTC"
    next: str | None = None
    until_entry: str | None = None
    tz_profile: str | None = None
    late_after_ms: int | None = None  # a time passed longer ago than this ends the instance instead


@dataclass(frozen=True, slots=True)
class WaitArm:
    """One awaited event of a `wait_for`; `correlate` attributes must equal the entry event's."""

    match: Matcher
    next: str | None = None
    correlate: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WaitFor:
    """Wait for the first of several events, for at most `timeout_ms`, then `on_timeout`."""

    arms: tuple[WaitArm, ...]
    timeout_ms: int
    on_timeout: str | None = None


@dataclass(frozen=True, slots=True)
class BranchArm:
    """`{"if": condition, "next": node}`: the first arm whose condition holds is taken."""

    condition: Condition
    next: str | None = None


@dataclass(frozen=True, slots=True)
class Branch:
    """Take the first arm whose condition holds, else `otherwise` (`"else"` in JSON)."""

    arms: tuple[BranchArm, ...]
    otherwise: str | None = None


@dataclass(frozen=True, slots=True)
class SplitArm:
    """A weighted arm of a split; a `holdout` arm acts on nobody (the baseline for lift)."""

    weight: float
    next: str | None = None
    holdout: bool = False


@dataclass(frozen=True, slots=True)
class Split:
    """Assign each instance to an arm by a hash of (user, journey, node, salt): stable, storage-free."""

    arms: tuple[SplitArm, ...]
    salt: str = ""


@dataclass(frozen=True, slots=True)
class Exit:
    """End the instance here."""


Node = Do | Wait | WaitFor | Branch | Split | Exit
NODE_KINDS = ("do", "wait", "until", "until_profile", "wait_for", "branch", "split", "exit")


@dataclass(frozen=True, slots=True)
class JourneyReentry:
    """How often a user may enter: `once` ever, `once_per` `period_ms`, `always`, `max` entries ever, or
    `max_per`: at most `max_entries` in a window of `period_ms` that opens at the first entry after the
    previous window closed (a plan's participation limit, `{"max": 2, "per": "30d"}` in a journey).

    Whatever the policy, a user has at most one live instance per instance key.
    """

    policy: Literal["once", "once_per", "always", "max", "max_per"]
    period_ms: int = 0
    max_entries: int = 0


@dataclass(frozen=True, slots=True)
class JourneyExit:
    """An exit event: it ends the user's instances at once, or with `correlate` only those whose entry
    event has the same values (a refund of one order ends that order's instance)."""

    match: Matcher
    correlate: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Journey:
    """A validated journey document. `version` is 0 until storage assigns one.

    `entry` is the event that starts an instance (`{"segment": id}` in JSON is the matcher of that
    segment's `segment_entered` events); `entry_segment` is unused.
    """

    id: str
    start: str
    nodes: dict[str, Node]
    entry: Matcher | None
    reentry: JourneyReentry
    key: tuple[str, ...] = ()
    exits: tuple[JourneyExit, ...] = ()
    goal: Goal | None = None
    entry_segment: str | None = None
    tz: str = "UTC"
    lateness_ms: int = 2_000
    description: str = ""
    version: int = 0
    fatigue: Fatigue | None = None  # a cap on this journey's marketing messages per user


def successors(node: Node) -> tuple[str | None, ...]:
    """Every node a node can go to (None: the instance ends), in the document's order."""
    if isinstance(node, Do | Wait):
        return (node.next,)
    if isinstance(node, WaitFor):
        return (*(arm.next for arm in node.arms), node.on_timeout)
    if isinstance(node, Branch):
        return (*(arm.next for arm in node.arms), node.otherwise)
    if isinstance(node, Split):
        return tuple(None if arm.holdout else arm.next for arm in node.arms)
    return ()
