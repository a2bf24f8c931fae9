"""Journey dry-runs: one journey on a list of events, in-process on a simulated clock, no Redis.

The same evaluator and simulation as ruleset dry-runs (`cep.dryrun`): the events go through the live
journey runner, timers (waits, wait_for timeouts, delays) fire on the simulated clock, and the report
shows each node's actions, every user's trace, the statistics the live server would count, and the
instances still waiting at the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cep.events import Event
from cep.journey_stats import stats_view
from cep.journeys import counter_field
from cep.rule_index import RuleIndex
from cep.simulate import Simulation, Step, journey_firing_json
from cep.user_record import FINISHED
from rules.journey_compiled import CompiledJourney, JourneyVersions
from rules.journey_model import Journey

MAX_STEPS = 100_000  # events, chained events and timers together: a runaway run stops here


def journey_dry_run(
    journey: Journey,
    events: Sequence[Event],
    profiles: Mapping[str, Mapping[str, Any]],
    dedupe_horizon_ms: int,
    until_ms: int | None = None,
) -> dict[str, Any]:
    """Run `events` (in the given arrival order) through one journey and report what it did."""
    steps: list[dict[str, Any]] = []
    trace: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, int] = {}

    def report(step: Step) -> None:
        steps.extend(journey_firing_json(firing, step.at) for firing in step.effects.journey_firings)
        for user_id, entry in step.effects.trace or ():
            trace.setdefault(user_id, []).append({"at": step.at, **entry})
        for (_, version, node, what), delta in step.effects.journey_counts.items():
            name = counter_field(version, node, what)
            counts[name] = counts.get(name, 0) + delta

    compiled = CompiledJourney.build(journey)
    simulation = Simulation(
        RuleIndex((), [JourneyVersions(1, (compiled,))]),
        max_steps=MAX_STEPS,
        dedupe_horizon_ms=dedupe_horizon_ms,
        on_step=report,
        trace=True,
    )
    for user_id, profile in profiles.items():
        simulation.set_profile(user_id, profile.get("attrs") or {}, profile.get("tags") or ())
    for event in events:
        simulation.feed(event)
    simulation.fire_timers(until_ms)
    waiting = []
    for user_id, state in simulation.states.items():
        for marks in state.journeys.values():
            for key, inst in marks.instances.items():
                if inst.node != FINISHED:
                    node = compiled.node_ids[inst.node]
                    waiting.append({"user_id": user_id, "key": key, "node": node, "due": inst.due or None})
    return {
        "steps": steps,
        "stats": stats_view({name: value for name, value in counts.items() if value}),
        "waiting": waiting,
        "trace": {user_id: entries[::-1] for user_id, entries in trace.items()},  # newest first, as live
    }
