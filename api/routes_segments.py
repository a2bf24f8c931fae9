"""Segment endpoints: versioned PUT, GET (with size), list, DELETE, validate, members, estimate, backfill.

A segment is stored like a journey (`rules.store`, under `b:{rs}:g:*`); its membership is kept by the
partition owners (`cep.segments`) in per-partition SETs and size HASHes (`cep.segment_members`), which
these endpoints only read, and drop when the segment is deleted. See docs/audiences.md.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime
from typing import Any

from aiohttp import web

from api import keys, paging
from api.archive_source import archive_dir
from api.bodies import object_with_fields, read_body
from api.event_wire import parse_event
from api.middleware import requires
from api.routes_rulesets import ruleset_id_of, version_of
from beacon.errors import ValidationError
from cep import segment_estimate, streams
from cep.attribution import DAY_MS
from cep.events import ORIGIN_BACKFILL, Event, backfill_id
from cep.segment_members import MEMBERS_PAGE_MAX, delete_members, members_page, segment_size, segment_sizes
from measure.archive_backfill import backfill_from_archive
from rules.schema import RulesetInvalid
from rules.segments import CompiledSegment, Segment, load_segment

MEMBERS_PAGE_DEFAULT = 100
ESTIMATE_FIELDS = ("where", "segment", "exact_limit")
ESTIMATE_ID = "estimate"  # the id an unsaved `where` is validated under
MAX_BACKFILL = 10_000  # events per backfill call (`beacon segments backfill` sends a file in such chunks)
MAX_REPORTED_ERRORS = 100
BACKFILL_FIELDS = ("events", "source", "from", "to")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


@requires("rules")
async def put_segment(request: web.Request) -> web.Response:
    """Validate a segment and store it as its new active version."""
    segment_id = ruleset_id_of(request)
    document = _document(await read_body(request))
    load_segment(document, segment_id=segment_id, lateness_ms=request.app[keys.SETTINGS].lateness_ms)
    if "id" not in document:
        document = {"id": segment_id, **document}
    version = await keys.segment_store(request).put(segment_id, document, request.app[keys.CLOCK].now_ms())
    # Compile here too, so this process's owners keep the new version before the response goes out.
    await keys.registry(request).refresh()
    return web.json_response({"id": segment_id, "version": version})


@requires("rules")
async def list_segments(request: web.Request) -> web.Response:
    """One page of the active segments, by id, with their versions, descriptions and sizes (`api.paging`)."""
    stored, page = await paging.stored_page(request, keys.segment_store(request))
    sizes = await segment_sizes(keys.redis(request), request.app[keys.SETTINGS].partitions, page.ids)
    items = [
        {
            "id": item.id,
            "version": item.version,
            "description": item.document.get("description", ""),
            "size": sizes[item.id],
            "updated_ms": item.updated_ms,
        }
        for item in stored
    ]
    return paging.page_reply("segments", items, page)


@requires("rules")
async def get_segment(request: web.Request) -> web.Response:
    """The active version (or `?version=N`) of one segment, its kept versions, and its size now."""
    segment_id = ruleset_id_of(request)
    store = keys.segment_store(request)
    stored = await store.get(segment_id, version_of(request))
    size = await segment_size(keys.redis(request), request.app[keys.SETTINGS].partitions, segment_id)
    return web.json_response(
        {
            "id": stored.id,
            "version": stored.version,
            "document": stored.document,
            "updated_ms": stored.updated_ms,
            "versions": await store.versions(segment_id),
            "size": size,
        }
    )


@requires("rules")
async def delete_segment(request: web.Request) -> web.Response:
    """Deactivate a segment and forget its members and sizes."""
    segment_id = ruleset_id_of(request)
    await keys.segment_store(request).delete(segment_id)
    await delete_members(keys.redis(request), request.app[keys.SETTINGS].partitions, segment_id)
    await keys.registry(request).refresh()
    return web.json_response({"id": segment_id, "deleted": True})


@requires("rules")
async def validate_segment(request: web.Request) -> web.Response:
    """Validate a segment document without storing it."""
    document = _document(await read_body(request))
    segment = load_segment(document, segment_id=None, lateness_ms=request.app[keys.SETTINGS].lateness_ms)
    return web.json_response({"valid": True, "id": segment.id})


@requires("rules")
async def segment_members(request: web.Request) -> web.Response:
    """One page of a segment's members: `?cursor=` (from the previous page; absent or empty to start) and
    `?limit=` (1..1000, default 100; a hint: Redis may return a small partition's members whole)."""
    segment_id = ruleset_id_of(request)
    limit = paging.query_limit(request, MEMBERS_PAGE_DEFAULT, MEMBERS_PAGE_MAX)
    cursor = request.query.get("cursor", "")
    await keys.segment_store(request).get(segment_id)  # 404 for a segment that does not exist
    try:
        members, after = await members_page(
            keys.redis(request), request.app[keys.SETTINGS].partitions, segment_id, cursor, limit
        )
    except ValueError as exc:
        message = f"{exc}: pass the previous page's cursor, or none to start"
        raise ValidationError(message, path="cursor") from None
    return web.json_response({"members": members, "cursor": after})


@requires("rules")
async def estimate(request: web.Request) -> web.Response:
    """Size an unsaved definition over the stored users: `{"where": <condition>}` or `{"segment": <document>}`,
    with `exact_limit`? (records evaluated before a sample takes over, 100..200,000)."""
    body = object_with_fields(await read_body(request), ESTIMATE_FIELDS)
    segment = _estimated_segment(body, request.app[keys.SETTINGS].lateness_ms)
    highest = segment_estimate.EXACT_LIMIT  # read now: a test may lower it
    limit = body.get("exact_limit", highest)
    if type(limit) is not int or not min(segment_estimate.MIN_LIMIT, highest) <= limit <= highest:
        raise ValidationError(f"must be an integer from {segment_estimate.MIN_LIMIT} to {highest}", path="exact_limit")
    settings = request.app[keys.SETTINGS]
    result = await segment_estimate.estimate_segment(
        keys.redis(request),
        settings.partitions,
        CompiledSegment.build(segment, settings.lateness_ms),
        request.app[keys.CLOCK].now_ms(),
        limit,
    )
    return web.json_response(result.to_json())


@requires("rules")
async def backfill(request: web.Request) -> web.Response:
    """Feed past events to a stored segment's behaviour history: `{"events": [...]}`, up to 10,000 a call, or
    `{"source": "archive", "from"?, "to"?}`: the event archive's events in that event-time window.

    Events of types the segment does not read are ignored (counted; the archive is not even read for them);
    the rest are appended to their users' partitions as `backfill` events, which only record history and
    re-judge membership as of now, silently (`cep.evaluator`). Each gets an id from its content (a file's
    event: unless it has an `event_id`), so feeding the same events twice records them once. A file's bad
    events are refused one by one, with their paths; the good ones are kept.
    """
    compiled = await _compiled_segment(request, ruleset_id_of(request))
    body = object_with_fields(await read_body(request), BACKFILL_FIELDS)
    if "source" in body:
        return await _backfill_from_archive(request, compiled, body)
    for name in ("from", "to"):
        if name in body:
            raise ValidationError('is only taken with "source": "archive"', path=name)
    raw = body.get("events")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_BACKFILL:
        raise ValidationError(f"must be a list of 1 to {MAX_BACKFILL:,} events", path="events")
    settings, now = request.app[keys.SETTINGS], request.app[keys.CLOCK].now_ms()
    read = _types_read(compiled)
    accepted: list[Event] = []
    ignored: dict[str, int] = {}
    errors: list[dict[str, Any]] = []
    for index, wire in enumerate(raw):
        path = f"events[{index}]"
        try:
            event = parse_event(wire, path, now, settings.max_future_ms)
        except ValidationError as exc:
            errors.append({"index": index, "path": exc.path, "message": exc.message})
            continue
        if event.type not in read:
            ignored[event.type] = ignored.get(event.type, 0) + 1
            continue
        if "event_id" not in wire:
            event.event_id = backfill_id(event)
        event.origin = ORIGIN_BACKFILL
        accepted.append(event)
    await streams.append_events(keys.redis(request), accepted, settings.partitions, keys.services(request).ack_fsync_ms)
    return web.json_response(
        {
            "segment": compiled.segment.id,
            "accepted": len(accepted),
            "ignored": ignored,
            "errors": errors[:MAX_REPORTED_ERRORS],
            "error_count": len(errors),
        }
    )


async def _backfill_from_archive(request: web.Request, compiled: CompiledSegment, body: dict[str, Any]) -> web.Response:
    """The archive's events of the types the segment reads, `from` .. `to` (event time, inclusive; default: the
    segment's longest behaviour window back from now), fed as a file's are (`measure.archive_backfill`)."""
    if body["source"] != "archive":
        raise ValidationError('must be "archive" (or leave it out and send "events")', path="source")
    if "events" in body:
        raise ValidationError('is not taken with "source": "archive": the events come from the archive', path="events")
    now = request.app[keys.CLOCK].now_ms()
    longest = max((window.within_ms for window in compiled.windows), default=0)
    to_ms = _moment(body, "to", now, end_of_day=True)
    from_ms = _moment(body, "from", now - longest, end_of_day=False)
    if from_ms > to_ms:
        raise ValidationError(f"must not be after `to` ({from_ms} > {to_ms} ms)", path="from")
    data_dir = await archive_dir(request)
    settings, types = request.app[keys.SETTINGS], sorted(_types_read(compiled))
    started = time.perf_counter()
    fed = await backfill_from_archive(
        keys.redis(request),
        data_dir,
        settings.partitions,
        types,
        (from_ms, to_ms),
        now,
        keys.services(request).ack_fsync_ms,
    )
    return web.json_response(
        {
            "segment": compiled.segment.id,
            "source": "archive",
            "from_ms": from_ms,
            "to_ms": to_ms,
            "types": types,
            "read": fed.read,
            "accepted": fed.accepted,
            "skipped": fed.skipped,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
        }
    )


async def _compiled_segment(request: web.Request, segment_id: str) -> CompiledSegment:
    """The active segment as this process compiled it (refreshed once if it is newer; a 404 if there is none)."""
    compiled = next((item for item in keys.registry(request).segments() if item.segment.id == segment_id), None)
    if compiled is None:
        await keys.segment_store(request).get(segment_id)  # a 404 for an unknown segment
        await keys.registry(request).refresh()
        compiled = next(item for item in keys.registry(request).segments() if item.segment.id == segment_id)
    return compiled


def _types_read(compiled: CompiledSegment) -> set[str]:
    """The event types whose events the segment's behaviour conditions keep."""
    return {shape.match.event for shape in compiled.shapes}


def _moment(body: dict[str, Any], name: str, default: int, *, end_of_day: bool) -> int:
    """`body[name]` in ms: an integer (ms since the epoch), a date `YYYY-MM-DD` (UTC; its start, or with
    `end_of_day` its last ms) or an ISO 8601 time (UTC unless it says its offset)."""
    if name not in body:
        return default
    value = body[name]
    found: int | None = None
    if type(value) is int:
        found = value
    elif isinstance(value, str) and DATE.fullmatch(value):
        try:
            day = date.fromisoformat(value)
        except ValueError:
            pass
        else:
            found = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
            found += DAY_MS - 1 if end_of_day else 0
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            found = int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)
    if found is None or not 0 <= found <= MAX_MS:
        raise ValidationError(
            "must be ms since the epoch, a date YYYY-MM-DD (UTC) or an ISO 8601 time, from 1970 to 9999", path=name
        )
    return found


def _estimated_segment(body: dict[str, Any], lateness_ms: int) -> Segment:
    """The definition to estimate, validated; errors name their path in the request body."""
    given = [name for name in ("where", "segment") if name in body]
    if len(given) != 1:
        raise ValidationError('takes exactly one of "where" (a condition) or "segment" (a document)', path="body")
    if given[0] == "where":
        return load_segment({"id": ESTIMATE_ID, "where": body["where"]}, segment_id=None, lateness_ms=lateness_ms)
    try:
        return load_segment(body["segment"], segment_id=None, lateness_ms=lateness_ms)
    except RulesetInvalid as exc:
        errors = [ValidationError(error.message, path=_inside("segment", error.path)) for error in exc.errors]
        raise RulesetInvalid(errors) from None


def _inside(field: str, path: str | None) -> str:
    return f"{field}.{path}" if path else field


def _document(body: Any) -> dict[str, Any]:
    """A segment document must be an object: named as the body (the parser would name no path)."""
    if not isinstance(body, dict):
        raise ValidationError("must be an object", path="body")
    return body


def add_routes(app: web.Application) -> None:
    """Register the segment endpoints."""
    app.router.add_post("/v1/segments:validate", validate_segment)
    app.router.add_post("/v1/segments:estimate", estimate)
    app.router.add_get("/v1/segments", list_segments)
    app.router.add_put("/v1/segments/{id:[^/:]+}", put_segment)
    app.router.add_get("/v1/segments/{id:[^/:]+}", get_segment)
    app.router.add_delete("/v1/segments/{id:[^/:]+}", delete_segment)
    app.router.add_get("/v1/segments/{id:[^/:]+}/members", segment_members)
    app.router.add_post("/v1/segments/{id:[^/:]+}:backfill", backfill)
