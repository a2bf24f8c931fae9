"""Dry-runs: a ruleset on a list of events, with throwaway state and a simulated clock.

The events go through the same evaluator and step script as live traffic, under user ids namespaced
to the run; timers are kept in memory and fire as the simulated clock passes them; the run's keys are
deleted at the end. So a dry-run answers exactly what the live server would do with those events.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis

from beacon.clock import ManualClock
from beacon.errors import TooLargeError
from cep.evaluate import BatchEvaluator, StateLimits
from cep.events import Event, decode_timer_event
from cep.profiles import patch_profile
from cep.user_state import StepResult
from rules.durations import format_duration
from rules.model import Absence, First, Ruleset, Single, Threshold
from rules.model import Sequence as SequencePattern
from rules.registry import CompiledRuleset

MAX_STEPS = 100_000  # events, chained events and timers together: a runaway chain stops here


def explain(ruleset: Ruleset, rule_id: str, trigger: Event) -> str:
    """One line on why a rule fired for a trigger event."""
    rule = next(rule for rule in ruleset.rules if rule.id == rule_id)
    when = rule.when
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


async def dry_run(
    redis: Redis,
    ruleset: Ruleset,
    events: Sequence[Event],
    profiles: Mapping[str, Mapping[str, Any]],
    limits: StateLimits,
    until_ms: int | None = None,
) -> dict[str, Any]:
    """Run `events` (in the given arrival order) and report firings, late events and pending timers."""
    run = uuid.uuid4().hex[:12]
    prefix = f"dry:{run}:"
    compiled = CompiledRuleset.build(ruleset)
    start = min((event.ts for event in events), default=0)
    clock = ManualClock(start)
    evaluator = BatchEvaluator(redis, clock, partitions=1, limits=limits)
    firings: list[dict[str, Any]] = []
    late: list[dict[str, Any]] = []
    timers: list[tuple[int, int, str]] = []  # (due, seq, member) heap
    seq = 0
    try:
        for user_id, profile in profiles.items():
            await patch_profile(
                redis, prefix + user_id, dict(profile.get("attrs") or {}), list(profile.get("tags") or ())
            )

        steps = 0

        async def step(event: Event) -> None:
            nonlocal seq, steps
            steps += 1
            if steps > MAX_STEPS:
                raise TooLargeError(f"the dry-run took more than {MAX_STEPS} steps (a tag chain loops?)", path="events")
            outcome = await evaluator.evaluate([event], [compiled])
            for done_event, result in outcome.results:
                _report(ruleset, prefix, clock.now_ms(), done_event, result, firings, late)
                for due, member in result.timers:
                    heapq.heappush(timers, (due, seq, member))
                    seq += 1
            for chained in outcome.fresh.tag_events:
                await step(chained)

        async def fire_timers(up_to: int) -> None:
            while timers and timers[0][0] <= up_to:
                due, _, member = heapq.heappop(timers)
                clock.set(due)
                await step(decode_timer_event(member, due))

        for event in events:
            namespaced = replace(event, user_id=prefix + event.user_id, received_ms=max(event.ts, clock.now_ms()))
            await fire_timers(event.ts)
            clock.set(event.ts)
            await step(namespaced)
        await fire_timers(until_ms if until_ms is not None else 2**62)
    finally:
        async for key in redis.scan_iter(match=f"b:{{u:{prefix}*", count=1000):
            await redis.delete(key)
    pending = [
        {"due": due, "user_id": decode_timer_event(member, due).user_id.removeprefix(prefix)}
        for due, _, member in sorted(timers)
    ]
    return {"firings": firings, "late": late, "pending_timers": pending}


def _report(
    ruleset: Ruleset,
    prefix: str,
    now: int,
    event: Event,
    result: StepResult,
    firings: list[dict[str, Any]],
    late: list[dict[str, Any]],
) -> None:
    user_id = event.user_id.removeprefix(prefix)
    for rk in result.fired:
        rule_id = rk.split("/", 1)[1]
        actions = [
            {"type": record["type"], "params": record["params"], "due_at": record["due_at"]}
            for record in result.created
            if record["rule_id"] == rule_id
        ]
        firings.append(
            {
                "at": now,
                "user_id": user_id,
                "rule_id": rule_id,
                "trigger_event_id": event.event_id,
                "event_ts": event.ts,
                "actions": actions,
                "explanation": explain(ruleset, rule_id, event),
            }
        )
    for rk in result.late:
        late.append({"user_id": user_id, "rule_id": rk.split("/", 1)[1], "event_id": event.event_id, "ts": event.ts})
