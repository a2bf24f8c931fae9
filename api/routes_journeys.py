"""Journey endpoints: versioned PUT, GET, list, DELETE, validate, dry-run and per-node statistics."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api import keys, paging
from api.bodies import object_with_fields, read_body
from api.middleware import caller, requires
from api.routes_dryrun import parse_dry_run_inputs
from api.routes_rulesets import restore_stored_secrets, ruleset_id_of, stored_document, version_of
from cep.journey_dryrun import journey_dry_run
from cep.journey_stats import delete_counts, read_counts, stats_view
from rules.owners import Owners
from rules.registry import load_journey
from rules.store import JOURNEYS

DRY_RUN_FIELDS = ("events", "profiles", "until", "document")


@requires("rules")
async def put_journey(request: web.Request) -> web.Response:
    """Validate a journey and store it as its new active version; running instances keep theirs."""
    journey_id = ruleset_id_of(request)
    document = await read_body(request)
    settings = request.app[keys.SETTINGS]
    journey = load_journey(document, journey_id=journey_id, lateness_ms=settings.lateness_ms)
    if isinstance(document, dict) and "id" not in document:
        document = {"id": journey_id, **document}
    # Owners and write-only webhook headers as for rulesets (api.routes_rulesets.put_ruleset).
    store, owners, who = keys.journey_store(request), Owners(keys.redis(request), JOURNEYS), caller(request)
    await owners.claim(journey_id, who, record=False)
    document = await restore_stored_secrets(store, journey_id, document)
    await owners.claim(journey_id, who, record=True)
    version = await store.put(journey_id, document, request.app[keys.CLOCK].now_ms())
    await keys.registry(request).refresh()
    return web.json_response({"id": journey_id, "version": version, "nodes": len(journey.nodes)})


@requires("rules")
async def list_journeys(request: web.Request) -> web.Response:
    """One page of the active journeys, by id, with their versions and owners (`?limit=&after=&q=`: `api.paging`)."""
    stored, page = await paging.stored_page(request, keys.journey_store(request))
    owners = await Owners(keys.redis(request), JOURNEYS).of(page.ids)
    items = [
        {
            "id": item.id,
            "version": item.version,
            "description": item.document.get("description", ""),
            "nodes": len(item.document.get("nodes", {})),
            "updated_ms": item.updated_ms,
            "owner": owners.get(item.id),
        }
        for item in stored
    ]
    return paging.page_reply("journeys", items, page)


@requires("rules")
async def get_journey(request: web.Request) -> web.Response:
    """The active version (or `?version=N`) of one journey, with its kept versions and owner."""
    journey_id = ruleset_id_of(request)
    owner = await Owners(keys.redis(request), JOURNEYS).owner(journey_id)
    return await stored_document(keys.journey_store(request), journey_id, version_of(request), {"owner": owner})


@requires("rules")
async def delete_journey(request: web.Request) -> web.Response:
    """Deactivate a journey: its instances are cancelled (no further step or action) and its stats dropped."""
    journey_id = ruleset_id_of(request)
    owners = Owners(keys.redis(request), JOURNEYS)
    await owners.claim(journey_id, caller(request), record=False)
    await keys.journey_store(request).delete(journey_id)
    await owners.release(journey_id)
    await delete_counts(keys.redis(request), request.app[keys.SETTINGS].partitions, journey_id)
    await keys.registry(request).refresh()
    return web.json_response({"id": journey_id, "deleted": True})


@requires("rules")
async def validate_journey(request: web.Request) -> web.Response:
    """Validate a journey document without storing it."""
    document = await read_body(request)
    journey = load_journey(document, journey_id=None, lateness_ms=request.app[keys.SETTINGS].lateness_ms)
    return web.json_response({"valid": True, "id": journey.id, "nodes": list(journey.nodes)})


@requires("rules")
async def journey_stats(request: web.Request) -> web.Response:
    """Per version and node: entered, waiting now, left by each branch, exited, converted."""
    journey_id = ruleset_id_of(request)
    stored = await keys.journey_store(request).get(journey_id)
    counts = await read_counts(keys.redis(request), request.app[keys.SETTINGS].partitions, journey_id)
    return web.json_response({"id": journey_id, "version": stored.version, **stats_view(counts)})


@requires("rules")
async def post_journey_dry_run(request: web.Request) -> web.Response:
    """Run the stored journey (or `document`, unsaved) on `events` with a simulated clock."""
    journey_id = ruleset_id_of(request)
    body = object_with_fields(await read_body(request), DRY_RUN_FIELDS)
    settings = request.app[keys.SETTINGS]
    if "document" in body:
        journey = load_journey(body["document"], journey_id=journey_id, lateness_ms=settings.lateness_ms)
    else:
        stored = await keys.journey_store(request).get(journey_id)
        journey = load_journey(
            stored.document, journey_id=journey_id, lateness_ms=settings.lateness_ms, version=stored.version
        )
    events, profiles, until = parse_dry_run_inputs(body, request.app[keys.CLOCK].now_ms())
    report: dict[str, Any] = journey_dry_run(journey, events, profiles, settings.dedupe_horizon_ms, until)
    return web.json_response({"journey_id": journey.id, "version": journey.version, **report})


def add_routes(app: web.Application) -> None:
    """Register the journey endpoints."""
    app.router.add_post("/v1/journeys:validate", validate_journey)
    app.router.add_get("/v1/journeys", list_journeys)
    app.router.add_put("/v1/journeys/{id:[^/:]+}", put_journey)
    app.router.add_get("/v1/journeys/{id:[^/:]+}", get_journey)
    app.router.add_delete("/v1/journeys/{id:[^/:]+}", delete_journey)
    app.router.add_get("/v1/journeys/{id:[^/:]+}/stats", journey_stats)
    app.router.add_post("/v1/journeys/{id:[^/:]+}:dry-run", post_journey_dry_run)
