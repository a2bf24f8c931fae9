"""The actions of an admitted firing: ids, rendered params, records (pure, no I/O).

Rendered only once the firing is admitted (its `if` held and re-entry let it through).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cep.events import ORIGIN_ACTION, ORIGIN_TIMER, Event
from cep.links import ActionLinks, LinkSigner
from rules.model import Action, Rule, Ruleset
from rules.templates import LINK_MAKER

TIMER_SEPARATOR = "\x1f"  # between the parts of a timer-set member (never inside ids: the edge refuses it)
ACTION_TIMER = "d"
STATUS_PENDING = "pending"
STATUS_SCHEDULED = "scheduled"
STATUS_DELIVERED = "delivered"


def _action_id(material: tuple[str, ...], index: int) -> str:
    """The idempotency key of the action at `index` of a firing identified by `material`."""
    return hashlib.sha256("\x1f".join((*material, str(index))).encode()).hexdigest()[:32]


def template_context(ruleset: Ruleset, rule: Rule, event: Event, profile_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What `{{...}}` templates in action params can read."""
    return {
        "event": {**event.attrs, "type": event.type, "ts": event.ts, "event_id": event.event_id},
        "profile": dict(profile_attrs),
        "user_id": event.user_id,
        "rule_id": rule.id,
        "ruleset_id": ruleset.id,
    }


@dataclass(slots=True)
class CreatedAction:
    """An action created by an admitted firing: its record, status and release time."""

    action_id: str
    record: dict[str, Any]
    status: str
    timer_due: int | None  # set when the action waits in the timer set (status scheduled)
    _text: str | None = None
    links: tuple[tuple[str, str], ...] = ()  # (token, URL) of each tracked link it carries (cep.links)

    @property
    def text(self) -> str:
        """The record as stored in the ledger and the outbox; encoded on first use (a backtest never asks)."""
        if self._text is None:
            self._text = json.dumps(self.record, separators=(",", ":"), ensure_ascii=False)
        return self._text


def build_actions(
    ruleset: Ruleset,
    rule: Rule,
    renderers: tuple[Callable[[Mapping[str, Any]], Any], ...],
    trigger: Event,
    profile_attrs: Mapping[str, Any],
    now_ms: int,
    signer: LinkSigner | None = None,
) -> tuple[CreatedAction, ...]:
    """The rule's actions rendered for an admitted firing on `trigger`."""
    fields: dict[str, Any] = {"ruleset_id": ruleset.id, "ruleset_version": ruleset.version, "rule_id": rule.id}
    if ruleset.fatigue is not None:
        fields["fatigue"] = ruleset.fatigue.record(f"ruleset:{ruleset.id}")
    source = ActionSource(
        fields,
        (ruleset.id, str(ruleset.version), rule.id, trigger.user_id, trigger.event_id),
    )
    context = template_context(ruleset, rule, trigger, profile_attrs)
    return render_actions(source, rule.actions, renderers, context, trigger, now_ms, signer)


@dataclass(frozen=True, slots=True)
class ActionSource:
    """Who creates actions: the fields every record of theirs carries, and the idempotency key's material
    (everything that identifies the firing; the action's place in its list is added per action)."""

    fields: dict[str, Any]
    material: tuple[str, ...]


def render_actions(
    source: ActionSource,
    actions: tuple[Action, ...],
    renderers: tuple[Callable[[Mapping[str, Any]], Any], ...],
    context: Mapping[str, Any],
    trigger: Event,
    now_ms: int,
    signer: LinkSigner | None = None,
) -> tuple[CreatedAction, ...]:
    """Actions rendered for a firing (a rule's, or a journey node's) on `trigger`.

    A delay runs in event time, like absences: due = trigger ts + delay, and a due time already past
    releases the action at once, so live processing and a backtest agree.
    """
    created = []
    for index, (action, render) in enumerate(zip(actions, renderers, strict=True)):
        identifier = _action_id(source.material, index)
        links: tuple[tuple[str, str], ...] = ()
        if action.tracked:
            minting = ActionLinks(signer, trigger.user_id, identifier)
            params = render({**context, LINK_MAKER: minting})
            links = tuple(minting.minted)
        else:
            params = render(context)
        due = trigger.ts + action.delay_ms
        timer_due: int | None = None
        if action.type == "tag":
            status = STATUS_DELIVERED
        elif action.delay_ms > 0 and due > now_ms:
            status, timer_due = STATUS_SCHEDULED, due
        else:
            status = STATUS_PENDING
        record = {
            "action_id": identifier,
            "idempotency_key": identifier,
            **source.fields,
            "user_id": trigger.user_id,
            "type": action.type,
            "params": params,
            "created_at": now_ms,
            "due_at": max(due, now_ms) if action.delay_ms > 0 else now_ms,
            "trigger_id": trigger.event_id,
            "event_ts": trigger.ts,
            "received_ms": trigger.received_ms,
            # When it fell due, which the connectors' staleness bound counts from: the trigger's event time, or
            # for a timer's firing (an absence's deadline, a journey's wait or timeout) the timer's own due time,
            # which includes the rule's lateness.
            "event_due_at": (trigger.received_ms if trigger.origin == ORIGIN_TIMER else trigger.ts) + action.delay_ms,
        }
        if action.max_staleness_ms is not None:
            record["max_staleness_ms"] = action.max_staleness_ms
        if links:
            record["links"] = [url for _, url in links]
        created.append(CreatedAction(identifier, record, status, timer_due, links=links))
    return tuple(created)


def action_timer(user_id: str, action_id: str, owner: str) -> str:
    """The timer-set member releasing a delayed action; `owner` is its ruleset id or `journey:<id>`."""
    return TIMER_SEPARATOR.join((ACTION_TIMER, user_id, action_id, owner))


def schedule_and_tag(
    actions: tuple[CreatedAction, ...],
    cause: Event,
    owner: str,
    tags: set[str],
    timers_added: list[tuple[int, str]],
    *,
    tag_event_per_action: bool,
) -> list[Event]:
    """What created actions do at once: delayed ones wait in the timer set, tag actions change `tags`.

    Returns the `tag_added` / `tag_removed` events (only for tags that changed), with deterministic ids
    so a batch processed again after a crash emits the same events and dedupe absorbs them: from the
    cause's event id (a rule fires once per trigger), or from the action's id when one trigger may run
    several tag actions on the same tag (a journey walking several `do` nodes).
    """
    caused: list[Event] = []
    for action in actions:
        if action.timer_due is not None:
            timers_added.append((action.timer_due, action_timer(cause.user_id, action.action_id, owner)))
        if action.record["type"] != "tag":
            continue
        params = action.record["params"]
        source = action.action_id if tag_event_per_action else cause.event_id
        for tag in params.get("add") or ():
            if tag not in tags:
                tags.add(tag)
                caused.append(_tag_event(cause, source, "tag_added", tag))
        for tag in params.get("remove") or ():
            if tag in tags:
                tags.discard(tag)
                caused.append(_tag_event(cause, source, "tag_removed", tag))
    return caused


def _tag_event(cause: Event, source: str, event_type: str, tag: str) -> Event:
    return Event(
        event_id=f"{event_type}:{tag}:{source}",
        user_id=cause.user_id,
        type=event_type,
        ts=cause.ts,
        attrs={"tag": tag, "cause_event_id": cause.event_id},
        received_ms=cause.received_ms,
        origin=ORIGIN_ACTION,
    )
