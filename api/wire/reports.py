"""Wire shapes of reports (funnels of rulesets, journeys and plans) and of backtests."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from api.wire.common import Body, Query, Reply

Day = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$", description="a UTC day, YYYY-MM-DD")]


class ReportQuery(Query, forbid_unknown_fields=True, kw_only=True):
    """`?from=&to=` (UTC days, inclusive; default the 30 days to today), `by=day`, `format=csv`, and
    `source=archive` to recompute the counters by replaying the event archive."""

    from_: Day | UnsetType = msgspec.field(default=UNSET, name="from")
    to: Day | UnsetType = UNSET
    by: Literal["day"] | UnsetType = UNSET
    format: Literal["json", "csv"] | UnsetType = UNSET
    source: Literal["live", "archive"] | UnsetType = UNSET


class Failure(Reply, kw_only=True):
    """Actions that failed for one reason, by unit, with sample dead action ids."""

    status: str
    reason: str
    count: int
    units: dict[str, int]
    sample_action_ids: list[str]


class RulesetReport(Reply, kw_only=True):
    """A ruleset's funnel, each rule's, failures, and (by=day) each day's."""

    ruleset_id: str
    from_: str = msgspec.field(name="from")
    to: str
    funnel: dict[str, Any]
    rules: dict[str, dict[str, Any]]
    failures: list[Failure]
    days: list[dict[str, Any]] | UnsetType = UNSET


class JourneyReport(Reply, kw_only=True):
    """A journey's funnel, each node's, each split arm's with lift, failures, and (by=day) each day's."""

    journey_id: str
    from_: str = msgspec.field(name="from")
    to: str
    funnel: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    arms: dict[str, dict[str, Any]]
    failures: list[Failure]
    days: list[dict[str, Any]] | UnsetType = UNSET


class PlanReportRun(Reply, kw_only=True):
    """One run of a plan in its report."""

    occurrence: str
    status: str
    targeted: int
    sent: int
    entered: int


class PlanReport(Reply, kw_only=True):
    """A plan's funnel (it runs as the journey `plan:<id>`) with its runs."""

    plan_id: str
    from_: str = msgspec.field(name="from")
    to: str
    funnel: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    arms: dict[str, dict[str, Any]]
    failures: list[Failure]
    runs: list[PlanReportRun]
    days: list[dict[str, Any]] | UnsetType = UNSET


class BacktestBody(Body, kw_only=True):
    """Rulesets and journeys (stored ids or unsaved documents) over recorded events (each with `ts`)."""

    events: Annotated[list[Any], msgspec.Meta(min_length=1, max_length=100_000, description="each an Event")]
    rulesets: Annotated[list[str | dict[str, Any]], msgspec.Meta(max_length=64)] | UnsetType = UNSET
    journeys: Annotated[list[str | dict[str, Any]], msgspec.Meta(max_length=64)] | UnsetType = UNSET
    until: int | UnsetType | None = UNSET


class BacktestQuery(Query, kw_only=True):
    """For an application/x-ndjson body: the stored rulesets and journeys to run (repeatable), and `until`."""

    ruleset: list[str] | UnsetType = UNSET
    journey: list[str] | UnsetType = UNSET
    until: int | UnsetType = UNSET


class RulesetRef(Reply, kw_only=True):
    """A ruleset run, and its version (0: unsaved)."""

    id: str
    version: int


class BacktestTotals(Reply, kw_only=True):
    """The run's totals."""

    events: int
    users: int
    firings: int
    late: int
    duplicates: int
    chained_events: int
    timers_fired: int
    pending_timers: int
    first_event_ts: int | None
    last_event_ts: int | None
    clock_end_ms: int | None
    elapsed_s: float
    events_per_s: float | None


class Backtest(Reply, kw_only=True):
    """Firings per rule, per journey and per day, totals, and the first firings in full."""

    rulesets: list[RulesetRef]
    until: int | None
    rules: list[dict[str, Any]]
    journeys: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    totals: BacktestTotals
    sample: list[dict[str, Any]]
    sample_size: int
