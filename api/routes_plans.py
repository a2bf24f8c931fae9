"""Plan endpoints: versioned PUT, GET, list, DELETE, validate, runs, pause / resume / cancel, estimate.

A plan (`rules.plans`) sends an audience a `plan` event per occurrence; the processes that own partitions
run it (`cep.plan_driver`). Pausing stops sending (and opening occurrences) until resumed; a run goes
on where it stopped. Cancelling ends the running occurrences (their unsent users are dropped) and opens
no further ones until the plan is resumed. Deleting a plan also cancels its runs.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api import keys, paging
from api.bodies import read_body
from api.middleware import requires
from api.routes_rulesets import restore_stored_secrets, ruleset_id_of, stored_document, version_of
from beacon.errors import ValidationError
from cep import plan_runs
from cep.audience_members import definitions, expression_size
from cep.journey_stats import delete_counts
from rules.audiences import Node, SetOp, refs_of
from rules.plans import Plan, latest_occurrence, next_occurrence, parse_plan, plan_journey_id
from rules.store import JOURNEYS, PLANS, SEGMENTS, RulesetStore, index_key


def _store(request: web.Request) -> RulesetStore:
    return RulesetStore(keys.redis(request), PLANS)


async def _check(request: web.Request, plan: Plan, now_ms: int) -> None:
    """What validation alone cannot know: the audiences and journeys named exist; a once-plan is not over."""
    redis = keys.redis(request)
    audiences = await definitions(redis)
    for index, branch in enumerate(plan.branches):
        for ref in refs_of(branch.audience):
            if ref.kind == "seg" and not await redis.hexists(index_key(SEGMENTS), ref.id):
                raise ValidationError(f"no segment {ref.id!r}", path=ref.path)
            if ref.kind == "aud" and ref.id not in audiences:
                raise ValidationError(f"no audience {ref.id!r}", path=ref.path)
        if branch.journey is not None and not await redis.hexists(index_key(JOURNEYS), branch.journey):
            where = f"branches[{index}].then.journey" if len(plan.branches) > 1 else "then.journey"
            raise ValidationError(f"no journey {branch.journey!r}", path=where)
    if not plan.schedule.cron:
        occurrence = latest_occurrence(plan, now_ms)
        if occurrence is not None and occurrence.deadline_ms < now_ms:
            raise ValidationError("is in the past (beyond `late_after`): it would never run", path="schedule.at")


@requires("rules")
async def put_plan(request: web.Request) -> web.Response:
    """Validate a plan and store it as its new active version; occurrences already running go on."""
    plan_id = ruleset_id_of(request)
    document = await read_body(request)
    plan = parse_plan(document, plan_id=plan_id)
    now = request.app[keys.CLOCK].now_ms()
    await _check(request, plan, now)
    if isinstance(document, dict) and "id" not in document:
        document = {"id": plan_id, **document}
    store = _store(request)
    document = await restore_stored_secrets(store, plan_id, document)
    version = await store.put(plan_id, document, now)
    await keys.registry(request).refresh()
    upcoming = next_occurrence(plan, now)
    return web.json_response(
        {"id": plan_id, "version": version, "next_occurrence": _occurrence_view(upcoming)}, status=200
    )


def _occurrence_view(occurrence: Any) -> dict[str, Any] | None:
    if occurrence is None:
        return None
    view = {"id": occurrence.id, "start_ms": occurrence.start_ms}
    if occurrence.local:
        view["local"] = occurrence.local
    return view


@requires("rules")
async def list_plans(request: web.Request) -> web.Response:
    """One page of the plans, by id, with their versions, states and next occurrences (`api.paging`)."""
    stored, page = await paging.stored_page(request, _store(request))
    states = await plan_runs.plan_states(keys.redis(request))
    now = request.app[keys.CLOCK].now_ms()
    items = []
    for item in stored:
        plan = parse_plan(item.document, plan_id=item.id)
        items.append(
            {
                "id": item.id,
                "version": item.version,
                "description": item.document.get("description", ""),
                "state": states.get(item.id, "active"),
                "next_occurrence": _occurrence_view(next_occurrence(plan, now)),
                "updated_ms": item.updated_ms,
            }
        )
    return paging.page_reply("plans", items, page)


@requires("rules")
async def get_plan(request: web.Request) -> web.Response:
    """The active version (or `?version=N`) of one plan, with its state and next occurrence."""
    plan_id = ruleset_id_of(request)
    states = await plan_runs.plan_states(keys.redis(request))
    store = _store(request)
    stored = await store.get(plan_id)
    upcoming = next_occurrence(parse_plan(stored.document, plan_id=plan_id), request.app[keys.CLOCK].now_ms())
    extra = {"state": states.get(plan_id, "active"), "next_occurrence": _occurrence_view(upcoming)}
    return await stored_document(store, plan_id, version_of(request), extra)


@requires("rules")
async def delete_plan(request: web.Request) -> web.Response:
    """Delete a plan: its running occurrences stop, its runs and statistics are dropped."""
    plan_id = ruleset_id_of(request)
    store = _store(request)
    stored = await store.get(plan_id)
    plan = parse_plan(stored.document, plan_id=plan_id)
    await store.delete(plan_id)
    redis, partitions = keys.redis(request), request.app[keys.SETTINGS].partitions
    await plan_runs.forget(redis, partitions, plan)
    await delete_counts(redis, partitions, plan_journey_id(plan_id))
    await keys.registry(request).refresh()
    return web.json_response({"id": plan_id, "deleted": True})


@requires("rules")
async def validate_plan(request: web.Request) -> web.Response:
    """Validate a plan document without storing it (references to audiences and journeys included)."""
    plan = parse_plan(await read_body(request))
    now = request.app[keys.CLOCK].now_ms()
    await _check(request, plan, now)
    return web.json_response(
        {"valid": True, "id": plan.id, "next_occurrence": _occurrence_view(next_occurrence(plan, now))}
    )


@requires("rules")
async def plan_runs_view(request: web.Request) -> web.Response:
    """Every remembered occurrence, newest first: status, targeted, sent, and what the events did."""
    plan_id = ruleset_id_of(request)
    await _store(request).get(plan_id)  # 404 for an unknown plan
    redis, partitions = keys.redis(request), request.app[keys.SETTINGS].partitions
    runs = await plan_runs.runs_view(redis, partitions, plan_id)
    states = await plan_runs.plan_states(redis)
    return web.json_response({"id": plan_id, "state": states.get(plan_id, "active"), "runs": runs})


async def _set_state(request: web.Request, state: str | None) -> web.Response:
    plan_id = ruleset_id_of(request)
    store = _store(request)
    stored = await store.get(plan_id)
    redis, partitions = keys.redis(request), request.app[keys.SETTINGS].partitions
    await plan_runs.set_state(redis, plan_id, state)
    cancelled = []
    if state == plan_runs.CANCELLED:
        plan = parse_plan(stored.document, plan_id=plan_id)
        now = request.app[keys.CLOCK].now_ms()
        for run in await plan_runs.read_runs(redis, plan_id):
            if run.status != plan_runs.RUNNING:
                continue
            await plan_runs.set_status(redis, run, plan_runs.CANCELLED, now)
            for partition in range(partitions):
                await plan_runs.finish(
                    redis, partition, plan_id, len(plan.branches), run.occurrence, plan_runs.CANCELLED
                )
            cancelled.append(run.occurrence)
    return web.json_response({"id": plan_id, "state": state or "active", "cancelled_runs": cancelled})


@requires("rules")
async def pause_plan(request: web.Request) -> web.Response:
    """Stop sending and opening occurrences until resumed (a run goes on where it stopped)."""
    return await _set_state(request, plan_runs.PAUSED)


@requires("rules")
async def resume_plan(request: web.Request) -> web.Response:
    """Make a paused or cancelled plan active again."""
    return await _set_state(request, None)


@requires("rules")
async def cancel_plan(request: web.Request) -> web.Response:
    """End the running occurrences (unsent users are dropped) and open no more until resumed."""
    return await _set_state(request, plan_runs.CANCELLED)


@requires("rules")
async def estimate_plan(request: web.Request) -> web.Response:
    """Each branch's size now, after the earlier branches are taken out (who a run would target)."""
    plan_id = ruleset_id_of(request)
    stored = await _store(request).get(plan_id)
    plan = parse_plan(stored.document, plan_id=plan_id)
    redis, partitions = keys.redis(request), request.app[keys.SETTINGS].partitions
    audiences = await definitions(redis)
    sizes = []
    earlier: list[Node] = []
    for branch in plan.branches:
        node: Node = SetOp("exclude", (branch.audience, *earlier)) if earlier else branch.audience
        sizes.append(await expression_size(redis, partitions, node, audiences))
        earlier.append(branch.audience)
    return web.json_response({"id": plan_id, "branches": sizes, "total": sum(sizes)})


def add_routes(app: web.Application) -> None:
    """Register the plan endpoints."""
    app.router.add_post("/v1/plans:validate", validate_plan)
    app.router.add_get("/v1/plans", list_plans)
    app.router.add_put("/v1/plans/{id:[^/:]+}", put_plan)
    app.router.add_get("/v1/plans/{id:[^/:]+}", get_plan)
    app.router.add_delete("/v1/plans/{id:[^/:]+}", delete_plan)
    app.router.add_get("/v1/plans/{id:[^/:]+}/runs", plan_runs_view)
    app.router.add_post("/v1/plans/{id:[^/:]+}:pause", pause_plan)
    app.router.add_post("/v1/plans/{id:[^/:]+}:resume", resume_plan)
    app.router.add_post("/v1/plans/{id:[^/:]+}:cancel", cancel_plan)
    app.router.add_post("/v1/plans/{id:[^/:]+}:estimate", estimate_plan)
