"""Rulesets on a list of events, in-process, on a simulated clock: the engine of dry-runs and backtests.

The same evaluator as live processing (`cep.evaluator`), with user state in a dict and timers in a
heap instead of Redis. The simulated clock follows the events' `ts` in the given order: before each
event, every timer due at or before its `ts` fires (in due order, ties in scheduling order).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from beacon.errors import TooLargeError
from cep.evaluator import Effects, Evaluator, Firing, timer_user
from cep.events import Event
from cep.journeys import JourneyFiring
from cep.rule_index import RuleEntry, RuleIndex
from cep.user_record import UserState
from rules.durations import format_duration
from rules.model import Absence, First, Single, Threshold
from rules.model import Sequence as SequencePattern
from rules.secret_headers import redact_action

DEDUPE_HORIZON_MS = 7 * 86_400_000


def explain(entry: RuleEntry, trigger: Event) -> str:
    """One line on why a rule fired for a trigger event."""
    rule, when = entry.rule, entry.rule.when
    if isinstance(when, Single):
        return f"{trigger.type} matched {rule.id}"
    if isinstance(when, First):
        return f"first {when.match.event} for this user"
    if isinstance(when, SequencePattern):
        return f"{when.first.event} then {when.then.event} within {format_duration(when.within_ms)}"
    if isinstance(when, Absence):
        return (
            f"{when.first.event} at {trigger.ts - when.within_ms} and no {when.missing.event} "
            f"within {format_duration(when.within_ms)}"
        )
    assert isinstance(when, Threshold)
    measure = f"sum of {when.sum_field}" if when.sum_field else "count"
    return f"{measure} of {when.match.event} reached {when.at_least:g} within {format_duration(when.window_ms)}"


@dataclass(slots=True)
class Step:
    """What one event or timer did, at which simulated time."""

    at: int
    effects: Effects


@dataclass(slots=True)
class Simulation:
    """Users' state, pending timers and the simulated clock of one run."""

    index: RuleIndex
    max_steps: int = 10_000_000
    dedupe_horizon_ms: int = DEDUPE_HORIZON_MS
    on_step: Callable[[Step], None] | None = None
    trace: bool = False  # collect per-user trace entries in each step's effects (dry-runs)
    states: dict[str, UserState] = field(default_factory=dict)
    timers: list[tuple[int, int, str]] = field(default_factory=list)  # (due, seq, member) heap
    now_ms: int | None = None
    steps: int = 0
    # Cancelled timers stay in the heap and are skipped when they come up: removal would cost O(n).
    cancelled: set[str] = field(default_factory=set)
    _numbers: Iterator[int] = field(default_factory=itertools.count)
    _evaluator: Evaluator = field(init=False)

    def __post_init__(self) -> None:
        self._evaluator = Evaluator(self.index)

    def set_profile(self, user_id: str, attrs: Mapping[str, Any], tags: Iterable[str]) -> None:
        """Start a user with a profile (dry-run input)."""
        state = self.states.setdefault(user_id, UserState())
        state.profile.update(attrs)
        state.tags.update(tags)

    def advance(self, ts: int) -> int:
        """Move the clock to an event's `ts` (never back), firing the timers due by then; returns now."""
        self.fire_timers(ts)
        now = self.now_ms = ts if self.now_ms is None else max(self.now_ms, ts)
        return now

    def feed(self, event: Event) -> None:
        """Fire the timers due by the event's `ts`, then evaluate the event."""
        now = self.advance(event.ts)
        if event.received_ms != now:
            # A copy (the caller's event is left alone), built directly: dataclasses.replace costs 4x.
            event = Event(event.event_id, event.user_id, event.type, event.ts, event.attrs, now, event.origin)
        state = self.states.get(event.user_id)
        if state is None:
            state = self.states[event.user_id] = UserState()
        effects = Effects(trace=[] if self.trace else None, trace_matches=self.trace)
        self._evaluator.on_event(state, event, now, effects)
        self._done(effects)

    def fire_timers(self, up_to: int | None) -> None:
        """Fire every timer due at or before `up_to` (None: all of them), moving the clock to each."""
        while self.timers and (up_to is None or self.timers[0][0] <= up_to):
            due, _, member = heapq.heappop(self.timers)
            if member in self.cancelled:
                self.cancelled.discard(member)
                continue
            self.now_ms = due if self.now_ms is None else max(self.now_ms, due)
            user_id = timer_user(member)
            state = self.states.get(user_id)
            if state is None:
                state = self.states[user_id] = UserState()
            effects = Effects(trace=[] if self.trace else None, trace_matches=self.trace)
            self._evaluator.on_timer(state, member, due, self.now_ms, effects)
            self._done(effects, consumed=member)

    def prune(self) -> None:
        """Drop expired dedupe ids, re-entry marks and pattern states of every user, as the partition
        owner does for the users of each batch (a long backtest calls this now and then)."""
        if self.now_ms is None:
            return
        for state in self.states.values():
            state.prune(self.now_ms, self.dedupe_horizon_ms)

    def pending(self) -> list[tuple[int, str]]:
        """Timers not fired yet: (due, user id), in due order."""
        return [(due, timer_user(member)) for due, _, member in sorted(self.timers) if member not in self.cancelled]

    def _done(self, effects: Effects, consumed: str | None = None) -> None:
        self.steps += 1 + len(effects.chained)
        if self.steps > self.max_steps:
            raise TooLargeError(f"the run took more than {self.max_steps} steps", path="events")
        self.cancelled.update(member for member in effects.timers_removed if member != consumed)
        for due, member in effects.timers_added:
            heapq.heappush(self.timers, (due, next(self._numbers), member))
        # Segment timers: one name per user and segment, a new due replacing the old; a superseded entry
        # left in the heap finds its due time no longer the user's and does nothing (cep.segments).
        for member, due in effects.segment_timers.items():
            if due:
                heapq.heappush(self.timers, (due, next(self._numbers), member))
        if self.on_step is not None:
            assert self.now_ms is not None
            self.on_step(Step(self.now_ms, effects))


def journey_firing_json(firing: JourneyFiring, at: int) -> dict[str, Any]:
    """A journey node's actions as dry-runs and backtests report them."""
    return {
        "at": at,
        "user_id": firing.user_id,
        "journey_id": firing.journey_id,
        "version": firing.version,
        "node": firing.node_id,
        "trigger_event_id": firing.trigger.event_id,
        "step_ts": firing.trigger.ts,
        "actions": [
            redact_action({key: action.record[key] for key in ("type", "params", "due_at")})
            for action in firing.actions
        ],
    }


def firing_json(firing: Firing, at: int) -> dict[str, Any]:
    """A firing as dry-runs and backtests report it."""
    return {
        "at": at,
        "user_id": firing.user_id,
        "ruleset_id": firing.entry.compiled.ruleset.id,
        "rule_id": firing.entry.rule.id,
        "trigger_event_id": firing.trigger.event_id,
        "event_ts": firing.trigger.ts,
        "actions": [
            redact_action({key: action.record[key] for key in ("type", "params", "due_at")})
            for action in firing.actions
        ],
        "explanation": explain(firing.entry, firing.trigger),
    }
