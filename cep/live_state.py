"""The "why didn't it fire?" view: a user's live pattern state and journey instances, from the packed record."""

from __future__ import annotations

from typing import Any

from cep import attribution
from cep.rule_index import RuleIndex
from cep.user_record import FINISHED, UserState

PART_NAMES = {"a": "first_seen", "b": "then_or_missing_seen", "p": "pending_absence", "t": "window"}


def live_state(state: UserState, index: RuleIndex) -> dict[str, Any]:
    """Per rule key: its watermark, last firing, first-seen marker and live pattern lists with entries."""
    rules: dict[str, dict[str, Any]] = {}

    def rule(rk: str) -> dict[str, Any]:
        return rules.setdefault(rk, {"sets": []})

    for state_id, pattern in state.patterns.items():
        entry = index.by_state.get(state_id)
        shape = index.histories.get(state_id)
        if state_id == attribution.STATE_ID:
            view = rule("(goal touches: [touched ts, deadline, trigger, delivered ts, clicked ts, converted])")
        elif shape is not None:
            view = rule(f"(behaviour history of {shape.match.event})")
        else:
            view = rule(entry.key if entry else f"(retired pattern {state_id})")
        view["watermark"] = pattern.watermark
        for role, lists in pattern.parts.items():
            for correlation, items in lists.items():
                view["sets"].append(
                    {
                        "kind": PART_NAMES.get(role, role),
                        "correlation": correlation,
                        "entries": [_entry(role, item) for item in items],
                    }
                )
    for short, (ts, _) in state.fired.items():
        rule(_rule_key(index, short))["last_fired_ts"] = ts
    for short, ts in state.first.items():
        rule(_rule_key(index, short))["first_seen_ts"] = ts
    return rules


def journey_state(state: UserState, index: RuleIndex) -> dict[str, Any]:
    """Per journey: how often the user entered, and each instance's version, node and pending timer."""
    journeys: dict[str, Any] = {}
    for short, marks in state.journeys.items():
        entry = index.journey_by_short.get(short)
        if entry is None:
            continue  # a deleted journey: its instances are cancelled (dropped when the user is next touched)
        instances = []
        for key, inst in marks.instances.items():
            compiled = entry.versions.get(inst.version)
            node = compiled.node_ids[inst.node] if compiled and inst.node != FINISHED else None
            instances.append(
                {
                    "key": key,
                    "version": inst.version,
                    "node": node,
                    "finished": inst.node == FINISHED,
                    "entered_ts": inst.entry_ts,
                    "step_ts": inst.step_ts,
                    "due": inst.due or None,
                    "goal_by": inst.goal_by or None,
                    "entry_event_hash": f"{inst.entry:016x}",
                }
            )
        name = entry.id
        entered = {
            key: {"entries": entries, "last_entry_ts": last} for key, (entries, last, _) in marks.entered.items()
        }
        journeys[name] = {"entered": entered, "instances": instances}
    return journeys


def segment_state(state: UserState, index: RuleIndex) -> dict[str, Any]:
    """Per active segment the user is in (or has a window timer for): since when, and the next window change."""
    found: dict[str, Any] = {}
    for short, (mark, due, _) in state.segments.items():
        entry = index.segment_by_short.get(short)
        if entry is not None:
            found[entry.id] = {
                "member": mark > 0,
                "since": mark if mark > 0 else None,
                "left_at": -mark - 1 if mark < 0 else None,
                "next_change": due or None,
            }
    return found


def _rule_key(index: RuleIndex, short_key: str) -> str:
    entry = index.by_short_key.get(short_key)
    return entry.key if entry else f"(retired rule {short_key})"


def _entry(kind: str, item: Any) -> dict[str, Any]:
    if kind == "p":
        return {"event_id": item[1], "ts": item[0]}
    if isinstance(item, list):
        return {"ts": item[0], "value": item[1]}
    return {"ts": item}
