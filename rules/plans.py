"""Plans: an audience, a schedule and what to do — validated, and compiled into a journey the engine runs.

`PUT /v1/plans/{id}` takes
`{"audience": "seg:<id>" | "aud:<id>" | <expression>, "schedule": ..., "then": [actions] | {"journey": id}}`
(or `"branches": [{"audience", "then"}, ...]`, a user in several branches getting only the first), with
`rate` (users per second), `limit` (`{"per_user": 2, "per": "30d"}`), `fatigue`, `attrs` (fixed
attributes of every plan event, which templates read as `{{event.x}}`), `late_after` and `goal` (as a
journey's: what converts a user who got the plan, measured in `GET /v1/reports/plans/{id}`).

Schedules: `{"at": "2026-12-12T10:00:00+08:00"}` once; `{"cron": "0 10 * * 1", "tz": "Asia/Shanghai"}`
recurring; either with `"local": true` and a date-time without offset runs at that wall-clock time in
each user's zone (profile attribute `tz_attr`, default `tz`; `tz` for users without a valid one).

How a plan runs (`cep.plan_runs`, `cep.plan_driver`): each occurrence snapshots its audience per
partition and sends one `plan` event per member into the member's partition stream, at `rate`. The
events enter the plan's *journey* — built here by `plan_journey`, id `plan:<id>` — whose re-entry
policy is the participation limit, whose optional first node waits for the user's local time, and
whose `do` nodes are the branches' actions: ids, fatigue, delivery, statistics and trace all come from
the journey runtime. A branch whose `then` is `{"journey": id}` enters that journey instead (its own
re-entry policy then limits participation).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from beacon.errors import ValidationError
from rules import journey_model as jm
from rules import model
from rules.audiences import Node, parse_expression
from rules.journey_schema import _is_zone, _JourneyParser
from rules.schema import MAX_ACTIONS, Parse, RulesetInvalid, _quote

PLAN_EVENT = "plan"  # the event a plan occurrence sends each member (origin `plan`)
PLAN_PREFIX = "plan:"  # a plan's journey id; journey ids cannot contain ":", so none collides
MAX_BRANCHES = 10
MAX_RATE = 1_000_000  # users per second, over all partitions
DEFAULT_RATE = 1_000
DEFAULT_LATE_AFTER_MS = 3_600_000
MAX_ATTRS = 32
# Zones span UTC-12 to UTC+14: a local-time occurrence starts sending when its wall-clock time is near in
# the earliest zone (with a margin for the sending itself), and is over once the latest zone passed it.
EARLIEST_ZONE_MS = 14 * 3_600_000
LATEST_ZONE_MS = 12 * 3_600_000
LOCAL_LEAD_MS = 3_600_000
LOCAL_FORMAT = "%Y-%m-%dT%H:%M"


def plan_journey_id(plan_id: str) -> str:
    """The id of the journey a plan runs as (its statistics and delayed actions go under it)."""
    return PLAN_PREFIX + plan_id


@dataclass(frozen=True, slots=True)
class Schedule:
    """When occurrences happen: once `at_ms` (or `local_at` in users' zones), or by `cron` in `tz`."""

    cron: str = ""
    at_ms: int = 0
    local_at: str = ""  # "2026-12-12T10:00": a local once-plan's wall-clock time
    local: bool = False
    tz: str = "UTC"
    tz_attr: str = "tz"


@dataclass(frozen=True, slots=True)
class PlanBranch:
    """Who (an audience expression) and what: actions, or entering a journey."""

    audience: Node
    audience_raw: Any
    actions: tuple[model.Action, ...] = ()
    journey: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated plan document. `version` is 0 until storage assigns one."""

    id: str
    branches: tuple[PlanBranch, ...]
    schedule: Schedule
    rate: int = DEFAULT_RATE
    limit: jm.JourneyReentry | None = None
    fatigue: model.Fatigue | None = None
    attrs: dict[str, Any] | None = None
    late_after_ms: int = DEFAULT_LATE_AFTER_MS
    description: str = ""
    version: int = 0
    stored_ms: int = 0  # when this version was stored: a recurring plan's earlier occurrences do not run
    goal: model.Goal | None = None  # what a user's conversion is, within `within` of their plan event


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One occurrence: its id (in keys, event ids and counters), when sending may start, when it is too
    late to start, and for a local-time plan the wall-clock time users get it at."""

    id: str
    start_ms: int
    deadline_ms: int
    local: str = ""


def parse_plan(doc: object, *, plan_id: str | None = None) -> Plan:
    """The validated plan in `doc`; raises RulesetInvalid listing every problem (paths included)."""
    parser = _PlanParser()
    plan = parser.plan(doc, plan_id)
    if parser.errors or plan is None:
        raise RulesetInvalid(parser.errors or [ValidationError("invalid plan")])
    return plan


class _PlanParser(_JourneyParser):
    """The journey parser's building blocks (actions, durations, zones, fatigue) plus plans."""

    def __init__(self) -> None:
        super().__init__(2_000)
        self.plan_id = ""

    def plan(self, doc: object, plan_id: str | None) -> Plan | None:
        if plan_id is not None:
            self.identifier(plan_id, "id")
        named = doc.get("id") if isinstance(doc, dict) else None
        self.plan_id = plan_id or (named if isinstance(named, str) else "")
        spec: dict[str, Parse] = {
            "id": self.identifier,
            "description": self.string,
            "audience": self.audience,
            "then": self.target,
            "branches": lambda item, where: self.listed(item, where, self.branch, "branches", MAX_BRANCHES),
            "schedule": self.schedule,
            "rate": self.bounded_int(1, MAX_RATE),
            "limit": self.limit,
            "fatigue": self.fatigue,
            "attrs": self.plan_attrs,
            "late_after": self.positive_duration,
            "goal": self.goal,
        }
        parsed = self.fields(doc, "", spec, ("schedule",) if plan_id is not None else ("id", "schedule"))
        if parsed is None or not isinstance(doc, dict):
            return None
        doc_id = parsed.get("id")
        if plan_id is not None and doc_id is not None and doc_id != plan_id:
            self.reject("id", f"{_quote(doc_id)} does not match the id in the URL {_quote(plan_id)}")
        branches: tuple[PlanBranch, ...] = ()
        if "branches" in doc:
            for key in ("audience", "then"):
                if key in doc:
                    self.reject(key, 'not allowed with "branches" (each branch has its own)')
            branches = parsed.get("branches") or ()
        else:
            for key in ("audience", "then"):
                if key not in doc:
                    self.reject(key, 'is required (or "branches")')
            audience, target = parsed.get("audience"), parsed.get("then")
            if audience is not None and target is not None:
                branches = (PlanBranch(audience, doc["audience"], *target),)
        schedule = parsed.get("schedule")
        limit = parsed.get("limit")
        if limit is not None and any(branch.journey is not None for branch in branches):
            self.reject("limit", "not allowed when a branch enters a journey: the journey's `reentry` limits that")
        if schedule is not None and schedule.local and any(branch.journey is not None for branch in branches):
            self.reject(
                "schedule.local", "a plan at each user's local time sends actions; a journey can wait for a time itself"
            )
        if self.errors or schedule is None or not branches:
            return None
        late_after = parsed.get("late_after")
        rate = parsed.get("rate")
        return Plan(
            id=doc_id or plan_id or "",
            branches=branches,
            schedule=schedule,
            rate=rate if rate is not None else DEFAULT_RATE,
            limit=limit,
            fatigue=parsed.get("fatigue"),
            attrs=parsed.get("attrs"),
            late_after_ms=late_after if late_after is not None else DEFAULT_LATE_AFTER_MS,
            description=parsed.get("description") or "",
            goal=parsed.get("goal"),
        )

    def audience(self, value: Any, path: str) -> Node | None:
        try:
            return parse_expression(value, self.plan_id, path)
        except ValidationError as exc:
            return self.reject(exc.path or path, exc.message)

    def target(self, value: Any, path: str) -> tuple[tuple[model.Action, ...], str | None] | None:
        if isinstance(value, dict):
            parsed = self.fields(value, path, {"journey": self.identifier}, ("journey",))
            return ((), parsed["journey"]) if parsed is not None else None
        actions = self.listed(value, path, self.action, "actions", MAX_ACTIONS)
        return (actions, None) if actions is not None else None

    def branch(self, value: Any, path: str) -> PlanBranch | None:
        parsed = self.fields(value, path, {"audience": self.audience, "then": self.target}, ("audience", "then"))
        if parsed is None or not isinstance(value, dict):
            return None
        return PlanBranch(parsed["audience"], value["audience"], *parsed["then"])

    def limit(self, value: Any, path: str) -> jm.JourneyReentry | None:
        spec: dict[str, Parse] = {"per_user": self.bounded_int(1, 10_000), "per": self.positive_duration}
        parsed = self.fields(value, path, spec, ("per_user", "per"))
        return jm.JourneyReentry("max_per", parsed["per"], parsed["per_user"]) if parsed is not None else None

    def plan_attrs(self, value: Any, path: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            return self.reject(path, "must be an object")
        if len(value) > MAX_ATTRS:
            return self.reject(path, f"at most {MAX_ATTRS} attributes")
        for key, item in value.items():
            if key in ("plan", "occurrence", "branch", "local"):
                self.reject(f"{path}.{key}", "is set by the plan itself")
            elif (
                isinstance(item, bool)
                or not isinstance(item, str | int | float)
                or (isinstance(item, str) and len(item) > 1024)
            ):
                self.reject(f"{path}.{key}", "must be a string (up to 1024 characters) or a number")
        return dict(value)

    def schedule(self, value: Any, path: str) -> Schedule | None:
        spec: dict[str, Parse] = {
            "at": self.string,
            "cron": self.string,
            "tz": self.time_zone,
            "local": self.boolean,
            "tz_attr": self.name,
        }
        parsed = self.fields(value, path, spec)
        if parsed is None or not isinstance(value, dict):
            return None
        if ("at" in value) == ("cron" in value):
            return self.reject(path, 'takes exactly one of "at" (once) or "cron" (recurring)')
        local = bool(parsed.get("local"))
        tz = parsed.get("tz") or "UTC"
        tz_attr = parsed.get("tz_attr") or "tz"
        if "tz_attr" in value and not local:
            self.reject(f"{path}.tz_attr", 'only with "local": true')
        if "cron" in value:
            expression = parsed.get("cron")
            if expression is None:
                return None
            try:
                CronSim(expression, datetime.now(UTC))
            except (CronSimError, ValueError) as exc:
                return self.reject(f"{path}.cron", f"{_quote(expression)} is not a cron expression ({exc})")
            return Schedule(cron=expression, local=local, tz=tz, tz_attr=tz_attr)
        text = parsed.get("at")
        if text is None:
            return None
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return self.reject(f"{path}.at", f"{_quote(text)} is not an ISO date-time")
        if local:
            if moment.tzinfo is not None:
                return self.reject(f"{path}.at", 'with "local": true, a wall-clock time without an offset')
            return Schedule(local_at=moment.strftime(LOCAL_FORMAT), local=True, tz=tz, tz_attr=tz_attr)
        if moment.tzinfo is None:
            if "tz" not in value:
                return self.reject(f"{path}.at", 'needs a UTC offset, a "tz", or "local": true')
            moment = moment.replace(tzinfo=ZoneInfo(tz))
        return Schedule(at_ms=int(moment.timestamp() * 1000), tz=tz)


# -- occurrences -------------------------------------------------------------------------------------


def _cron_before(expression: str, moment: datetime) -> datetime | None:
    """The newest cron time at or before `moment` (aware), or None."""
    try:
        # Iterating backwards yields times strictly before the start: a microsecond later includes `moment`.
        return next(iter(CronSim(expression, moment + timedelta(microseconds=1), reverse=True)))
    except StopIteration:
        return None


def _cron_after(expression: str, moment: datetime) -> datetime | None:
    try:
        return next(iter(CronSim(expression, moment)))
    except StopIteration:
        return None


def _utc_id(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%dT%H%MZ")


def _local(local: datetime, late_after_ms: int) -> Occurrence:
    """A local-time occurrence at wall-clock `local` (naive, read as UTC for arithmetic)."""
    wall = int(local.replace(tzinfo=UTC).timestamp() * 1000)
    return Occurrence(
        "L" + local.strftime("%Y%m%dT%H%M"),
        wall - EARLIEST_ZONE_MS - LOCAL_LEAD_MS,
        wall + LATEST_ZONE_MS + late_after_ms,
        local.strftime(LOCAL_FORMAT),
    )


def latest_occurrence(plan: Plan, now_ms: int) -> Occurrence | None:
    """The newest occurrence whose sending may have started by `now_ms` (None before the first)."""
    return _occurrence(plan, now_ms, later=False)


def next_occurrence(plan: Plan, now_ms: int) -> Occurrence | None:
    """The first occurrence whose sending starts after `now_ms` (None for a once-plan already due)."""
    return _occurrence(plan, now_ms, later=True)


def _occurrence(plan: Plan, now_ms: int, *, later: bool) -> Occurrence | None:
    schedule = plan.schedule
    cron_time = _cron_after if later else _cron_before
    if schedule.local:
        if schedule.cron:
            horizon = datetime.fromtimestamp((now_ms + EARLIEST_ZONE_MS + LOCAL_LEAD_MS) / 1000, UTC)
            found = cron_time(schedule.cron, horizon)
            return _local(found.replace(tzinfo=None), plan.late_after_ms) if found is not None else None
        occurrence = _local(datetime.fromisoformat(schedule.local_at), plan.late_after_ms)
    elif schedule.cron:
        found = cron_time(schedule.cron, datetime.fromtimestamp(now_ms / 1000, ZoneInfo(schedule.tz)))
        if found is None:
            return None
        start = int(found.timestamp() * 1000)
        return Occurrence(_utc_id(start), start, start + plan.late_after_ms)
    else:
        start = schedule.at_ms
        occurrence = Occurrence(_utc_id(start), start, start + plan.late_after_ms)
    return occurrence if (occurrence.start_ms > now_ms) == later else None


# -- the journey a plan runs as ----------------------------------------------------------------------


def plan_journey(plan: Plan) -> jm.Journey | None:
    """The journey that acts on a plan's events (None when every branch enters a journey instead)."""
    acting = [index for index, branch in enumerate(plan.branches) if branch.journey is None]
    if not acting:
        return None
    nodes: dict[str, jm.Node] = {}
    sends = {index: f"send-{index}" for index in acting}
    route = sends[acting[0]] if len(acting) == 1 else "route"
    start = route
    if plan.schedule.local:
        start = "local-time"
        nodes[start] = jm.Wait(until_entry="local", tz_profile=plan.schedule.tz_attr, tz=plan.schedule.tz, next=route)
    if len(acting) > 1:
        nodes[route] = jm.Branch(
            tuple(jm.BranchArm(model.Compare("field", "branch", "==", index), sends[index]) for index in acting)
        )
    for index in acting:
        nodes[sends[index]] = jm.Do(plan.branches[index].actions)
    entry = model.Matcher(
        PLAN_EVENT,
        model.AllOf(
            (
                model.Compare("field", "plan", "==", plan.id),
                model.AnyOf(tuple(model.Compare("field", "branch", "==", index) for index in acting)),
            )
        ),
    )
    return jm.Journey(
        id=plan_journey_id(plan.id),
        start=start,
        nodes=nodes,
        entry=entry,
        reentry=plan.limit or jm.JourneyReentry("always"),
        tz=plan.schedule.tz,
        fatigue=plan.fatigue,
        description=plan.description,
        version=plan.version,
        goal=plan.goal,
    )


def journey_targets(plans: list[Plan]) -> dict[str, list[tuple[str, int]]]:
    """Per journey id, the (plan id, branch index) pairs whose events enter it."""
    targets: dict[str, list[tuple[str, int]]] = {}
    for plan in plans:
        for index, branch in enumerate(plan.branches):
            if branch.journey is not None:
                targets.setdefault(branch.journey, []).append((plan.id, index))
    return targets


def is_zone(value: object) -> bool:
    """A valid IANA zone name (what a profile's `tz_attr` must hold to be used)."""
    return _is_zone(value)
