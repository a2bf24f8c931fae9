"""`POST /v1/rulesets/{id}:dry-run`: what a ruleset would fire on given events, and when."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api import keys
from api.bodies import object_with_fields, read_body
from api.event_wire import check_identifier, parse_event
from api.middleware import requires
from api.routes_rulesets import ruleset_id_of
from beacon.errors import TooLargeError, ValidationError
from cep.dryrun import dry_run
from cep.events import Event
from rules.registry import compile_ruleset

DRY_RUN_FIELDS = ("events", "profiles", "until", "document")
MAX_DRY_RUN_EVENTS = 10_000


def _profiles(raw: Any) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValidationError("profiles must be an object of user_id -> {attrs, tags}", path="profiles")
    for user_id, profile in raw.items():
        check_identifier(user_id, f"profiles.{user_id}", "user_id")
        if not isinstance(profile, dict) or set(profile) - {"attrs", "tags"}:
            raise ValidationError('a profile is {"attrs": {...}, "tags": [...]}', path=f"profiles.{user_id}")
        if not isinstance(profile.get("attrs", {}), dict):
            raise ValidationError("attrs must be an object", path=f"profiles.{user_id}.attrs")
        tags = profile.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(tag, str) and tag for tag in tags):
            raise ValidationError("tags must be a list of strings", path=f"profiles.{user_id}.tags")
    return raw


def parse_dry_run_inputs(
    body: dict[str, Any], now_ms: int
) -> tuple[list[Event], dict[str, dict[str, Any]], int | None]:
    """A dry-run body's `events`, `profiles` and `until`, checked (shared by rulesets and journeys)."""
    raw_events = body.get("events")
    if not isinstance(raw_events, list) or not raw_events:
        raise ValidationError("events must be a non-empty list", path="events")
    if len(raw_events) > MAX_DRY_RUN_EVENTS:
        raise TooLargeError(f"at most {MAX_DRY_RUN_EVENTS} events per dry-run", path="events")
    events = [parse_event(item, f"events[{i}]", now_ms) for i, item in enumerate(raw_events)]
    until = body.get("until")
    if until is not None and (isinstance(until, bool) or not isinstance(until, int)):
        raise ValidationError("until must be an integer (ms since the epoch)", path="until")
    return events, _profiles(body.get("profiles")), until


@requires("rules")
async def post_dry_run(request: web.Request) -> web.Response:
    """Run the stored ruleset (or `document`, unsaved) on `events` with a simulated clock."""
    ruleset_id = ruleset_id_of(request)
    body = await read_body(request)
    body = object_with_fields(body, DRY_RUN_FIELDS)
    settings = request.app[keys.SETTINGS]
    if "document" in body:
        ruleset = compile_ruleset(body["document"], ruleset_id=ruleset_id, lateness_ms=settings.lateness_ms)
    else:
        stored = await keys.store(request).get(ruleset_id)
        ruleset = compile_ruleset(
            stored.document, ruleset_id=ruleset_id, lateness_ms=settings.lateness_ms, version=stored.version
        )
    events, profiles, until = parse_dry_run_inputs(body, request.app[keys.CLOCK].now_ms())
    report = dry_run(ruleset, events, profiles, settings.dedupe_horizon_ms, until)
    return web.json_response({"ruleset_id": ruleset.id, "version": ruleset.version, **report})


def add_routes(app: web.Application) -> None:
    """Register the dry-run endpoint."""
    app.router.add_post("/v1/rulesets/{id:[^/:]+}:dry-run", post_dry_run)
