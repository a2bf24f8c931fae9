"""A brute-force reference for live segment membership: when each user enters and leaves each segment.

Written from the documented semantics (the docstrings of `rules/segments.py`, `cep/segments.py` and
`rules/journey_model.Behaviour`, and docs/semantics.md for predicates), not from the runtime's code: every
user keeps the whole list of its processed events, and a behaviour condition counts or sums, by scanning
that list, the events matching its matcher with ts in `[t - within, t]`. Predicates go through the rule
reference's `holds` (tests/scenarios/reference.py), itself written from docs/semantics.md.

The semantics, as this reference reads them:

- **Membership** of a user at event time `t` is the segment's condition at `t`: plain `profile` / `tag`
  predicates read the user's profile and tags now; `did` compares the number of matching events in the
  window with its `count` (default `>= 1`), `did_not` holds when there is none, `sum` compares the sum of
  a field over the matching events whose field is a number (booleans are not numbers).
- **When it is evaluated.** At each processed event whose type a behaviour condition of the segment
  names (its `where` need not hold), and at each `tag_added` / `tag_removed` event when the condition
  reads tags; at a profile or tag patch (at the clock's time) when it reads the profile or tags; and,
  with no event, at the next instant after the last evaluation at which a processed matching event
  enters a window (its ts) or leaves it (ts + within + 1): the exact moments membership can change.
  (An event out of order is evaluated at its own ts, before the last evaluation: the instants after it
  come again, evaluated with that event known.) A user never evaluated has no such instant (and is no
  member).
- **Changes.** An evaluation whose result differs from the user's membership flips it: `entered` or
  `exited` at the evaluation's time.
- **Events and tags.** Per user, in arrival order; an event id already processed for the user changes
  nothing. A `tag_rules` event type adds (removes) a tag; when the tag set changed, a `tag_added`
  (`tag_removed`) event with attrs `{"tag": ...}` and the cause's ts is processed right after the cause
  (the cause itself is evaluated with the tag already changed).
- **Time** (the dry-run's simulated clock): before each arrival, every instant due at or before its
  ts is evaluated, in time order; a patch is evaluated at the clock (the highest ts seen, or its own ts
  if higher); after the last arrival, every remaining instant. `Change.at` is the clock at the change:
  the highest arrival ts so far, or the instant's time if higher.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from rules import journey_model as jm
from rules import model
from rules.segments import Segment
from tests.scenarios.reference import Event, holds, is_number

NUMERIC: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
TAG_ADDED = "tag_added"
TAG_REMOVED = "tag_removed"


@dataclass(frozen=True, slots=True, order=True)
class Change:
    """A user entering or leaving a segment."""

    ts: int  # the event time of the evaluation that changed membership
    entered: bool
    at: int  # the simulated clock then


@dataclass(frozen=True, slots=True)
class Patch:
    """A profile / tag patch (`PATCH /v1/users/{id}`) arriving when the clock reads at least `ts`."""

    patch_id: str
    user_id: str
    ts: int
    attrs: Mapping[str, Any] = field(default_factory=dict)  # None deletes
    add_tags: tuple[str, ...] = ()
    remove_tags: tuple[str, ...] = ()


Arrival = Event | Patch


def leaves(condition: jm.Condition) -> list[jm.Condition]:
    """The condition's leaves: behaviour conditions, profile comparisons and tags."""
    if isinstance(condition, jm.BranchAll | jm.BranchAny | model.AllOf | model.AnyOf):
        return [leaf for item in condition.items for leaf in leaves(item)]
    if isinstance(condition, jm.BranchNot | model.Not):
        return leaves(condition.item)
    return [condition]


def counted(behaviour: jm.Behaviour, event: Event) -> bool:
    """Whether a behaviour condition counts the event: its type, its `where`, and for a sum a numeric field."""
    if event.type != behaviour.match.event or not holds(behaviour.match.where, event.attrs):
        return False
    return behaviour.sum_field is None or is_number(event.attrs.get(behaviour.sum_field))


@dataclass
class Membership:
    member: bool = False
    cursor: int | None = None  # the time of the last evaluation (None: never evaluated)
    changes: list[Change] = field(default_factory=list)


@dataclass
class User:
    profile: dict[str, Any] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)  # every processed event, in processing order
    memberships: dict[str, Membership] = field(default_factory=dict)


class SegmentReference:
    """Membership of every user in every segment over one run of arrivals."""

    def __init__(
        self,
        segments: Sequence[Segment],
        *,
        tag_rules: Mapping[str, tuple[str, str]] | None = None,
        profiles: Mapping[str, Mapping[str, Any]] | None = None,
        lateness_ms: int = 2000,
    ) -> None:
        self.segments = {segment.id: segment for segment in segments}
        self.behaviours = {
            segment.id: [leaf for leaf in leaves(segment.where) if isinstance(leaf, jm.Behaviour)]
            for segment in segments
        }
        self.reads_tags = {
            segment.id: any(isinstance(leaf, model.HasTag) for leaf in leaves(segment.where)) for segment in segments
        }
        self.reads_profile = {
            segment.id: any(isinstance(leaf, model.Compare) for leaf in leaves(segment.where)) for segment in segments
        }
        self.triggers = {
            segment.id: {behaviour.match.event for behaviour in self.behaviours[segment.id]}
            | ({TAG_ADDED, TAG_REMOVED} if self.reads_tags[segment.id] else set())
            for segment in segments
        }
        self.tag_rules = dict(tag_rules or {})
        self.lateness_ms = lateness_ms
        self.users: dict[str, User] = {}
        for user_id, profile in (profiles or {}).items():
            user = self.user(user_id)
            user.profile.update(profile.get("attrs") or {})
            user.tags.update(profile.get("tags") or ())
        self.clock: int | None = None
        # Set when a behaviour was evaluated more than the lateness before the newest event it counts: the
        # runtime's history is documented to keep only what later evaluations can read (not compared then).
        self.beyond_lateness = False

    def user(self, user_id: str) -> User:
        found = self.users.get(user_id)
        if found is None:
            found = self.users[user_id] = User(memberships={segment_id: Membership() for segment_id in self.segments})
        return found

    # -- the run -----------------------------------------------------------------------------------

    def run(self, arrivals: Iterable[Arrival]) -> dict[tuple[str, str], list[Change]]:
        """Process the arrivals in order, then every remaining instant; the changes by (user, segment)."""
        for arrival in arrivals:
            self.fire(arrival.ts)
            self.clock = arrival.ts if self.clock is None else max(self.clock, arrival.ts)
            if isinstance(arrival, Patch):
                self.patch(arrival)
            else:
                self.event(arrival)
        self.fire(None)
        return {
            (user_id, segment_id): membership.changes
            for user_id, user in self.users.items()
            for segment_id, membership in user.memberships.items()
            if membership.changes
        }

    def fire(self, up_to: int | None) -> None:
        """Evaluate every instant due by `up_to` (all of them when None), each user and segment in time
        order (users and segments do not affect one another)."""
        for user in self.users.values():
            for segment_id, membership in user.memberships.items():
                while membership.cursor is not None:
                    instant = self.next_instant(user, segment_id, membership.cursor)
                    if instant is None or (up_to is not None and instant > up_to):
                        break
                    self.evaluate(user, segment_id, instant, max(instant, self.clock or instant))

    def next_instant(self, user: User, segment_id: str, after: int) -> int | None:
        """The earliest time after `after` at which a processed event counted by a behaviour condition
        enters (its ts) or leaves (ts + within + 1) that condition's window."""
        found: int | None = None
        for behaviour in self.behaviours[segment_id]:
            for event in user.events:
                if not counted(behaviour, event):
                    continue
                for instant in (event.ts, event.ts + behaviour.within_ms + 1):
                    if instant > after and (found is None or instant < found):
                        found = instant
        return found

    def event(self, event: Event) -> None:
        user = self.user(event.user_id)
        if event.event_id in user.seen:
            return
        user.seen.add(event.event_id)
        user.events.append(event)
        caused: list[Event] = []
        rule = self.tag_rules.get(event.type)
        if rule is not None:
            how, tag = rule
            if (how == "add") != (tag in user.tags):
                (user.tags.add if how == "add" else user.tags.discard)(tag)
                kind = TAG_ADDED if how == "add" else TAG_REMOVED
                caused.append(Event(f"{kind}:{tag}:{event.event_id}", event.user_id, kind, event.ts, {"tag": tag}))
        assert self.clock is not None
        for segment_id in self.segments:
            if event.type in self.triggers[segment_id]:
                self.evaluate(user, segment_id, event.ts, self.clock)
        for item in caused:
            self.event(item)

    def patch(self, patch: Patch) -> None:
        user = self.user(patch.user_id)
        for name, value in patch.attrs.items():
            if value is None:
                user.profile.pop(name, None)
            else:
                user.profile[name] = value
        user.tags.update(patch.add_tags)
        user.tags.difference_update(patch.remove_tags)
        assert self.clock is not None
        for segment_id in self.segments:
            if self.reads_profile[segment_id] or self.reads_tags[segment_id]:
                self.evaluate(user, segment_id, self.clock, self.clock)

    # -- one evaluation ----------------------------------------------------------------------------

    def evaluate(self, user: User, segment_id: str, ts: int, at: int) -> None:
        membership = user.memberships[segment_id]
        member = self.holds(self.segments[segment_id].where, user, ts)
        if member != membership.member:
            membership.member = member
            membership.changes.append(Change(ts, member, at))
        membership.cursor = ts

    def holds(self, condition: jm.Condition, user: User, at: int) -> bool:
        if isinstance(condition, jm.Behaviour):
            return self.behaviour(condition, user, at)
        if isinstance(condition, jm.BranchAll):
            return all(self.holds(item, user, at) for item in condition.items)
        if isinstance(condition, jm.BranchAny):
            return any(self.holds(item, user, at) for item in condition.items)
        if isinstance(condition, jm.BranchNot):
            return not self.holds(condition.item, user, at)
        return holds(condition, {}, user.profile, user.tags)

    def behaviour(self, behaviour: jm.Behaviour, user: User, at: int) -> bool:
        matching = [event for event in user.events if counted(behaviour, event)]
        if any(event.ts > at + self.lateness_ms for event in matching):
            self.beyond_lateness = True
        found = [event for event in matching if at - behaviour.within_ms <= event.ts <= at]
        if behaviour.kind == "did_not":
            return not found
        compare = NUMERIC[behaviour.op]
        if behaviour.kind == "did":
            return bool(compare(len(found), behaviour.value))
        assert behaviour.sum_field is not None
        total = sum((Fraction(event.attrs[behaviour.sum_field]) for event in found), Fraction(0))
        return bool(compare(total, Fraction(behaviour.value)))


def evaluate(
    segments: Sequence[Segment],
    arrivals: Iterable[Arrival],
    *,
    tag_rules: Mapping[str, tuple[str, str]] | None = None,
    profiles: Mapping[str, Mapping[str, Any]] | None = None,
    lateness_ms: int = 2000,
) -> tuple[dict[tuple[str, str], list[Change]], bool]:
    """The membership changes by (user, segment) over the arrivals, and whether some behaviour was read
    beyond the lateness bound (see `SegmentReference.beyond_lateness`)."""
    reference = SegmentReference(segments, tag_rules=tag_rules, profiles=profiles, lateness_ms=lateness_ms)
    return reference.run(arrivals), reference.beyond_lateness
