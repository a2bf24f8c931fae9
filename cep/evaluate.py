"""Evaluating a batch of events: engine stages 1 and 2, one step script call per user, emission."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from beacon import metrics
from beacon.clock import Clock
from cep import outbox, streams, timers
from cep.events import ORIGIN_ACTION, ORIGIN_TIMER, Event, partition_of
from cep.firing import ACTION_DUE, firing_spec
from cep.plan import ABSENCE_DUE, absence_due_op, action_due_op, completing_roles, pattern_op
from cep.profiles import Profile, get_profiles
from cep.scripts import run_scripts
from cep.user_state import StepResult, UserPlan, decode_step_reply
from rules.model import Absence, Rule
from rules.predicates import NO_ATTRS, NO_TAGS
from rules.registry import CompiledRuleset

log = logging.getLogger("beacon.worker")

Role = tuple[str, str]
EMPTY_PROFILE = Profile({}, frozenset())


@dataclass(slots=True)
class StepEffects:
    """Effects of step replies that the batch must carry out after the step scripts."""

    queue: list[dict[str, Any]] = field(default_factory=list)
    timers: list[tuple[str, int, str]] = field(default_factory=list)  # (user, due, member)
    tag_events: list[Event] = field(default_factory=list)


@dataclass(slots=True)
class BatchOutcome:
    """What a batch produced. `replayed` holds what duplicates' first processing produced."""

    fresh: StepEffects = field(default_factory=StepEffects)
    replayed: StepEffects = field(default_factory=StepEffects)
    created: list[dict[str, Any]] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    duplicates: int = 0
    # (event, result) pairs in batch order, for dry-runs that explain what happened.
    results: list[tuple[Event, StepResult]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StateLimits:
    """Retention bounds handed to the step script."""

    dedupe_horizon_ms: int
    ledger_retention_ms: int


@dataclass(slots=True)
class _Candidate:
    """An event's part in one rule; compiled/rule are None for a timer whose rule is gone."""

    event_index: int
    compiled: CompiledRuleset | None
    rule: Rule | None
    roles: frozenset[str]
    fire: dict[str, Any] | None = None
    needs_fire: bool = False

    @property
    def reads_profile(self) -> bool:
        """Whether firing here needs the user's profile (only then is it fetched)."""
        return (
            self.needs_fire
            and self.compiled is not None
            and self.rule is not None
            and self.rule.id in self.compiled.profile_rules
        )


class BatchEvaluator:
    """Evaluates batches of events against compiled rulesets; holds no user state itself."""

    def __init__(self, redis: Redis, clock: Clock, partitions: int, limits: StateLimits) -> None:
        self._redis = redis
        self._clock = clock
        self._partitions = partitions
        self._limits = limits

    async def evaluate(self, events: Sequence[Event], rulesets: Sequence[CompiledRuleset]) -> BatchOutcome:
        """Run both engine stages and the per-user step scripts; writes user state, not outbox/timers."""
        outcome = BatchOutcome()
        candidates = self._stage_one(events, rulesets)
        if not candidates:
            return outcome
        users = sorted({events[c.event_index].user_id for c in candidates if c.reads_profile})
        profiles = await get_profiles(self._redis, users)
        now = self._clock.now_ms()
        self._stage_two(events, candidates, profiles, now)
        plans: dict[str, UserPlan] = {}
        ops_by_event: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for candidate in candidates:
            event = events[candidate.event_index]
            plan = plans.get(event.user_id)
            if plan is None:
                plan = plans[event.user_id] = UserPlan(event.user_id)
            op = self._op(plan, event, candidate)
            if op is not None:
                ops_by_event[candidate.event_index].append(op)
                if candidate.rule is not None:
                    plan.note_reentry(candidate.rule.reentry.policy, candidate.rule.reentry.period_ms)
        indexes_by_user: dict[str, list[int]] = defaultdict(list)
        for index in sorted(ops_by_event):
            event = events[index]
            plans[event.user_id].add_event(event.event_id, event.ts, ops_by_event[index])
            indexes_by_user[event.user_id].append(index)
        live = list(indexes_by_user.items())
        calls = [
            plans[user_id].call(
                now_ms=now,
                dedupe_horizon_ms=self._limits.dedupe_horizon_ms,
                ledger_retention_ms=self._limits.ledger_retention_ms,
            )
            for user_id, _ in live
        ]
        replies = await run_scripts(self._redis, calls)
        collected = []
        for (_, indexes), reply in zip(live, replies, strict=True):
            for index, raw in zip(indexes, reply, strict=True):
                collected.append((index, decode_step_reply(raw)))
        for index, result in sorted(collected, key=lambda item: item[0]):
            self._collect(outcome, events[index], result)
        return outcome

    def _stage_one(self, events: Sequence[Event], rulesets: Sequence[CompiledRuleset]) -> list[_Candidate]:
        """Which rule roles each event matches; timer events name their rule themselves."""
        by_id = {compiled.ruleset.id: compiled for compiled in rulesets}
        plain = [(i, event) for i, event in enumerate(events) if event.origin != ORIGIN_TIMER]
        candidates: list[_Candidate] = []
        for compiled in rulesets:
            for index, event in plain:
                by_rule: dict[str, set[str]] = defaultdict(set)
                for match in compiled.matchers.get(event.type, ()):
                    if match.where(event.attrs, NO_ATTRS, NO_TAGS):  # `where` sees the event alone
                        by_rule[match.rule.id].add(match.role)
                for rule_id, rule_roles in by_rule.items():
                    rule = compiled.rules.get(rule_id)
                    if rule is not None:
                        roles_set = frozenset(rule_roles)
                        needs = bool(roles_set & completing_roles(rule))
                        candidates.append(_Candidate(index, compiled, rule, roles_set, needs_fire=needs))
        for index, event in enumerate(events):
            if event.origin != ORIGIN_TIMER or not event.timer:
                continue
            compiled = by_id.get(str(event.timer.get("ruleset_id")))
            kind = event.timer.get("kind")
            if kind == ABSENCE_DUE:
                rule = compiled.rules.get(str(event.timer.get("rule_id"))) if compiled else None
                live = (
                    rule is not None
                    and isinstance(rule.when, Absence)
                    and compiled is not None
                    and compiled.state_ids[rule.id] == event.timer.get("state")
                )
                if live:
                    candidates.append(_Candidate(index, compiled, rule, frozenset({"due"}), needs_fire=True))
                else:  # the rule is gone or changed shape: only drop the pending A
                    candidates.append(_Candidate(index, None, None, frozenset({"due"})))
            elif kind == ACTION_DUE:
                # A delayed action is cancelled when its ruleset was deleted meanwhile.
                cancelled = compiled is None
                candidates.append(_Candidate(index, None, None, frozenset({"cancel" if cancelled else "act"})))
        candidates.sort(key=lambda c: (c.event_index, -(c.rule.priority if c.rule else 0)))
        return candidates

    def _stage_two(
        self, events: Sequence[Event], candidates: list[_Candidate], profiles: dict[str, Profile], now: int
    ) -> None:
        """Check `if` conditions for candidates that may complete, and pre-render their firings."""
        for candidate in candidates:
            if not candidate.needs_fire:
                continue
            compiled, rule = candidate.compiled, candidate.rule
            assert compiled is not None and rule is not None  # needs_fire is only set on live rules
            event = events[candidate.event_index]
            profile = profiles.get(event.user_id, EMPTY_PROFILE)
            if compiled.conditions[rule.id](event.attrs, profile.attrs, profile.tags):
                candidate.fire = firing_spec(compiled.ruleset, rule, event, profile.attrs, now)

    def _op(self, plan: UserPlan, event: Event, candidate: _Candidate) -> dict[str, Any] | None:
        if "due" in candidate.roles:
            return absence_due_op(plan, event, candidate.fire)
        if "act" in candidate.roles or "cancel" in candidate.roles:
            return action_due_op(event, cancel="cancel" in candidate.roles)
        assert candidate.compiled is not None and candidate.rule is not None
        compiled, rule = candidate.compiled, candidate.rule
        return pattern_op(
            plan, compiled.ruleset, rule, compiled.state_ids[rule.id], event, candidate.roles, candidate.fire
        )

    def _collect(self, outcome: BatchOutcome, event: Event, result: StepResult) -> None:
        outcome.results.append((event, result))
        effects = outcome.replayed if result.duplicate else outcome.fresh
        if result.duplicate:
            outcome.duplicates += 1
        else:
            outcome.created.extend(result.created)
            outcome.fired.extend(result.fired)
            outcome.late.extend(result.late)
        effects.queue.extend(result.queue)
        effects.timers.extend((event.user_id, due, member) for due, member in result.timers)
        effects.tag_events.extend(_tag_event(event, "tag_added", tag) for tag in result.tags_added)
        effects.tag_events.extend(_tag_event(event, "tag_removed", tag) for tag in result.tags_removed)

    async def emit(self, outcome: BatchOutcome, *, replay: bool) -> None:
        """Queue actions in the outbox, schedule timers, append tag events, count what was new.

        `replay` is set for entries reclaimed from a consumer that died: their step may have run
        without the appends that follow it, so what the step replays for duplicates is carried out
        again (outbox consumers dedupe by action id, timers by member, events by id). A duplicate read
        for the first time is a producer retry, whose effects were carried out with the original.
        """
        effects = [outcome.fresh, outcome.replayed] if replay else [outcome.fresh]
        queue = [record for e in effects for record in e.queue]
        due = [timer for e in effects for timer in e.timers]
        tag_events = [event for e in effects for event in e.tag_events]
        if queue or due or outcome.created:
            async with self._redis.pipeline(transaction=False) as pipe:
                for record in queue:
                    outbox.queue_action(pipe, partition_of(record["user_id"], self._partitions), record)
                by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
                for user_id, due_ms, member in due:
                    by_partition[partition_of(user_id, self._partitions)].append((due_ms, member))
                for partition, entries in by_partition.items():
                    timers.schedule(pipe, partition, entries)
                for record in outcome.created:
                    outbox.note_recent(pipe, record["user_id"], record["action_id"])
                await pipe.execute()
        if tag_events:
            await streams.append_events(self._redis, tag_events, self._partitions)
        now = self._clock.now_ms()
        for record in queue:
            received = record.get("received_ms") or 0
            metrics.on_action_emitted(record["type"], (now - received) / 1000 if received else None)
        for record in outcome.created:
            if record["type"] == "tag":
                metrics.on_action_emitted("tag", None)
        for rk in outcome.fired:
            metrics.on_rule_fired(*rk.split("/", 1))
        for rk in outcome.late:
            metrics.on_late_event(*rk.split("/", 1))
        for _ in range(outcome.duplicates):
            metrics.on_duplicate_event()


def _tag_event(cause: Event, event_type: str, tag: str) -> Event:
    # Deterministic id: a replayed batch re-emits the same event, which the step script then dedupes.
    return Event(
        event_id=f"{event_type}:{tag}:{cause.event_id}",
        user_id=cause.user_id,
        type=event_type,
        ts=cause.ts,
        attrs={"tag": tag, "cause_event_id": cause.event_id},
        received_ms=cause.received_ms,
        origin=ORIGIN_ACTION,
    )
