"""Per-rule ops for the step script: which pattern state an event touches, under which keys (pure)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from cep.events import ORIGIN_TIMER, Event, encode_timer_event
from cep.firing import rule_key
from cep.user_state import UserPlan, pattern_key
from rules.model import Absence, First, Rule, Ruleset, Sequence, Single, Threshold

ABSENCE_DUE = "absence"  # timer kind: an absence deadline
# State outlives its window by this much wall time, so a slow consumer does not lose it to a TTL.
TTL_MARGIN_MS = 60_000


def completing_roles(rule: Rule) -> frozenset[str]:
    """Roles whose match can complete the rule on that very event (an absence completes on its timer)."""
    when = rule.when
    if isinstance(when, Sequence):
        return frozenset({"first", "then"})
    if isinstance(when, Absence):
        return frozenset()
    return frozenset({"match"})


def correlation_key(fields: tuple[str, ...], attrs: Mapping[str, Any]) -> str | None:
    """The correlation value of an event, or None when it lacks a field (it cannot correlate)."""
    if not fields:
        return "_"
    values = []
    for name in fields:
        value = attrs.get(name)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 3 and 3.0 are the same SKU
        values.append(value)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _ttl(window_ms: int, lateness_ms: int) -> int:
    return window_ms + lateness_ms + TTL_MARGIN_MS


def pattern_op(
    plan: UserPlan,
    ruleset: Ruleset,
    rule: Rule,
    sid: str,
    event: Event,
    roles: frozenset[str],
    fire: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """The op for `event` matching `roles` of `rule`; None when the event cannot take part."""
    when, rk, late = rule.when, rule_key(ruleset.id, rule.id), rule.lateness_ms
    if isinstance(when, Single):
        return {"k": "single", "f": fire}
    if isinstance(when, First):
        return {"k": "first", "rk": rk, "f": fire}
    if isinstance(when, Threshold):
        window_corr = correlation_key(when.correlate, event.attrs)
        if window_corr is None:
            return None
        op: dict[str, Any] = {"k": "thr", "rk": rk, "late": late, "w": when.window_ms, "f": fire}
        op["ttl"] = _ttl(when.window_ms, late)
        op["kt"] = plan.key_index(pattern_key(event.user_id, sid, "t", window_corr))
        if when.sum_field is None:
            op["n"], op["v"] = int(when.at_least), "1"
        else:
            value = event.attrs.get(when.sum_field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return None  # nothing to add up
            op["x"], op["v"] = when.at_least, repr(value)
        return op
    corr = correlation_key(when.correlate, event.attrs)
    if corr is None:
        return None
    ttl = _ttl(when.within_ms, late)
    if isinstance(when, Sequence):
        return {
            "k": "seq",
            "rk": rk,
            "late": late,
            "w": when.within_ms,
            "ttl": ttl,
            "f": fire,
            "ka": plan.key_index(pattern_key(event.user_id, sid, "a", corr)),
            "kb": plan.key_index(pattern_key(event.user_id, sid, "b", corr)),
            "ra": "first" in roles,
            "rb": "then" in roles,
        }
    op = {
        "k": "abs",
        "rk": rk,
        "late": late,
        "w": when.within_ms,
        "ttl": ttl,
        "kp": plan.key_index(pattern_key(event.user_id, sid, "pending", corr)),
        "kb": plan.key_index(pattern_key(event.user_id, sid, "b", corr)),
        "ra": "first" in roles,
        "rb": "missing" in roles,
    }
    if op["ra"]:
        due = event.ts + when.within_ms + late
        op["timer"] = [str(due), absence_due_member(ruleset, rule, sid, corr, event, due)]
    return op


def absence_due_member(ruleset: Ruleset, rule: Rule, sid: str, corr: str, first: Event, due_ms: int) -> str:
    """The timer-set member of an absence deadline: A's attributes travel with it for `if` and templates."""
    assert isinstance(rule.when, Absence)
    timer_event = Event(
        event_id=f"due:{sid}:{first.event_id}",
        user_id=first.user_id,
        type=first.type,
        ts=first.ts + rule.when.within_ms,
        attrs=first.attrs,
        origin=ORIGIN_TIMER,
        timer={
            "kind": ABSENCE_DUE,
            "ruleset_id": ruleset.id,
            "rule_id": rule.id,
            "state": sid,
            "corr": corr,
            "a": first.event_id,
            "due": due_ms,
        },
    )
    return encode_timer_event(timer_event)


def absence_due_op(plan: UserPlan, event: Event, fire: dict[str, Any] | None) -> dict[str, Any]:
    """The op for an absence deadline falling due (`fire` None: just drop the pending A)."""
    meta = event.timer or {}
    key = pattern_key(event.user_id, meta["state"], "pending", meta["corr"])
    return {"k": "due", "kp": plan.key_index(key), "a": meta["a"], "f": fire}


def action_due_op(event: Event, cancel: bool) -> dict[str, Any]:
    """The op releasing (or cancelling) a delayed action."""
    return {"k": "act", "id": (event.timer or {})["action_id"], "cancel": cancel}
