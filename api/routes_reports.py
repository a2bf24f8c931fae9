"""Report endpoints: `GET /v1/reports/rulesets/{id}`, `/journeys/{id}`, `/plans/{id}`.

`?from=YYYY-MM-DD&to=YYYY-MM-DD` (UTC days, inclusive; default the 30 days to today), `by=day` for a
per-day funnel, `format=csv` for the per-unit (and per-day) rows as CSV. Every figure comes from the
measurement counters the partition owners commit with each batch (`cep.attribution`), so a report is
exact and cheap; the definitions are in `cep.reports` and docs/measurement.md. With `source=archive`
the counters are recomputed instead by replaying the event archive through the evaluator with the
rulesets, journeys and segments active now (`measure.recompute`), in the process whose data directory holds
the archive (elsewhere a 409, `api.archive_source`).
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, date, datetime
from typing import Any

from aiohttp import web

from api import keys
from api.archive_source import archive_dir
from api.middleware import requires
from api.routes_rulesets import ruleset_id_of
from beacon.errors import ValidationError
from cep import plan_runs, reports
from cep.attribution import DAY_MS, journey_scope, ruleset_scope
from cep.journey_stats import read_counts
from cep.rule_index import RuleIndex
from connectors.dead_letters import list_dead_letters
from measure.recompute import replayed_counts
from rules.plans import plan_journey_id
from rules.store import JOURNEYS, PLANS, RulesetStore

DEFAULT_DAYS = 30
MAX_DAYS = 800
SAMPLES = 5
DEAD_LETTERS_SCANNED = 500
NODE_STAGES = ("acted", "delivered", "skipped", "dead", "clicked")
JOURNEY_STAGES = ("entered", "converted", "revenue")


def _day(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        moment = date.fromisoformat(text)
    except ValueError:
        raise ValidationError("must be a date YYYY-MM-DD", path=name) from None
    return int(datetime(moment.year, moment.month, moment.day, tzinfo=UTC).timestamp() * 1000) // DAY_MS


def _range(request: web.Request) -> tuple[int, int, bool, bool]:
    """(first day, last day, by day?, CSV?) from the query, checked."""
    unknown = set(request.query) - {"from", "to", "by", "format", "source"}
    if unknown:
        raise ValidationError("unknown parameter (expected from, to, by, format, source)", path=sorted(unknown)[0])
    if request.query.get("source", "live") not in ("live", "archive"):
        raise ValidationError('must be "live" or "archive"', path="source")
    today = request.app[keys.CLOCK].now_ms() // DAY_MS
    last = _day(request, "to", today)
    first = _day(request, "from", last - DEFAULT_DAYS + 1)
    if first > last:
        raise ValidationError("must not be after `to`", path="from")
    if last - first >= MAX_DAYS:
        raise ValidationError(f"a report spans at most {MAX_DAYS} days", path="from")
    by = request.query.get("by")
    if by not in (None, "day"):
        raise ValidationError('must be "day"', path="by")
    form = request.query.get("format", "json")
    if form not in ("json", "csv"):
        raise ValidationError('must be "json" or "csv"', path="format")
    return first, last, by == "day", form == "csv"


async def _samples(request: web.Request, field: str, value: str) -> dict[str, list[str]]:
    """Dead actions of this ruleset or journey by reason, newest first (a few each, from the dead letters)."""
    rows = await list_dead_letters(keys.redis(request), request.app[keys.SETTINGS].partitions, DEAD_LETTERS_SCANNED)
    found: dict[str, list[str]] = {}
    for row in rows:
        if row["action"].get(field) == value:
            listed = found.setdefault(row["reason"], [])
            if len(listed) < SAMPLES:
                listed.append(row["action_id"])
    return found


def _failures(counted: reports.Counted, samples: dict[str, list[str]]) -> list[dict[str, Any]]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for unit, found in counted.failures.items():
        for (status, reason), count in found.items():
            row = merged.setdefault((status, reason), {"status": status, "reason": reason, "count": 0, "units": {}})
            row["count"] += count
            row["units"][unit or "(journey)"] = count
    for (status, reason), row in merged.items():
        row["sample_action_ids"] = samples.get(reason, []) if status == "dead" else []
    return sorted(merged.values(), key=lambda row: (-row["count"], row["status"], row["reason"]))


def _meta(first: int, last: int) -> dict[str, Any]:
    return {"from": reports.day_text(first), "to": reports.day_text(last)}


async def _counts(request: web.Request, scope: str) -> dict[str, int]:
    """A scope's counters: as committed, or (`source=archive`) replayed from the event archive."""
    redis, settings = keys.redis(request), request.app[keys.SETTINGS]
    if request.query.get("source", "live") == "live":
        return await read_counts(redis, settings.partitions, scope)
    data_dir = await archive_dir(request)
    registry = keys.registry(request)
    index = RuleIndex(
        await registry.refresh(), registry.journeys(), registry.segments(), registry.item_indexes(), registry.plans()
    )
    now = request.app[keys.CLOCK].now_ms()
    return await asyncio.to_thread(replayed_counts, data_dir, index, scope, now)


@requires("rules")
async def ruleset_report(request: web.Request) -> web.StreamResponse:
    """The funnel of a ruleset and of each of its rules."""
    ruleset_id = ruleset_id_of(request)
    first, last, by_day, as_csv = _range(request)
    stored = await keys.store(request).get(ruleset_id)
    counted = reports.Counted(await _counts(request, ruleset_scope(ruleset_id)), first, last)
    rule_ids = [rule["id"] for rule in stored.document.get("rules", []) if isinstance(rule, dict) and "id" in rule]
    rules = {rule_id: counted.units.get(rule_id, reports.combine(())) for rule_id in rule_ids}
    rules.update((unit, funnel) for unit, funnel in counted.units.items() if unit not in rules)  # since removed
    report: dict[str, Any] = {
        "ruleset_id": ruleset_id,
        **_meta(first, last),
        "funnel": reports.combine(rules.values()),
        "rules": rules,
        "failures": _failures(counted, await _samples(request, "ruleset_id", ruleset_id)),
    }
    if by_day:
        report["days"] = [
            {"day": reports.day_text(day), **reports.combine(units.values())}
            for day, units in sorted(counted.days.items())
        ]
    return _csv(report, "rules") if as_csv else web.json_response(report)


def _journey_funnel(units: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A journey's funnel: entries and conversions of the journey, stages of its nodes."""
    nodes = [funnel for unit, funnel in units.items() if unit and not unit.startswith("arm:")]
    whole = units.get("", reports.combine(()))
    total = reports.combine([whole], JOURNEY_STAGES)
    stages = reports.combine(nodes, NODE_STAGES)
    return {**total, **{stage: stages[stage] for stage in NODE_STAGES}}


def _arms(units: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per split node, per arm: entered, conversions by model, revenue, and lift against the holdout."""
    splits: dict[str, dict[str, Any]] = {}
    for unit, funnel in units.items():
        if unit.startswith("arm:"):
            _, split, label = unit.split(":", 2)
            splits.setdefault(split, {})[label] = {
                "entered": funnel["entered"],
                "converted": funnel["converted"],
                "revenue": funnel["revenue"],
            }
    for arms in splits.values():
        holdout = arms.get("holdout")
        for label, arm in arms.items():
            if holdout is not None and label != "holdout":
                arm["lift"] = reports.lift(
                    arm["converted"]["acted"], arm["entered"], holdout["converted"]["acted"], holdout["entered"]
                )
    return splits


async def _journey_report(request: web.Request, journey_id: str, first: int, last: int, by_day: bool) -> dict[str, Any]:
    counted = reports.Counted(await _counts(request, journey_scope(journey_id)), first, last)
    report: dict[str, Any] = {
        **_meta(first, last),
        "funnel": _journey_funnel(counted.units),
        "nodes": {unit: funnel for unit, funnel in counted.units.items() if unit and not unit.startswith("arm:")},
        "arms": _arms(counted.units),
        "failures": _failures(counted, await _samples(request, "journey_id", journey_id)),
    }
    if by_day:
        report["days"] = [
            {"day": reports.day_text(day), **_journey_funnel(units)} for day, units in sorted(counted.days.items())
        ]
    return report


@requires("rules")
async def journey_report(request: web.Request) -> web.StreamResponse:
    """The funnel of a journey, of each node, and of each split arm with its lift against the holdout."""
    journey_id = ruleset_id_of(request)
    first, last, by_day, as_csv = _range(request)
    await RulesetStore(keys.redis(request), JOURNEYS).get(journey_id)
    report = {"journey_id": journey_id, **await _journey_report(request, journey_id, first, last, by_day)}
    return _csv(report, "nodes") if as_csv else web.json_response(report)


@requires("rules")
async def plan_report(request: web.Request) -> web.StreamResponse:
    """A plan's funnel (it runs as the journey `plan:<id>`), with its runs."""
    plan_id = ruleset_id_of(request)
    first, last, by_day, as_csv = _range(request)
    await RulesetStore(keys.redis(request), PLANS).get(plan_id)
    report = {"plan_id": plan_id, **await _journey_report(request, plan_journey_id(plan_id), first, last, by_day)}
    redis, partitions = keys.redis(request), request.app[keys.SETTINGS].partitions
    # The runs as the plan's runs view has them, less its detail (a report lists what each run reached).
    report["runs"] = [
        {name: run[name] for name in ("occurrence", "status", "targeted", "sent", "entered")}
        for run in await plan_runs.runs_view(redis, partitions, plan_id)
    ]
    return _csv(report, "nodes") if as_csv else web.json_response(report)


def _csv(report: dict[str, Any], units_field: str) -> web.Response:
    """The report's funnel rows as CSV: one per unit (and per day), the totals first."""
    out = io.StringIO()
    writer = csv.writer(out)
    models = reports.MODELS
    header = ["row", "day", "triggered", "entered", "acted", "delivered", "skipped", "dead", "clicked"]
    header += [f"converted_{model}" for model in models] + [f"revenue_{model}" for model in models]
    writer.writerow(header)

    def row(name: str, day: str, funnel: dict[str, Any]) -> None:
        stages = [funnel.get(stage, 0) for stage in header[2:9]]
        writer.writerow(
            [name, day, *stages, *(funnel["converted"][m] for m in models), *(funnel["revenue"][m] for m in models)]
        )

    row("total", "", report["funnel"])
    for name, funnel in report[units_field].items():
        row(name, "", funnel)
    for day in report.get("days", []):
        row("total", day["day"], day)
    return web.Response(text=out.getvalue(), content_type="text/csv")


def add_routes(app: web.Application) -> None:
    """Register the report endpoints."""
    app.router.add_get("/v1/reports/rulesets/{id:[^/:]+}", ruleset_report)
    app.router.add_get("/v1/reports/journeys/{id:[^/:]+}", journey_report)
    app.router.add_get("/v1/reports/plans/{id:[^/:]+}", plan_report)
