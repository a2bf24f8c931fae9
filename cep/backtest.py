"""Backtests: rulesets and journeys over a recorded event log, through the dry-run's simulation (`cep.simulate`).

The same evaluator as live traffic and dry-runs, but sized for millions of events: firings are
counted as they happen (per rule, per day) and only a bounded sample is kept, so memory grows with
the users' state, never with the number of events or firings.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cep.events import Event, partition_of
from cep.journey_stats import stats_view
from cep.journeys import counter_field
from cep.rule_index import RuleIndex, rule_key
from cep.simulate import DEDUPE_HORIZON_MS, Simulation, Step, firing_json, journey_firing_json
from rules.compiled import CompiledRuleset
from rules.journey_compiled import CompiledJourney, JourneyVersions
from rules.journey_model import Journey
from rules.model import Ruleset
from rules.predicates import NO_ATTRS, NO_TAGS

DAY_MS = 86_400_000
SAMPLE_SIZE = 100  # firings reported in full; the rest are only counted
PROGRESS_EVERY = 5_000  # events between two progress calls: often enough for a bar, rare enough to be free
# The simulation never forgets user state; live processing prunes each touched user after every batch.
# Sweeping every user this often keeps dedupe ids and expired patterns from growing with the log's
# length, at a cost (one pass over the users) spread over this many events. A multiple of PROGRESS_EVERY.
PRUNE_EVERY = 1_000_000


@dataclass(slots=True)
class RuleSummary:
    """What one rule did over the whole run."""

    ruleset_id: str
    rule_id: str
    firings: int = 0
    users: set[str] = field(default_factory=set)  # grows with users, like their state: not with firings
    actions: Counter[str] = field(default_factory=Counter)  # action type -> created
    late: int = 0
    duplicates: int = 0  # duplicate events this rule matches, dropped before evaluation
    first_at: int | None = None
    last_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The rule's line of the report."""
        return {
            "ruleset_id": self.ruleset_id,
            "rule_id": self.rule_id,
            "firings": self.firings,
            "users": len(self.users),
            "actions": dict(sorted(self.actions.items())),
            "late": self.late,
            "duplicates": self.duplicates,
            "first_firing_at": self.first_at,
            "last_firing_at": self.last_at,
        }


@dataclass(slots=True)
class JourneySummary:
    """What one journey did over the whole run: its statistics (as `GET /v1/journeys/{id}/stats` counts
    them live) and the actions its nodes created."""

    journey_id: str
    version: int
    counts: Counter[str] = field(default_factory=Counter)  # stats field -> count (cep.journey_stats)
    actions: Counter[str] = field(default_factory=Counter)  # action type -> created
    users: set[str] = field(default_factory=set)  # users who got at least one action

    def journey_totals(self) -> dict[str, int]:
        """The journey-wide counts (entered, completed, exited, converted, ...) over its versions."""
        totals: dict[str, int] = {}
        for name, value in self.counts.items():
            _, node, what = name.split("|", 2)
            if not node:
                totals[what] = totals.get(what, 0) + value
        return totals

    def to_json(self) -> dict[str, Any]:
        """The journey's part of the report."""
        return {
            "journey_id": self.journey_id,
            "version": self.version,
            "actions": dict(sorted(self.actions.items())),
            "users_acted_on": len(self.users),
            **stats_view({name: value for name, value in self.counts.items() if value}),
        }


@dataclass(slots=True)
class DayCounts:
    """Events (by their `ts`) and firings (by simulated firing time) of one UTC day."""

    events: int = 0
    firings: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)  # rule key -> firings


@dataclass(slots=True)
class Totals:
    """Run-wide counts and speed."""

    events: int = 0
    users: int = 0
    firings: int = 0
    late: int = 0
    duplicates: int = 0
    chained_events: int = 0
    timers_fired: int = 0
    pending_timers: int = 0
    first_event_ts: int | None = None
    last_event_ts: int | None = None
    clock_end_ms: int | None = None
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The totals of the report, with events/s derived from the elapsed time."""
        rate = self.events / self.elapsed_s if self.elapsed_s > 0 else None
        return {
            "events": self.events,
            "users": self.users,
            "firings": self.firings,
            "late": self.late,
            "duplicates": self.duplicates,
            "chained_events": self.chained_events,
            "timers_fired": self.timers_fired,
            "pending_timers": self.pending_timers,
            "first_event_ts": self.first_event_ts,
            "last_event_ts": self.last_event_ts,
            "clock_end_ms": self.clock_end_ms,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(rate, 1) if rate is not None else None,
        }


@dataclass(slots=True)
class BacktestReport:
    """A backtest's outcome: per-rule summaries, a per-day timeline, totals and a sample of firings."""

    rulesets: list[tuple[str, int]]  # (id, version) in the order given
    rules: list[RuleSummary]
    days: dict[int, DayCounts]  # day number since the epoch (UTC) -> counts
    totals: Totals
    sample: list[dict[str, Any]]
    until_ms: int | None = None
    journeys: list[JourneySummary] = field(default_factory=list)

    def timeline(self) -> list[dict[str, Any]]:
        """Per-day counts in day order; days with neither events nor firings are left out."""
        return [
            {
                "day": day_name(day),
                "events": counts.events,
                "firings": counts.firings,
                "firings_by_rule": dict(sorted(counts.by_rule.items())),
            }
            for day, counts in sorted(self.days.items())
        ]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-serialisable data (what `POST /v1/backtest` and `--json` return)."""
        return {
            "rulesets": [{"id": ruleset_id, "version": version} for ruleset_id, version in self.rulesets],
            "until": self.until_ms,
            "rules": [summary.to_json() for summary in self.rules],
            "journeys": [summary.to_json() for summary in self.journeys],
            "timeline": self.timeline(),
            "totals": self.totals.to_json(),
            "sample": self.sample,
            "sample_size": len(self.sample),
        }


def day_name(day: int) -> str:
    """The ISO date (UTC) of a day number since the epoch."""
    return datetime.fromtimestamp(day * DAY_MS / 1000, UTC).date().isoformat()


class _Tally:
    """The simulation's `on_step` hook: counts what each step did, keeps the first firings in full."""

    def __init__(
        self,
        index: RuleIndex,
        rulesets: Sequence[CompiledRuleset],
        journeys: Sequence[Journey],
        sample_size: int,
    ) -> None:
        self.index = index
        self.journeys = {journey.id: JourneySummary(journey.id, journey.version) for journey in journeys}
        self.rules = {
            rule_key(compiled.ruleset.id, rule.id): RuleSummary(compiled.ruleset.id, rule.id)
            for compiled in rulesets
            for rule in compiled.ruleset.rules
        }
        self.days: dict[int, DayCounts] = {}
        self.totals = Totals()
        self.sample: list[dict[str, Any]] = []
        self.sample_size = sample_size
        self.steps = 0
        self.last_step: Step | None = None

    def on_step(self, step: Step) -> None:
        """Count one event's or timer's effects."""
        self.steps += 1
        self.last_step = step
        effects = step.effects
        totals = self.totals
        totals.chained_events += len(effects.chained)
        totals.duplicates += effects.duplicates
        for entry, _event in effects.late:
            self.rules[entry.key].late += 1
            totals.late += 1
        if effects.journey_counts or effects.journey_firings:
            self._journeys(step)
        if not effects.firings:
            return
        day = self.day_counts(step.at // DAY_MS)
        for firing in effects.firings:
            key = firing.entry.key
            summary = self.rules[key]
            summary.firings += 1
            summary.users.add(firing.user_id)
            summary.actions.update(action.record["type"] for action in firing.actions)
            if summary.first_at is None:
                summary.first_at = step.at
            summary.last_at = step.at
            day.firings += 1
            day.by_rule[key] += 1
            totals.firings += 1
            if len(self.sample) < self.sample_size:
                self.sample.append(firing_json(firing, step.at))

    def _journeys(self, step: Step) -> None:
        for (journey_id, version, node, what), delta in step.effects.journey_counts.items():
            self.journeys[journey_id].counts[counter_field(version, node, what)] += delta
        for firing in step.effects.journey_firings:
            summary = self.journeys[firing.journey_id]
            summary.actions.update(action.record["type"] for action in firing.actions)
            summary.users.add(firing.user_id)
            if len(self.sample) < self.sample_size:
                self.sample.append(journey_firing_json(firing, step.at))

    def duplicate(self, event: Event) -> None:
        """A producer event dropped as a duplicate: charge it to every rule whose matcher takes it."""
        keys = {
            candidate.entry.key
            for candidate in self.index.by_type.get(event.type, ())
            if candidate.where(event.attrs, NO_ATTRS, NO_TAGS)
        }
        for key in keys:
            self.rules[key].duplicates += 1

    def day_counts(self, day: int) -> DayCounts:
        """The counts of a day number, created on first use."""
        counts = self.days.get(day)
        if counts is None:
            counts = self.days[day] = DayCounts()
        return counts


def run_backtest(
    rulesets: Sequence[Ruleset],
    events: Iterable[Event],
    *,
    progress: Callable[[int], None] | None = None,
    until_ms: int | None = None,
    dedupe_horizon_ms: int = DEDUPE_HORIZON_MS,
    max_steps: int = sys.maxsize,
    sample_size: int = SAMPLE_SIZE,
    shard: tuple[int, int] = (0, 1),
    journeys: Sequence[Journey] = (),
) -> BacktestReport:
    """Run `events` in the given (arrival) order through `rulesets` and `journeys`, then fire the timers
    due by `until_ms`.

    `until_ms` None fires every remaining timer, as a dry-run does. `progress` is called with the
    number of events read every PROGRESS_EVERY events and once at the end.

    `shard` (k, n) evaluates only the users of hash bucket k of n (`partition_of`), which is how
    `beacon backtest --jobs n` spreads a log over n processes. Users are independent, and every event
    still moves the simulated clock, so each timer fires at the same moment as in one unsharded run:
    `merge_reports` of the n shards equals the unsharded report, but for which firings the sample keeps.
    """
    started = time.perf_counter()
    compiled = [CompiledRuleset.build(ruleset) for ruleset in rulesets]
    index = RuleIndex(compiled, [JourneyVersions(1, (CompiledJourney.build(journey),)) for journey in journeys])
    tally = _Tally(index, compiled, journeys, sample_size)
    simulation = Simulation(index, max_steps=max_steps, dedupe_horizon_ms=dedupe_horizon_ms, on_step=tally.on_step)
    totals = tally.totals
    count = 0
    # Events of one day are counted in a local and flushed on a day change: logs are mostly in ts order.
    day, day_events = -1, 0
    bucket, buckets = shard
    read = 0
    for event in events:
        read += 1
        if totals.first_event_ts is None:
            totals.first_event_ts = event.ts
        totals.last_event_ts = event.ts
        if read % PROGRESS_EVERY == 0:
            if progress is not None:
                progress(read)
            if read % PRUNE_EVERY == 0:
                simulation.prune()
        if buckets > 1 and partition_of(event.user_id, buckets) != bucket:
            simulation.advance(event.ts)
            continue
        tally.last_step = None
        simulation.feed(event)
        count += 1
        step = tally.last_step
        # feed() reports the event's own step last, after the timers it let fire. An event that did
        # nothing but count a duplicate was itself the duplicate (a duplicate chained event has a cause).
        if step is not None and step.effects.duplicates and not step.effects.chained:
            tally.duplicate(event)
        event_day = event.ts // DAY_MS
        if event_day != day:
            if day_events:
                tally.day_counts(day).events += day_events
            day, day_events = event_day, 0
        day_events += 1
    if day_events:
        tally.day_counts(day).events += day_events
    simulation.fire_timers(until_ms)
    totals.events = count
    totals.users = len(simulation.states)
    # Every feed() reports exactly one step for its event; all other steps were timers.
    totals.timers_fired = tally.steps - count
    totals.pending_timers = len(simulation.pending())
    totals.clock_end_ms = simulation.now_ms
    totals.elapsed_s = time.perf_counter() - started
    if progress is not None:
        progress(read)
    return BacktestReport(
        rulesets=[(item.ruleset.id, item.ruleset.version) for item in compiled],
        rules=list(tally.rules.values()),
        days=tally.days,
        totals=totals,
        sample=tally.sample,
        until_ms=until_ms,
        journeys=list(tally.journeys.values()),
    )


# Totals that add up over shards (each user, and so each firing and timer, belongs to one shard).
_SUMMED = ("events", "users", "firings", "late", "duplicates", "chained_events", "timers_fired", "pending_timers")


def merge_reports(
    reports: Sequence[BacktestReport], elapsed_s: float, sample_size: int = SAMPLE_SIZE
) -> BacktestReport:
    """One report from the shards of a run (`run_backtest(shard=...)`), which took `elapsed_s` in all.

    Counts add up (each user, so each firing, belongs to one shard); the first and last times are the
    earliest and latest; the sample keeps the earliest firings of all the shards' samples.
    """
    first = reports[0]
    rules = {(rule.ruleset_id, rule.rule_id): RuleSummary(rule.ruleset_id, rule.rule_id) for rule in first.rules}
    days: dict[int, DayCounts] = {}
    totals = Totals()
    journeys = {summary.journey_id: JourneySummary(summary.journey_id, summary.version) for summary in first.journeys}
    for report in reports:
        for summary in report.journeys:
            into_journey = journeys[summary.journey_id]
            into_journey.counts.update(summary.counts)
            into_journey.actions.update(summary.actions)
            into_journey.users |= summary.users
        for rule in report.rules:
            into = rules[(rule.ruleset_id, rule.rule_id)]
            into.firings += rule.firings
            into.users |= rule.users
            into.actions.update(rule.actions)
            into.late += rule.late
            into.duplicates += rule.duplicates
            into.first_at = _earliest(into.first_at, rule.first_at)
            into.last_at = _latest(into.last_at, rule.last_at)
        for day, counts in report.days.items():
            merged = days.setdefault(day, DayCounts())
            merged.events += counts.events
            merged.firings += counts.firings
            merged.by_rule.update(counts.by_rule)
        part = report.totals
        for name in _SUMMED:
            setattr(totals, name, getattr(totals, name) + getattr(part, name))
        totals.first_event_ts = _earliest(totals.first_event_ts, part.first_event_ts)
        totals.last_event_ts = _latest(totals.last_event_ts, part.last_event_ts)
        totals.clock_end_ms = _latest(totals.clock_end_ms, part.clock_end_ms)
    totals.elapsed_s = elapsed_s
    sample = sorted((firing for report in reports for firing in report.sample), key=lambda firing: firing["at"])
    return BacktestReport(
        rulesets=first.rulesets,
        rules=list(rules.values()),
        days=days,
        totals=totals,
        sample=sample[:sample_size],
        until_ms=first.until_ms,
        journeys=list(journeys.values()),
    )


def _earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)
