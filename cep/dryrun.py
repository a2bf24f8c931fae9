"""Dry-runs: a ruleset on a list of events, in-process on a simulated clock (`cep.simulate`), no Redis.

The events go through the same evaluator as live traffic, so a dry-run answers what the live server
would do with those events; nothing is stored anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cep.events import Event
from cep.rule_index import RuleIndex
from cep.simulate import Simulation, Step, firing_json
from rules.compiled import CompiledRuleset
from rules.model import Ruleset

MAX_STEPS = 100_000  # events, chained events and timers together: a runaway run stops here


def dry_run(
    ruleset: Ruleset,
    events: Sequence[Event],
    profiles: Mapping[str, Mapping[str, Any]],
    dedupe_horizon_ms: int,
    until_ms: int | None = None,
) -> dict[str, Any]:
    """Run `events` (in the given arrival order) and report firings, late events and pending timers."""
    firings: list[dict[str, Any]] = []
    late: list[dict[str, Any]] = []

    def report(step: Step) -> None:
        firings.extend(firing_json(firing, step.at) for firing in step.effects.firings)
        late.extend(
            {"user_id": event.user_id, "rule_id": entry.rule.id, "event_id": event.event_id, "ts": event.ts}
            for entry, event in step.effects.late
        )

    simulation = Simulation(
        RuleIndex([CompiledRuleset.build(ruleset)]),
        max_steps=MAX_STEPS,
        dedupe_horizon_ms=dedupe_horizon_ms,
        on_step=report,
    )
    for user_id, profile in profiles.items():
        simulation.set_profile(user_id, profile.get("attrs") or {}, profile.get("tags") or ())
    for event in events:
        simulation.feed(event)
    simulation.fire_timers(until_ms)
    for firing in firings:
        del firing["ruleset_id"]  # one ruleset per dry-run
    pending = [{"due": due, "user_id": user_id} for due, user_id in simulation.pending()]
    return {"firings": firings, "late": late, "pending_timers": pending}
