"""Turning a rule that may complete into the firing spec the step script admits (pure, no I/O).

Records are rendered before the step script runs because templates and ids are Python's business;
the script only decides (re-entry) and writes. What it does not admit is simply dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cep.events import ORIGIN_TIMER, Event, encode_timer_event
from rules.model import Rule, Ruleset
from rules.templates import render_value

STATUS_PENDING = "pending"
STATUS_SCHEDULED = "scheduled"
STATUS_DELIVERED = "delivered"
ACTION_DUE = "action"  # timer kind: a delayed action falls due


def rule_key(ruleset_id: str, rule_id: str) -> str:
    """Re-entry is tracked per ruleset and rule, not per version: a replaced ruleset keeps its history."""
    return f"{ruleset_id}/{rule_id}"


def action_id(ruleset: Ruleset, rule_id: str, user_id: str, trigger_id: str, index: int) -> str:
    """The action's idempotency key: (ruleset version, rule, user, trigger id) plus its place in `then`."""
    material = "\x1f".join((ruleset.id, str(ruleset.version), rule_id, user_id, trigger_id, str(index)))
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def template_context(ruleset: Ruleset, rule: Rule, event: Event, profile_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What `{{...}}` templates in action params can read."""
    return {
        "event": {**event.attrs, "type": event.type, "ts": event.ts, "event_id": event.event_id},
        "profile": dict(profile_attrs),
        "user_id": event.user_id,
        "rule_id": rule.id,
        "ruleset_id": ruleset.id,
    }


def firing_spec(
    ruleset: Ruleset, rule: Rule, event: Event, profile_attrs: Mapping[str, Any], now_ms: int
) -> dict[str, Any]:
    """The step script's `f` for `rule` completing on `event` (the trigger), every record pre-rendered."""
    context = template_context(ruleset, rule, event, profile_attrs)
    actions = []
    for index, action in enumerate(rule.actions):
        identifier = action_id(ruleset, rule.id, event.user_id, event.event_id, index)
        params = render_value(action.params, context)
        due = now_ms + action.delay_ms
        if action.type == "tag":
            status = STATUS_DELIVERED
        elif action.delay_ms > 0:
            status = STATUS_SCHEDULED
        else:
            status = STATUS_PENDING
        record = {
            "action_id": identifier,
            "idempotency_key": identifier,
            "ruleset_id": ruleset.id,
            "ruleset_version": ruleset.version,
            "rule_id": rule.id,
            "user_id": event.user_id,
            "type": action.type,
            "params": params,
            "created_at": now_ms,
            "due_at": due,
            "trigger_id": event.event_id,
            "event_ts": event.ts,
            "received_ms": event.received_ms,
        }
        spec: dict[str, Any] = {
            "id": identifier,
            "rec": json.dumps(record, separators=(",", ":"), ensure_ascii=False),
            "st": status,
            "add": list(params.get("add") or ()) if action.type == "tag" else [],
            "remove": list(params.get("remove") or ()) if action.type == "tag" else [],
        }
        if status == STATUS_SCHEDULED:
            spec["timer"] = [str(due), action_due_member(ruleset.id, event, identifier, due)]
        actions.append(spec)
    return {
        "rk": rule_key(ruleset.id, rule.id),
        "policy": rule.reentry.policy,
        "period": rule.reentry.period_ms,
        "acts": actions,
    }


def action_due_member(ruleset_id: str, cause: Event, identifier: str, due_ms: int) -> str:
    """The timer-set member that releases a delayed action when due."""
    timer_event = Event(
        event_id=f"act:{identifier}",
        user_id=cause.user_id,
        type="action_due",
        ts=cause.ts,
        origin=ORIGIN_TIMER,
        timer={"kind": ACTION_DUE, "action_id": identifier, "ruleset_id": ruleset_id, "due": due_ms},
    )
    return encode_timer_event(timer_event)
