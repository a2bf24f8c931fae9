"""The "why didn't it fire?" view: a user's live pattern state, read from the user's packed record."""

from __future__ import annotations

from typing import Any

from cep.rule_index import RuleIndex
from cep.user_record import UserState

PART_NAMES = {"a": "first_seen", "b": "then_or_missing_seen", "p": "pending_absence", "t": "window"}


def live_state(state: UserState, index: RuleIndex) -> dict[str, Any]:
    """Per rule key: its watermark, last firing, first-seen marker and live pattern lists with entries."""
    rules: dict[str, dict[str, Any]] = {}

    def rule(rk: str) -> dict[str, Any]:
        return rules.setdefault(rk, {"sets": []})

    for state_id, pattern in state.patterns.items():
        entry = index.by_state.get(state_id)
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


def _rule_key(index: RuleIndex, short_key: str) -> str:
    entry = index.by_short_key.get(short_key)
    return entry.key if entry else f"(retired rule {short_key})"


def _entry(kind: str, item: Any) -> dict[str, Any]:
    if kind == "p":
        return {"event_id": item[1], "ts": item[0]}
    if isinstance(item, list):
        return {"ts": item[0], "value": item[1]}
    return {"ts": item}
