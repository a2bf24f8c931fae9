"""A report's counters recomputed from the event archive: the archived events replayed through the evaluator.

The archive holds every event the partition owners processed, with the order they processed them in
(`partition, archived_ms, entry_seq, position`). Replaying the ones that came from outside the engine —
producers' events and clicks, the connectors' delivery outcomes, plans' events — through the same
evaluator as live processing (`cep.simulate`), with the ruleset or journey as given, yields the same
measurement counters (`cep.attribution`) the owners committed: a check of the live figures, and a way to
measure a ruleset over history it was not live for. Events the engine made itself (tag and segment
events, timer triggers) are not replayed: the replay makes them again.

Partitions are replayed interleaved by commit time, each in its own order; users never share state, so
only each user's order matters, and that is kept exactly. Timers fire as the replay's clock passes them,
and those due by `until_ms` at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

from cep.events import ORIGIN_DELIVERY, ORIGIN_PLAN, ORIGIN_PRODUCER, Event
from cep.rule_index import RuleIndex
from cep.simulate import Simulation, Step
from measure.archive_query import query

REPLAYED = (ORIGIN_PRODUCER, ORIGIN_DELIVERY, ORIGIN_PLAN)
EVENTS_SQL = (
    "SELECT event_id, user_id, type, ts, received_ms, origin, attrs FROM events "
    f"WHERE origin IN ({', '.join('?' for _ in REPLAYED)}) "
    "ORDER BY archived_ms, partition, entry_seq, position"
)


def replayed_counts(data_dir: Path, index: RuleIndex, scope: str, until_ms: int) -> dict[str, int]:
    """The measurement counters of `scope` (`m:rs:<id>`, `m:j:<id>`) that replaying the archive through
    `index` produces, as the live statistics hash holds them (`<day>|<unit>|<what>` -> count)."""
    counts: dict[str, int] = {}

    def collect(step: Step) -> None:
        for (found, day, unit, what), delta in step.effects.measures.items():
            if found == scope and delta:
                field = f"{day}|{unit}|{what}"
                counts[field] = counts.get(field, 0) + delta

    simulation = Simulation(index, on_step=collect)
    for event_id, user_id, event_type, ts, received_ms, origin, attrs in query(data_dir, EVENTS_SQL, list(REPLAYED)):
        simulation.feed(Event(event_id, user_id, event_type, ts, json.loads(attrs), received_ms, origin))
        if simulation.steps % 50_000 == 0:
            simulation.prune()
    simulation.fire_timers(until_ms)
    return counts
