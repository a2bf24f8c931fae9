"""A brute-force reference for journeys: what each user's instances do, recomputed by plain simulation.

Written from the documented semantics (docs/journeys.md "Runtime semantics", the design notes'
"Journeys (the canvas)", the docstrings of `rules/journey_model.py` and the time semantics at the top
of `cep/journeys.py`), not from the runner's code. Every user keeps the whole list of its processed
events (behaviour conditions scan it), instances are plain objects in a dict by instance key, and timers
are a heap of (due, ticket) where a moved instance no longer holds the ticket. Predicates go through
the rule reference's `holds` (tests/scenarios/reference.py), itself written from docs/semantics.md.

The semantics, as this reference reads them (waits are durations only; no `until` / `until_profile`):

- **Events.** Per user, in arrival order; an event id already processed for the user changes nothing.
  An event first acts on the user's existing instances (in the order they started), then may start one;
  it never acts on the instance it starts. For one instance:
  - an event with ts before the instance's entry ts does nothing to it;
  - a goal event (`entry ts <= ts <= entry ts + within`) converts it once: the journey, every node it
    has passed, every split arm it took (each once per instance); a finished instance (its path ended,
    its goal still watched) is then forgotten;
  - for a finished instance nothing else happens; an event matching an `exit` matcher ends the path
    wherever the instance waits;
  - otherwise, an instance waiting at a `wait_for` started at `step_ts` moves on the first arm (document
    order) the event matches whose `correlate` attributes equal the entry event's (both present, not
    null, JSON-equal: 3 meets 3.0, "3" does not), if `step_ts <= ts <= step_ts + timeout`. Only events
    processed while it waits there count.
- **Entry.** An event matching `entry`: the key is the entry event's `key` attributes (one missing or
  null: `missing_key`); a live (unfinished) instance with that key blocks it (`already_in_journey`);
  re-entry is per user, journey and key: `once` (one entry ever), `max N` (N entries ever), `once_per
  P` (ts at least the key's last admitted entry ts + P), `always` (the default). An entry replaces a
  finished instance of its key, whose goal is then no longer watched.
- **Walking.** From a node at event time `at`: `do` records its actions and applies `tag` actions at
  once (a tag that was not there / was there emits `tag_added` / `tag_removed` with ts `at`); `branch`
  takes the first arm whose condition holds (plain predicates: `field` reads the entry event,
  `profile` and `tag` the user now; behaviour conditions count or sum the user's processed events
  matching the matcher with ts in `[at - within, at]`), else `else`; `split` takes the arm the
  documented hash picks (a holdout ends the path); `exit` or a missing `next` ends the path; `wait`
  sets a timer at `at + duration`, and goes on to `next` at that time; `wait_for` sets a timer at
  `at + timeout + lateness`, which goes on to `on_timeout` at `at + timeout`. A path that ends leaves
  the instance finished while a goal is still watched, else gone.
- **Emitted events.** The tag events of one event's (or timer's) processing are processed right after
  it, each with everything it causes before the next (depth first), like producer events. A chain
  stops after 8 hops: a timer's events are hop 1, as a producer event's are.
- **Time.** Timers fire in due order (ties: the order they were set). With the dry-run's clock
  (`event_time`), before each event every timer due at or before that event's ts fires; with a server
  clock moved to the highest ts posted so far before each event (`running_max`, how the live test drives
  the server), every timer due by then. After the last event, the timers due by `until` fire (every
  timer when `until` is None), and the instances still waiting are reported.

Outputs, comparable with the dry-run's report and the live ledger: one `ActionRecord` per created action
(user, node, step time, trigger, position in the node's `do`, type, params), the instances still waiting
(user, node, due), and the statistics the documentation lists (per journey: entered, completed, exited,
converted, not entered by reason; per node: entered, waiting, exited, converted, left by label,
converted by split arm).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from rules import journey_model as jm
from rules import model
from tests.scenarios.reference import Event, holds, is_number, json_equal, type_class

ClockModel = Literal["event_time", "running_max"]
TIMER_TRIGGER = "timer"  # the trigger of a step a timer started (a wait's end, a wait_for's timeout)
MAX_HOPS = 8  # emitted events after a producer event (or a timer), as docs/semantics.md
MAX_WALK = 1_000  # validation refuses cycles without a wait; a longer walk is a reference bug
MAX_TIMERS = 100_000  # a cycle through a wait fires for ever when no `until` stops it

NUMERIC = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


@dataclass(frozen=True, slots=True, order=True)
class ActionRecord:
    """One action a `do` node created for a user."""

    user_id: str
    node: str
    step_ts: int
    trigger: str  # the event that moved the instance there (a tag event as "<type>:<tag>"), or TIMER_TRIGGER
    position: int
    type: str
    params: str  # JSON, keys sorted


@dataclass(frozen=True, slots=True, order=True)
class Waiting:
    """An instance still waiting at the end: at which node, until when."""

    user_id: str
    node: str
    due: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the reference expects."""

    actions: tuple[ActionRecord, ...]  # sorted
    waiting: tuple[Waiting, ...]  # sorted
    counts: dict[tuple[str, str], int]  # (node, or "" for the journey; what) -> count, zeros left out
    # Arrival positions before which (running_max) at least one timer moved an instance: where a live
    # driver must let the server clock catch up before posting the next events.
    timer_barriers: frozenset[int]
    final_timer_dues: tuple[int, ...]  # due times of the timers that moved an instance after the last event
    # A branch decided a behaviour condition at an event time more than the journey's lateness before the
    # newest processed event that the condition matches (an event that late for the branch). The runner's
    # history keeps every event newer than `newest - lateness` but only the newest few older ones, as
    # docs/journeys.md documents: beyond that bound it may miscount, and such cases are not compared.
    behaviour_behind_newest: bool
    # Kept for diagnosis: an instance set a timer after an earlier instance of the same user and key had
    # its timer cancelled (once a bug: both timers had one name), and an instance passed one split twice.
    rewait_after_cancel: bool
    split_passed_twice: bool


def params_json(params: Mapping[str, Any]) -> str:
    """An action's params as comparable text."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def split_point(user_id: str, journey_id: str, node_id: str, salt: str) -> Fraction:
    """Where a user falls in [0, 1): blake2b (8 bytes, big-endian) of "user\\x1fjourney\\x1fnode\\x1fsalt" / 2**64."""
    material = "\x1f".join((user_id, journey_id, node_id, salt)).encode()
    return Fraction(int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big"), 2**64)


def split_choice(node: jm.Split, user_id: str, journey_id: str, node_id: str) -> int:
    """The first arm whose cumulative share of the total weight exceeds the user's point (exactly)."""
    point = split_point(user_id, journey_id, node_id, node.salt)
    weights = [Fraction(arm.weight) for arm in node.arms]
    total = sum(weights)
    for index, cumulative in enumerate(itertools.accumulate(weights)):
        if point < cumulative / total:
            return index
    return len(node.arms) - 1


def key_part(value: Any) -> Any:
    """A hashable form under which JSON-equal values meet (3 and 3.0; not "3" and 3, not true and 1)."""
    kind = type_class(value)
    if kind is not None:
        return (kind, value)
    if isinstance(value, list):
        return ("list", tuple(key_part(item) for item in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((name, key_part(item)) for name, item in value.items())))
    return ("other", repr(value))


def correlated(entry_attrs: Mapping[str, Any], event_attrs: Mapping[str, Any], names: Iterable[str]) -> bool:
    """Every listed attribute present and not null in both, and JSON-equal."""
    for name in names:
        left, right = entry_attrs.get(name), event_attrs.get(name)
        if left is None or right is None or not json_equal(left, right):
            return False
    return True


def matches(matcher: model.Matcher, event: Event) -> bool:
    """The event has the matcher's type and satisfies its `where` (on the event's attributes alone)."""
    return event.type == matcher.event and holds(matcher.where, event.attrs)


@dataclass(eq=False)
class Instance:
    """One instance: where it is and since when; `node` None once its path ended (goal still watched)."""

    key: tuple[Any, ...]
    entry: Event
    goal_by: int | None  # the goal deadline while the goal is watched and not converted
    node: str | None = None
    step_ts: int = 0
    ticket: int = -1  # the timer this instance waits for (-1: none)
    visited: set[str] = field(default_factory=set)
    arms_taken: set[tuple[str, str]] = field(default_factory=set)  # (split node, arm label)


@dataclass
class User:
    """Everything the reference knows about one user."""

    profile: dict[str, Any] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    history: list[Event] = field(default_factory=list)  # every processed event, in processing order
    entries: dict[tuple[Any, ...], tuple[int, int]] = field(default_factory=dict)  # key -> (entries, last ts)
    instances: dict[tuple[Any, ...], Instance] = field(default_factory=dict)  # in the order they started


class JourneyReference:
    """Replays arrivals in order against one journey."""

    def __init__(
        self,
        journey: jm.Journey,
        profiles: Mapping[str, Mapping[str, Any]] | None = None,
        clock: ClockModel = "event_time",
    ) -> None:
        self.journey = journey
        self.clock = clock
        self.users: dict[str, User] = {}
        for user_id, profile in (profiles or {}).items():
            user = self.user(user_id)
            user.profile.update(profile.get("attrs") or {})
            user.tags.update(profile.get("tags") or ())
        self.timers: list[tuple[int, int, str, tuple[Any, ...]]] = []  # (due, ticket, user, instance key)
        self.tickets = itertools.count()
        self.emitted = itertools.count()  # names emitted tag events
        self.actions: list[ActionRecord] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        self.fired: list[int] = []  # due times of timers that moved an instance, in firing order
        self.behind_newest = False
        self.rewait_after_cancel = False
        self.split_passed_twice = False
        self.cancelled_keys: set[tuple[str, tuple[Any, ...]]] = set()  # (user, key) whose timer an event cancelled

    def user(self, user_id: str) -> User:
        """A user's state (created empty)."""
        return self.users.setdefault(user_id, User())

    # -- the run -----------------------------------------------------------------------------------

    def run(self, events: Iterable[Event], until: int | None = None) -> Outcome:
        """Every arrival with the timers due before it, then the timers due by `until`."""
        barriers = set()
        highest: int | None = None
        for position, event in enumerate(events):
            highest = event.ts if highest is None else max(highest, event.ts)
            fired_before = len(self.fired)
            self.fire_timers(event.ts if self.clock == "event_time" else highest)
            if len(self.fired) > fired_before:
                barriers.add(position)
            self.process(event, hop=0)
        fired_before = len(self.fired)
        self.fire_timers(until)
        waiting = [
            Waiting(user_id, inst.node, self.due_of(inst))
            for user_id, user in self.users.items()
            for inst in user.instances.values()
            if inst.node is not None
        ]
        return Outcome(
            tuple(sorted(self.actions)),
            tuple(sorted(waiting)),
            {name: count for name, count in self.counts.items() if count},
            frozenset(barriers),
            tuple(self.fired[fired_before:]),
            self.behind_newest,
            self.rewait_after_cancel,
            self.split_passed_twice,
        )

    def due_of(self, inst: Instance) -> int:
        """When the timer an instance waits for is due."""
        return next(due for due, ticket, _, _ in self.timers if ticket == inst.ticket)

    def fire_timers(self, up_to: int | None) -> None:
        """Timers due at or before `up_to` (None: all), in due order; a stale one does nothing."""
        while self.timers and (up_to is None or self.timers[0][0] <= up_to):
            due, ticket, user_id, key = heapq.heappop(self.timers)
            user = self.user(user_id)
            inst = user.instances.get(key)
            if inst is None or inst.ticket != ticket:
                continue  # the instance moved on (or ended) since this timer was set
            self.fired.append(due)
            if len(self.fired) > MAX_TIMERS:
                raise ValueError(f"more than {MAX_TIMERS} timers fired: a cycle through a wait needs `until`")
            assert inst.node is not None
            inst.ticket = -1
            self.counts[(inst.node, "waiting")] -= 1
            node = self.journey.nodes[inst.node]
            caused: list[Event] = []
            if isinstance(node, jm.WaitFor):
                self.counts[(inst.node, "left:timeout")] += 1
                at = inst.step_ts + node.timeout_ms
                self.walk(user_id, user, inst, node.on_timeout, at, TIMER_TRIGGER, caused)
            else:
                assert isinstance(node, jm.Wait)
                self.walk(user_id, user, inst, node.next, due, TIMER_TRIGGER, caused)
            for event in caused:
                self.process(event, hop=1)

    def process(self, event: Event, hop: int) -> None:
        """An event, then (depth first, up to MAX_HOPS) the tag events its steps emitted."""
        caused = self.arrive(event)
        if caused and hop + 1 <= MAX_HOPS:
            for item in caused:
                self.process(item, hop + 1)

    def arrive(self, event: Event) -> list[Event]:
        """One event: deduplicated, remembered, offered to the instances, then to the entry."""
        user = self.user(event.user_id)
        caused: list[Event] = []
        if event.event_id in user.seen:
            return caused
        user.seen.add(event.event_id)
        user.history.append(event)
        for key, inst in list(user.instances.items()):
            if user.instances.get(key) is inst:
                self.offer(event, user, inst, caused)
        if self.journey.entry is not None and matches(self.journey.entry, event):
            self.enter(event, user, caused)
        return caused

    def offer(self, event: Event, user: User, inst: Instance, caused: list[Event]) -> None:
        """One event against one instance: its goal, an exit, an awaited arm, or nothing."""
        if event.ts < inst.entry.ts:
            return
        goal = self.journey.goal
        if goal is not None and inst.goal_by is not None and event.ts <= inst.goal_by and matches(goal.match, event):
            inst.goal_by = None
            self.counts[("", "converted")] += 1
            for node_id in inst.visited:
                self.counts[(node_id, "converted")] += 1
            for node_id, label in inst.arms_taken:
                self.counts[(node_id, f"converted:{label}")] += 1
            if inst.node is None:
                del user.instances[inst.key]
                return
        if inst.node is None:
            return
        if any(
            matches(journey_exit.match, event) and correlated(inst.entry.attrs, event.attrs, journey_exit.correlate)
            for journey_exit in self.journey.exits
        ):
            self.stop_waiting(event.user_id, inst)
            self.counts[(inst.node, "exited")] += 1
            self.counts[("", "exited")] += 1
            self.finish(user, inst)
            return
        node = self.journey.nodes[inst.node]
        if not isinstance(node, jm.WaitFor) or not inst.step_ts <= event.ts <= inst.step_ts + node.timeout_ms:
            return
        for arm in node.arms:
            if matches(arm.match, event) and correlated(inst.entry.attrs, event.attrs, arm.correlate):
                self.stop_waiting(event.user_id, inst)
                self.counts[(inst.node, f"left:{arm.match.event}")] += 1
                self.walk(event.user_id, user, inst, arm.next, event.ts, self.trigger(event), caused)
                return

    def enter(self, event: Event, user: User, caused: list[Event]) -> None:
        """An entry event: key, one live instance per key, re-entry, then the walk from `start`."""
        values = [event.attrs.get(name) for name in self.journey.key]
        if any(value is None for value in values):
            self.counts[("", "blocked:missing_key")] += 1
            return
        key = tuple(key_part(value) for value in values)
        existing = user.instances.get(key)
        if existing is not None and existing.node is not None:
            self.counts[("", "blocked:already_in_journey")] += 1
            return
        reentry = self.journey.reentry
        entries, last_ts = user.entries.get(key, (0, 0))
        if entries and (
            reentry.policy == "once"
            or (reentry.policy == "max" and entries >= reentry.max_entries)
            or (reentry.policy == "once_per" and event.ts < last_ts + reentry.period_ms)
        ):
            self.counts[("", f"blocked:reentry_{reentry.policy}")] += 1
            return
        user.entries[key] = (entries + 1, event.ts)
        goal_by = event.ts + self.journey.goal.within_ms if self.journey.goal is not None else None
        inst = user.instances[key] = Instance(key, event, goal_by)  # a finished one of this key is replaced
        self.counts[("", "entered")] += 1
        self.walk(event.user_id, user, inst, self.journey.start, event.ts, self.trigger(event), caused)

    @staticmethod
    def trigger(event: Event) -> str:
        """How a step names the event that moved it: its id; an emitted tag event as "<type>:<tag>"."""
        if event.type in ("tag_added", "tag_removed") and event.event_id.startswith(f"{event.type}:"):
            return f"{event.type}:{event.attrs.get('tag')}"
        return event.event_id

    # -- walking -----------------------------------------------------------------------------------

    def walk(
        self,
        user_id: str,
        user: User,
        inst: Instance,
        node_id: str | None,
        at: int,
        trigger: str,
        caused: list[Event],
    ) -> None:
        """Run nodes from `node_id` at event time `at` until the instance waits or its path ends."""
        for _ in range(MAX_WALK):
            if node_id is None:
                self.end(user, inst)
                return
            node = self.journey.nodes[node_id]
            inst.node = node_id
            inst.visited.add(node_id)
            self.counts[(node_id, "entered")] += 1
            if isinstance(node, jm.Do):
                for position, action in enumerate(node.actions):
                    self.actions.append(
                        ActionRecord(user_id, node_id, at, trigger, position, action.type, params_json(action.params))
                    )
                    if action.type == "tag":
                        self.tag(user_id, user, action.params, at, caused)
                node_id = node.next
            elif isinstance(node, jm.Wait):
                assert node.duration_ms is not None, "the reference knows waits of a duration only"
                self.wait(user_id, inst, at, at + node.duration_ms)
                return
            elif isinstance(node, jm.WaitFor):
                self.wait(user_id, inst, at, at + node.timeout_ms + self.journey.lateness_ms)
                return
            elif isinstance(node, jm.Branch):
                taken = next(
                    (index for index, arm in enumerate(node.arms) if self.condition(arm.condition, user, inst, at)),
                    None,
                )
                self.counts[(node_id, "left:else" if taken is None else f"left:arm{taken}")] += 1
                node_id = node.otherwise if taken is None else node.arms[taken].next
            elif isinstance(node, jm.Split):
                index = split_choice(node, user_id, self.journey.id, node_id)
                arm = node.arms[index]
                label = "holdout" if arm.holdout else f"arm{index}"
                self.counts[(node_id, f"left:{label}")] += 1
                if any(passed == node_id for passed, _ in inst.arms_taken):
                    self.split_passed_twice = True
                inst.arms_taken.add((node_id, label))
                if arm.holdout:
                    self.end(user, inst)
                    return
                node_id = arm.next
            else:
                assert isinstance(node, jm.Exit)
                self.end(user, inst)
                return
        raise AssertionError(f"the reference walked {MAX_WALK} nodes without waiting")

    def tag(self, user_id: str, user: User, params: Mapping[str, Any], at: int, caused: list[Event]) -> None:
        """A tag action: the tags change at once; each real change emits an event at the step's time."""
        for kind, names in (("tag_added", params.get("add") or ()), ("tag_removed", params.get("remove") or ())):
            for name in names:
                if (name in user.tags) == (kind == "tag_removed"):
                    (user.tags.add if kind == "tag_added" else user.tags.discard)(name)
                    event_id = f"{kind}:{name}:#{next(self.emitted)}"
                    caused.append(Event(event_id, user_id, kind, at, {"tag": name}))

    def wait(self, user_id: str, inst: Instance, at: int, due: int) -> None:
        if (user_id, inst.key) in self.cancelled_keys:
            self.rewait_after_cancel = True
        inst.step_ts = at
        inst.ticket = next(self.tickets)
        heapq.heappush(self.timers, (due, inst.ticket, user_id, inst.key))
        self.counts[(inst.node, "waiting")] += 1

    def stop_waiting(self, user_id: str, inst: Instance) -> None:
        if inst.ticket >= 0:
            self.cancelled_keys.add((user_id, inst.key))
            inst.ticket = -1  # its timer, when it comes up, finds the ticket changed
            self.counts[(inst.node, "waiting")] -= 1

    def end(self, user: User, inst: Instance) -> None:
        """The path ended at the instance's current node."""
        self.counts[(inst.node, "exited")] += 1
        self.counts[("", "completed")] += 1
        self.finish(user, inst)

    @staticmethod
    def finish(user: User, inst: Instance) -> None:
        """No more steps: the instance stays only while its goal is watched."""
        inst.node = None
        if inst.goal_by is None:
            del user.instances[inst.key]

    # -- branch conditions -------------------------------------------------------------------------

    def condition(self, condition: jm.Condition, user: User, inst: Instance, at: int) -> bool:
        """A branch condition for an instance at event time `at`."""
        if isinstance(condition, jm.Behaviour):
            return self.behaviour(condition, user, at)
        if isinstance(condition, jm.BranchAll):
            return all(self.condition(item, user, inst, at) for item in condition.items)
        if isinstance(condition, jm.BranchAny):
            return any(self.condition(item, user, inst, at) for item in condition.items)
        if isinstance(condition, jm.BranchNot):
            return not self.condition(condition.item, user, inst, at)
        return holds(condition, inst.entry.attrs, user.profile, user.tags)

    def behaviour(self, behaviour: jm.Behaviour, user: User, at: int) -> bool:
        """What the user did (events processed so far) with ts in [at - within, at]."""
        matching = [event for event in user.history if matches(behaviour.match, event)]
        if any(event.ts > at + self.journey.lateness_ms for event in matching):
            self.behind_newest = True
        found = [event for event in matching if at - behaviour.within_ms <= event.ts <= at]
        if behaviour.kind == "did_not":
            return not found
        compare: Callable[[Any, Any], bool] = NUMERIC[behaviour.op]
        if behaviour.kind == "did":
            return bool(compare(len(found), behaviour.value))
        assert behaviour.sum_field is not None
        values = [event.attrs.get(behaviour.sum_field) for event in found]
        return bool(compare(sum(Fraction(value) for value in values if is_number(value)), Fraction(behaviour.value)))


def evaluate(
    journey: jm.Journey,
    events: Iterable[Mapping[str, Any] | Event],
    *,
    profiles: Mapping[str, Mapping[str, Any]] | None = None,
    until: int | None = None,
    clock: ClockModel = "event_time",
) -> Outcome:
    """What `journey` does over `events` (wire dicts or Events) in arrival order."""
    arrivals = [event if isinstance(event, Event) else Event.from_wire(event) for event in events]
    return JourneyReference(journey, profiles, clock).run(arrivals, until)
