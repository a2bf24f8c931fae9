"""Journey instances stepped by events and timers: pure functions of (user state, event or timer, now).

Called by the evaluator (`cep.evaluator`) for every event and journey timer, so live processing,
dry-runs and backtests run journeys the same way. An instance lives in the user's record
(`cep.user_record.Instance`); `do`, `branch` and `split` nodes run at once, a `wait` or `wait_for`
node sets one timer in the partition's timer set and returns. Everything an instance does in one
evaluation — its state, its actions, its timers, its counters — is committed in the partition owner's
one atomic commit, so a crash between two steps neither skips nor repeats one: the batch is evaluated
again from the committed state and produces the same ids (docs/journeys.md).

Times are event times: a step starts at the time of the event or timer that moved the instance
there; a wait is due at that time + its duration; a `wait_for` accepts events with
`step_ts <= ts <= step_ts + timeout` until its timeout timer fires at `step_ts + timeout + lateness`.
"""

from __future__ import annotations

import base64
import hashlib
from bisect import insort
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cep import attribution
from cep.correlation import correlation_key
from cep.events import ORIGIN_PLAN, ORIGIN_TIMER, Event
from cep.firing import TIMER_SEPARATOR, ActionSource, CreatedAction, render_actions, schedule_and_tag
from cep.history import history_of
from cep.rule_index import JourneyEntry, JourneyMatch, RuleIndex
from cep.user_record import FINISHED, NEVER, Instance, JourneyMarks, UserState, event_id_hash
from rules.journey_compiled import CompiledJourney
from rules.journey_model import Branch, Do, Exit, Split, Wait, WaitFor
from rules.plans import PLAN_EVENT, PLAN_PREFIX, plan_journey_id
from rules.predicates import NO_ATTRS, NO_TAGS

JOURNEY_TIMER = "j"
# Nodes one evaluation may run for one instance: validation refuses cycles without a wait, so a walk
# visits each node at most once between waits; this only guards against a bug.
MAX_WALK = 1_000
REENTRY_MARGIN_MS = 60_000  # `once_per` marks outlive their period by this much wall time


def journey_timer(user_id: str, journey_id: str, inst: Instance) -> str:
    """The timer-set member of an instance's wait (or wait_for timeout) at its current step.

    The instance is named by 24 bits of its entry event's hash, not by its key (a user's few instances
    of a journey are found by comparing names; the key would repeat a possibly long value in every
    member). A new instance of a key thus never reuses the name of a timer its predecessor set and
    cancelled, even in the same batch, where the commit applies additions before removals.
    """
    tag = base64.urlsafe_b64encode((inst.entry & 0xFFFFFF).to_bytes(3, "big")).decode()
    return TIMER_SEPARATOR.join((JOURNEY_TIMER, user_id, journey_id, tag, str(inst.seq)))


def counter_field(version: int, node: str, what: str) -> str:
    """A per-version, per-node statistics field (node "" for the journey as a whole)."""
    return f"{version}|{node}|{what}"


@dataclass(slots=True)
class JourneyFiring:
    """Actions a journey's `do` node created for one instance."""

    journey_id: str
    version: int
    node_id: str
    user_id: str
    trigger: Event
    actions: tuple[CreatedAction, ...]


class Journeys:
    """Steps journey instances for one RuleIndex; holds no user state itself.

    `effects` is the evaluator's `Effects`: the runner appends timers, firings, counters and trace
    entries to it (typed loosely here to keep the import direction one way).
    """

    def __init__(self, index: RuleIndex) -> None:
        self.index = index

    # -- entry points ------------------------------------------------------------------------------

    def on_event(self, state: UserState, event: Event, now_ms: int, effects: Any) -> list[Event]:
        """Everything the event does to the user's journeys; returns the events tag actions caused."""
        matches = self.index.journey_roles.get(event.type)
        if state.journeys and state.journeys_checked is not self.index:
            self._drop_retired(state, event.user_id, effects)
        if not matches or (event.type == PLAN_EVENT and event.origin != ORIGIN_PLAN):
            return []  # a producer's "plan" event starts no plan: only a plan's own run sends them
        by_journey: dict[str, list[JourneyMatch]] = {}
        attrs = event.attrs
        for match in matches:
            if match.role.where(attrs, NO_ATTRS, NO_TAGS):
                by_journey.setdefault(match.entry.id, []).append(match)
        caused: list[Event] = []
        for journey_id, found in by_journey.items():
            entry = self.index.journeys[journey_id]
            marks = state.journeys.get(entry.short_key)
            if marks is not None and marks.instances:
                for key in list(marks.instances):
                    inst = marks.instances.get(key)
                    if inst is not None:
                        caused.extend(
                            self._instance_event(state, entry, marks, key, inst, event, found, now_ms, effects)
                        )
            entering = [match for match in found if match.role.role == "entry"]
            if entering:
                caused.extend(self._enter(state, entry, event, now_ms, effects))
        return caused

    def on_timer(self, state: UserState, member: str, due_ms: int, now_ms: int, effects: Any) -> list[Event]:
        """An instance's wait ended or its wait_for timed out; a stale timer (the instance moved) does nothing."""
        _, user_id, journey_id, _tag, _step = member.split(TIMER_SEPARATOR)
        entry = self.index.journeys.get(journey_id)
        if entry is None:
            self._drop_retired(state, user_id, effects)
            return []
        marks = state.journeys.get(entry.short_key)
        found = (
            next(
                (
                    (key, inst)
                    for key, inst in marks.instances.items()
                    if inst.due and journey_timer(user_id, journey_id, inst) == member
                ),
                None,
            )
            if marks is not None
            else None
        )
        if marks is None or found is None:
            return []  # a timer its instance no longer waits on (moved on, ended, or a later instance)
        key, inst = found
        compiled = entry.versions.get(inst.version)
        if compiled is None:
            return self._retire(state, entry.id, marks, key, inst, user_id, effects, "version_gone")
        node_id = compiled.node_ids[inst.node]
        node = compiled.journey.nodes[node_id]
        inst.due = 0
        trigger = Event(f"due:{member}", user_id, "journey_timer", due_ms, {}, due_ms, ORIGIN_TIMER)
        _count(effects, entry.id, inst.version, node_id, "waiting", -1)
        if isinstance(node, WaitFor):
            at = inst.step_ts + node.timeout_ms
            _count(effects, entry.id, inst.version, node_id, "left:timeout", 1)
            _trace(effects, user_id, at, entry.id, inst.version, node_id, "timeout", key=key)
            return self._walk(state, entry, compiled, marks, key, inst, node.on_timeout, at, trigger, now_ms, effects)
        assert isinstance(node, Wait)
        _trace(effects, user_id, due_ms, entry.id, inst.version, node_id, "wait_over", key=key)
        return self._walk(state, entry, compiled, marks, key, inst, node.next, due_ms, trigger, now_ms, effects)

    # -- one event against one instance ------------------------------------------------------------

    def _instance_event(
        self,
        state: UserState,
        entry: JourneyEntry,
        marks: JourneyMarks,
        key: str,
        inst: Instance,
        event: Event,
        found: list[JourneyMatch],
        now_ms: int,
        effects: Any,
    ) -> list[Event]:
        compiled = entry.versions.get(inst.version)
        if compiled is None:
            return self._retire(state, entry.id, marks, key, inst, event.user_id, effects, "version_gone")
        mine = [match for match in found if match.compiled is compiled]
        if not mine or event.ts < inst.entry_ts:
            return []  # events older than the instance do not act on it
        journey = compiled.journey
        if inst.goal_by and event.ts <= inst.goal_by and any(m.role.role == "goal" for m in mine):
            inst.goal_by = 0
            _count(effects, entry.id, inst.version, "", "converted", 1)
            units = [""]
            for index in inst.visited:
                _count(effects, entry.id, inst.version, compiled.node_ids[index], "converted", 1)
                units.append(compiled.node_ids[index])
            for place in range(0, len(inst.arms), 2):
                split_id, arm_index = compiled.node_ids[inst.arms[place]], inst.arms[place + 1]
                label = _arm_label(compiled, split_id, arm_index)
                _count(effects, entry.id, inst.version, split_id, f"converted:{label}", 1)
                units.append(f"arm:{split_id}:{label}")
            flags = attribution.touch_flags(state, entry.short_key, inst.entry & 0xFFFFFFFF, event.ts)
            models = [model for model, _ in attribution.MODELS if flags & model]
            goal = journey.goal
            revenue = attribution.goal_value(event, goal.value if goal is not None else None)
            attribution.count_conversion(effects, attribution.journey_scope(entry.id), event.ts, units, models, revenue)
            _trace(effects, event.user_id, event.ts, entry.id, inst.version, "", "converted", event=event.event_id)
            if inst.node == FINISHED:
                del marks.instances[key]
                return []
        if inst.node == FINISHED:
            return []
        node_id = compiled.node_ids[inst.node]
        if any(
            m.role.role == "exit"
            and all(
                _same(entry_attr(inst, key, journey.key, name), event.attrs.get(name))
                for name in journey.exits[m.role.arm].correlate
            )
            for m in mine
        ):
            self._stop_waiting(effects, entry.id, event.user_id, key, inst, node_id)
            _count(effects, entry.id, inst.version, node_id, "exited", 1)
            _count(effects, entry.id, inst.version, "", "exited", 1)
            _trace(
                effects, event.user_id, event.ts, entry.id, inst.version, node_id, "exit_event", event=event.event_id
            )
            self._finish(marks, key, inst)
            return []
        node = journey.nodes[node_id]
        if not isinstance(node, WaitFor) or not inst.step_ts <= event.ts <= inst.step_ts + node.timeout_ms:
            return []
        for match in mine:
            role = match.role
            if role.role != "arm" or role.node != node_id:
                continue
            arm = node.arms[role.arm]
            if any(
                not _same(entry_attr(inst, key, journey.key, name), event.attrs.get(name)) for name in arm.correlate
            ):
                continue
            self._stop_waiting(effects, entry.id, event.user_id, key, inst, node_id)
            _count(effects, entry.id, inst.version, node_id, f"left:{arm.match.event}", 1)
            _trace(effects, event.user_id, event.ts, entry.id, inst.version, node_id, "event", event=event.event_id)
            return self._walk(state, entry, compiled, marks, key, inst, arm.next, event.ts, event, now_ms, effects)
        return []

    def _enter(self, state: UserState, entry: JourneyEntry, event: Event, now_ms: int, effects: Any) -> list[Event]:
        compiled = entry.active
        journey = compiled.journey
        user_id, version = event.user_id, journey.version
        key = correlation_key(journey.key, event.attrs)
        if key is None:
            return _blocked(effects, user_id, event, entry.id, version, "missing_key")
        marks = state.journeys.get(entry.short_key)
        if marks is None:
            marks = state.journeys[entry.short_key] = JourneyMarks()
        live = marks.instances.get(key)
        if live is not None and live.node != FINISHED:
            return _blocked(effects, user_id, event, entry.id, version, "already_in_journey")
        # Re-entry is counted per instance key: with `"key": ["sku"]`, each product has its own history.
        reentry = journey.reentry
        entries, last_ts, _ = marks.entered.get(key) or (0, 0, NEVER)
        if reentry.policy == "max_per" and event.ts >= last_ts + reentry.period_ms:
            entries, last_ts = 0, event.ts  # the window closed: this entry opens the next one
        if entries and (
            reentry.policy == "once"
            or (reentry.policy in ("max", "max_per") and entries >= reentry.max_entries)
            or (reentry.policy == "once_per" and event.ts < last_ts + reentry.period_ms)
        ):
            return _blocked(effects, user_id, event, entry.id, version, f"reentry_{reentry.policy}")
        # `always` needs no marks: the live instance alone keeps a second one out.
        if reentry.policy == "max_per":  # `last_ts` is when the window opened, not the last entry
            marks.entered[key] = [entries + 1, last_ts, now_ms + reentry.period_ms + REENTRY_MARGIN_MS]
        elif reentry.policy != "always":
            expires = now_ms + reentry.period_ms + REENTRY_MARGIN_MS if reentry.policy == "once_per" else NEVER
            marks.entered[key] = [entries + 1, max(last_ts, event.ts), expires]
        attrs = {name: event.attrs[name] for name in compiled.kept_fields if name in event.attrs}
        if len(journey.key) == 1 and key[0] in "si" and type(attrs.get(journey.key[0])) in (str, int):
            # The instance key already holds this value, readably ("s" + text, "i" + integer): not twice.
            del attrs[journey.key[0]]
        goal_by = event.ts + journey.goal.within_ms if journey.goal is not None else 0
        if "event_id" in compiled.kept_fields:
            attrs["event_id"] = event.event_id  # `{{event.event_id}}` in a template: kept only then
        entry_hash = event_id_hash(event.event_id)
        inst = marks.instances[key] = Instance(version, FINISHED, event.ts, 0, entry_hash, event.ts, attrs, [], goal_by)
        _count(effects, entry.id, version, "", "entered", 1)
        _count_run(effects, event, "entered")
        attribution.count(effects, attribution.journey_scope(entry.id), event.ts, "", "entered")
        if journey.goal is not None:
            attribution.touch(state, entry.short_key, entry_hash & 0xFFFFFFFF, event.ts, journey.goal.within_ms, now_ms)
        _trace(effects, user_id, event.ts, entry.id, version, "", "entered", event=event.event_id, key=key)
        return self._walk(state, entry, compiled, marks, key, inst, journey.start, event.ts, event, now_ms, effects)

    # -- walking the graph -------------------------------------------------------------------------

    def _walk(
        self,
        state: UserState,
        entry: JourneyEntry,
        compiled: CompiledJourney,
        marks: JourneyMarks,
        key: str,
        inst: Instance,
        node_id: str | None,
        at: int,
        trigger: Event,
        now_ms: int,
        effects: Any,
    ) -> list[Event]:
        """Run nodes from `node_id` at event time `at` until the instance waits or ends."""
        journey, user_id, version = compiled.journey, trigger.user_id, inst.version
        caused: list[Event] = []
        for _ in range(MAX_WALK):
            if node_id is None:
                self._end(effects, entry.id, compiled, marks, key, inst, user_id, at)
                return caused
            node = journey.nodes[node_id]
            index = compiled.node_index[node_id]
            inst.seq += 1
            inst.node = index
            if index not in inst.visited:
                insort(inst.visited, index)
            _count(effects, entry.id, version, node_id, "entered", 1)
            if isinstance(node, Do):
                caused.extend(
                    self._do(state, entry.id, compiled, node_id, node, key, inst, user_id, at, trigger, now_ms, effects)
                )
                node_id = node.next
            elif isinstance(node, Wait):
                due = wait_due(node, at, state.profile, entry_attrs(inst, key, journey.key))
                if due is not None and node.late_after_ms is not None and due + node.late_after_ms < at:
                    # A plan's local time long past (its sending ran late): too late to act on at all.
                    _trace(effects, user_id, at, entry.id, version, node_id, "too_late", due=due)
                    _count(effects, entry.id, version, node_id, "left:too_late", 1)
                    self._end(effects, entry.id, compiled, marks, key, inst, user_id, at)
                    return caused
                if due is None or due <= at:
                    reason = "profile_date_missing" if due is None else "date_passed"
                    _trace(effects, user_id, at, entry.id, version, node_id, "wait_skipped", reason=reason)
                    node_id = node.next
                    continue
                self._start_waiting(effects, entry.id, user_id, key, inst, node_id, at, due)
                return caused
            elif isinstance(node, WaitFor):
                self._start_waiting(
                    effects, entry.id, user_id, key, inst, node_id, at, at + node.timeout_ms + journey.lateness_ms
                )
                return caused
            elif isinstance(node, Branch):
                node_id, label = self._branch(state, compiled, node_id, node, inst, key, at)
                _count(effects, entry.id, version, compiled.node_ids[index], f"left:{label}", 1)
                _trace(effects, user_id, at, entry.id, version, compiled.node_ids[index], "branch", taken=label)
            elif isinstance(node, Split):
                arm_index = split_arm(node, user_id, entry.id, node_id)
                arm = node.arms[arm_index]
                label = _arm_label(compiled, node_id, arm_index)
                if index not in inst.arms[::2]:  # a loop passes a split again, always to the same arm
                    inst.arms.extend((index, arm_index))
                _count(effects, entry.id, version, node_id, f"left:{label}", 1)
                attribution.count(effects, attribution.journey_scope(entry.id), at, f"arm:{node_id}:{label}", "entered")
                _trace(effects, user_id, at, entry.id, version, node_id, "split", taken=label)
                if arm.holdout:
                    self._end(effects, entry.id, compiled, marks, key, inst, user_id, at)
                    return caused
                node_id = arm.next
            else:
                assert isinstance(node, Exit)
                self._end(effects, entry.id, compiled, marks, key, inst, user_id, at)
                return caused
        raise RuntimeError(f"journey {entry.id!r} ran {MAX_WALK} nodes without waiting")

    def _do(
        self,
        state: UserState,
        journey_id: str,
        compiled: CompiledJourney,
        node_id: str,
        node: Do,
        key: str,
        inst: Instance,
        user_id: str,
        at: int,
        trigger: Event,
        now_ms: int,
        effects: Any,
    ) -> list[Event]:
        version = inst.version
        attrs = entry_attrs(inst, key, compiled.journey.key)
        entry_id = str(attrs.get("event_id", inst.entry))
        cap = compiled.journey.fatigue
        fatigue = {"fatigue": cap.record(f"journey:{journey_id}")} if cap is not None else {}
        if journey_id.startswith(PLAN_PREFIX):  # a plan's journey: its actions are the plan's
            plan_id = journey_id.removeprefix(PLAN_PREFIX)
            origin = {"source": "plan", "plan_id": plan_id, "occurrence": attrs.get("occurrence")}
        else:
            origin = {"source": "journey"}
        source = ActionSource(
            {
                "ruleset_id": journey_id,
                "ruleset_version": version,
                "rule_id": node_id,
                "journey_id": journey_id,
                "node_id": node_id,
                # The instance (its entry event's hash): delivery outcomes and clicks find its touch by it.
                "entry": str(inst.entry),
                **origin,
                **fatigue,
            },
            ("journey", journey_id, str(version), node_id, user_id, str(inst.entry), key, str(inst.seq)),
        )
        entry_type = compiled.journey.entry.event if compiled.journey.entry is not None else ""
        context = {
            "event": {**attrs, "type": entry_type, "ts": inst.entry_ts, "event_id": entry_id},
            "profile": dict(state.profile),
            "user_id": user_id,
            "rule_id": node_id,
            "ruleset_id": journey_id,
        }
        # Actions are due relative to the step's time (a delayed action after a wait counts from its end).
        step = Event(trigger.event_id, user_id, trigger.type, at, attrs, trigger.received_ms, trigger.origin)
        actions = render_actions(
            source, node.actions, compiled.renderers[node_id], context, step, now_ms, self.index.links
        )
        effects.journey_firings.append(JourneyFiring(journey_id, version, node_id, user_id, step, actions))
        attribution.count_acted(effects, attribution.journey_scope(journey_id), at, node_id, actions)
        _trace(effects, user_id, at, journey_id, version, node_id, "actions", actions=[a.action_id for a in actions])
        owner = "journey:" + journey_id
        return schedule_and_tag(actions, step, owner, state.tags, effects.timers_added, tag_event_per_action=True)

    def _branch(
        self, state: UserState, compiled: CompiledJourney, node_id: str, node: Branch, inst: Instance, key: str, at: int
    ) -> tuple[str | None, str]:
        attrs = entry_attrs(inst, key, compiled.journey.key)

        history = history_of(state)
        for index, (arm, check) in enumerate(zip(node.arms, compiled.conditions[node_id], strict=True)):
            if check(attrs, state.profile, state.tags, history, at):
                return arm.next, f"arm{index}"
        return node.otherwise, "else"

    # -- instance bookkeeping ----------------------------------------------------------------------

    def _start_waiting(
        self, effects: Any, journey_id: str, user_id: str, key: str, inst: Instance, node_id: str, at: int, due: int
    ) -> None:
        inst.step_ts, inst.due = at, due
        effects.timers_added.append((due, journey_timer(user_id, journey_id, inst)))
        _count(effects, journey_id, inst.version, node_id, "waiting", 1)
        _trace(effects, user_id, at, journey_id, inst.version, node_id, "timer_set", due=due, key=key)

    def _stop_waiting(
        self, effects: Any, journey_id: str, user_id: str, key: str, inst: Instance, node_id: str
    ) -> None:
        if inst.due:
            effects.timers_removed.append(journey_timer(user_id, journey_id, inst))
            _trace(effects, user_id, inst.step_ts, journey_id, inst.version, node_id, "timer_cancelled")
            _count(effects, journey_id, inst.version, node_id, "waiting", -1)
            inst.due = 0

    def _end(
        self,
        effects: Any,
        journey_id: str,
        compiled: CompiledJourney,
        marks: JourneyMarks,
        key: str,
        inst: Instance,
        user_id: str,
        at: int,
    ) -> None:
        """The instance's path ended at its current node (an exit node, a holdout arm, a missing `next`)."""
        node_id = compiled.node_ids[inst.node]
        _count(effects, journey_id, inst.version, node_id, "exited", 1)
        _count(effects, journey_id, inst.version, "", "completed", 1)
        _trace(effects, user_id, at, journey_id, inst.version, node_id, "completed", key=key)
        self._finish(marks, key, inst)

    @staticmethod
    def _finish(marks: JourneyMarks, key: str, inst: Instance) -> None:
        """The instance's path ended: it stays only to watch its goal."""
        inst.node = FINISHED
        if not inst.goal_by:
            del marks.instances[key]

    def _retire(
        self,
        state: UserState,
        journey_id: str,
        marks: JourneyMarks,
        key: str,
        inst: Instance,
        user_id: str,
        effects: Any,
        reason: str,
    ) -> list[Event]:
        if inst.due:
            effects.timers_removed.append(journey_timer(user_id, journey_id, inst))
        _trace(effects, user_id, inst.step_ts, journey_id, inst.version, "", "cancelled", reason=reason, key=key)
        del marks.instances[key]
        return []

    def _drop_retired(self, state: UserState, user_id: str, effects: Any) -> None:
        """Instances of deleted journeys are cancelled when their user is next touched (timers included)."""
        state.journeys_checked = self.index  # until the journeys change, this user needs no second look
        gone = [short for short in state.journeys if short not in self.index.journey_by_short]
        for short in gone:
            # A waiting instance's timer stays in the set (its member names the journey by id, which the
            # record does not keep) and does nothing when it fires.
            marks = state.journeys.pop(short)
            for key, inst in marks.instances.items():
                _trace(
                    effects, user_id, inst.step_ts, "", inst.version, "", "cancelled", reason="journey_deleted", key=key
                )


def wait_due(node: Wait, at: int, profile: Mapping[str, Any], attrs: Mapping[str, Any]) -> int | None:
    """When a `wait` started at event time `at` ends; None when its profile date (or the entry's local
    date-time) is missing or unreadable."""
    if node.duration_ms is not None:
        return at + node.duration_ms
    zone = ZoneInfo(node.tz)
    if node.until_entry is not None:
        local = attrs.get(node.until_entry)
        if not isinstance(local, str) or len(local) <= 10:
            return None  # a date-time, never a bare date (which would mean midnight)
        return profile_time(local, _profile_zone(profile, node.tz_profile) or zone)
    if node.until is not None:
        hour, minute = node.until
        local = datetime.fromtimestamp(at / 1000, zone)
        candidate = datetime(local.year, local.month, local.day, hour, minute, tzinfo=zone)
        if candidate <= local:
            day = local.date() + timedelta(days=1)
            candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
        return int(candidate.timestamp() * 1000)
    assert node.until_profile is not None
    return profile_time(profile.get(node.until_profile), zone)


def _profile_zone(profile: Mapping[str, Any], name: str | None) -> ZoneInfo | None:
    """The user's own time zone from a profile attribute (an IANA name), if it has a valid one."""
    value = profile.get(name) if name is not None else None
    if not isinstance(value, str) or not 0 < len(value) <= 64 or value in ("localtime", "posixrules"):
        return None
    try:
        return ZoneInfo(value)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return None


def profile_time(value: Any, zone: ZoneInfo) -> int | None:
    """A profile date as ms: an integer (ms since the epoch), an ISO date (midnight in `zone`) or datetime."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return int(moment.timestamp() * 1000)


def split_arm(node: Split, user_id: str, journey_id: str, node_id: str) -> int:
    """The arm of a split a user takes: a hash of (user, journey, node, salt), stable across re-entry."""
    material = TIMER_SEPARATOR.join((user_id, journey_id, node_id, node.salt)).encode()
    point = int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big") / 2**64
    total = sum(arm.weight for arm in node.arms)
    running = 0.0
    for index, arm in enumerate(node.arms):
        running += arm.weight
        if point * total < running:
            return index
    return len(node.arms) - 1


def entry_attr(inst: Instance, key: str, key_fields: tuple[str, ...], name: str) -> Any:
    """One attribute of the instance's entry event (see `entry_attrs`)."""
    if name in inst.attrs:
        return inst.attrs[name]
    return _key_value(key) if key_fields == (name,) else None


def entry_attrs(inst: Instance, key: str, key_fields: tuple[str, ...]) -> dict[str, Any]:
    """The entry event's kept attributes, with the single key attribute restored from the instance key
    (stored once, in the key, when its value reads back exactly: a short string or an integer)."""
    if len(key_fields) != 1 or key_fields[0] in inst.attrs or key[:1] not in ("s", "i"):
        return inst.attrs
    return {**inst.attrs, key_fields[0]: _key_value(key)}


def _key_value(key: str) -> Any:
    return key[1:] if key[0] == "s" else int(key[1:]) if key[0] == "i" else None


def _same(left: Any, right: Any) -> bool:
    """Correlation equality: both present and equal as correlation values (3 and 3.0 meet)."""
    if left is None or right is None:
        return False
    return correlation_key(("x",), {"x": left}) == correlation_key(("x",), {"x": right})


def _arm_label(compiled: CompiledJourney, split_id: str, arm_index: int) -> str:
    """How statistics name a split's arm: `holdout`, else `arm<i>` (its place in the document)."""
    node = compiled.journey.nodes[split_id]
    assert isinstance(node, Split)
    return "holdout" if node.arms[arm_index].holdout else f"arm{arm_index}"


def _first(item: list[Any]) -> Any:
    return item[0]


def _count(effects: Any, journey_id: str, version: int, node: str, what: str, delta: int) -> None:
    counts: dict[tuple[str, int, str, str], int] = effects.journey_counts
    field = (journey_id, version, node, what)  # formatted as a stats field once per batch, not per count
    counts[field] = counts.get(field, 0) + delta


def _trace(
    effects: Any, user_id: str, ts: int, journey_id: str, version: int, node: str, what: str, **details: Any
) -> None:
    if effects.trace is not None:
        effects.trace.append(
            (
                user_id,
                {
                    "kind": "journey",
                    "ts": ts,
                    "journey_id": journey_id,
                    "version": version,
                    "node": node,
                    "what": what,
                    **details,
                },
            )
        )


def _count_run(effects: Any, event: Event, what: str) -> None:
    """A plan run's outcome per user, counted under the plan (its runs view reads them, `cep.plan_runs`)."""
    if event.type == PLAN_EVENT:
        attrs = event.attrs
        _count(effects, plan_journey_id(str(attrs.get("plan"))), 0, f"run:{attrs.get('occurrence')}", what, 1)


def _blocked(effects: Any, user_id: str, event: Event, journey_id: str, version: int, reason: str) -> list[Event]:
    _count(effects, journey_id, version, "", f"blocked:{reason}", 1)
    _count_run(effects, event, f"blocked:{reason}")
    _trace(effects, user_id, event.ts, journey_id, version, "", "not_entered", reason=reason, event=event.event_id)
    return []
