"""Item events: declare item indexes, and fan an item's event out to the users an index names.

`POST /v1/items/events` with `{"type": "price_drop", "item": {"sku": "SKU-X"}, "attrs": {"drop_pct": 25},
"users": {"did": {"event": "add_to_cart"}, "did_not": {"event": "pay"}, "within": "30d"}}` appends one
ordinary event per matching user (`type`, its `attrs` plus the item's attribute), which rules and journeys
match like any other. Event ids are `item:<request id>:<user>`: a retry with the same `id` appends
events that the workers drop as duplicates, so a fan-out acts at most once per user.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from aiohttp import web

from api import keys
from api.bodies import object_with_fields, read_body
from api.event_wire import check_identifier, parse_event
from api.middleware import requires
from api.routes_rulesets import stored_document, version_of
from beacon import metrics
from beacon.errors import NotFoundError, TooLargeError, ValidationError
from cep import streams
from cep.events import Event
from cep.item_index import item_value, matching_users
from rules.durations import parse_duration
from rules.item_indexes import parse_item_index
from rules.store import ITEM_INDEXES, RulesetStore

log = logging.getLogger("beacon.items")

FANOUT_FIELDS = ("id", "type", "item", "attrs", "users", "ts")
USERS_FIELDS = ("did", "did_not", "within")
# A fan-out is one request: past this many users it is refused before anything is appended (split it by
# item, or narrow `within`), so one call cannot flood the partitions' streams.
MAX_FANOUT_USERS = 1_000_000
APPEND_CHUNK = 1_000  # events per append (one pipeline of XADDs)


def _store(request: web.Request) -> RulesetStore:
    return RulesetStore(keys.redis(request), ITEM_INDEXES)


def _attr_of(request: web.Request) -> str:
    attr = request.match_info["attr"]
    check_identifier(attr, "attr", "attr", 64)
    return attr


@requires("rules")
async def put_index(request: web.Request) -> web.Response:
    """Declare (or change) the index of one item attribute."""
    attr = _attr_of(request)
    document = await read_body(request)
    index = parse_item_index(document, attr=attr)
    version = await _store(request).put(attr, document, request.app[keys.CLOCK].now_ms())
    await keys.registry(request).refresh()
    return web.json_response(
        {"attr": attr, "version": version, "events": list(index.events), "window_ms": index.window_ms}
    )


@requires("rules")
async def list_indexes(request: web.Request) -> web.Response:
    """Every declared item index."""
    _, stored = await _store(request).active()
    return web.json_response(
        {"indexes": [{"attr": item.id, "version": item.version, **item.document} for item in stored]}
    )


@requires("rules")
async def get_index(request: web.Request) -> web.Response:
    """One item index as stored (or `?version=N`)."""
    return await stored_document(_store(request), _attr_of(request), version_of(request))


@requires("rules")
async def delete_index(request: web.Request) -> web.Response:
    """Stop indexing an attribute (what is indexed expires with its window)."""
    attr = _attr_of(request)
    await _store(request).delete(attr)
    await keys.registry(request).refresh()
    return web.json_response({"attr": attr, "deleted": True})


def _event_type(raw: Any, path: str) -> str:
    if not isinstance(raw, dict) or set(raw) != {"event"} or not isinstance(raw["event"], str):
        raise ValidationError('must be {"event": "<type>"}', path=path)
    return raw["event"]


@requires("events")
async def post_item_event(request: web.Request) -> web.Response:
    """Fan an item's event out to the users the item index names; 200 with how many got it."""
    settings = request.app[keys.SETTINGS]
    now = request.app[keys.CLOCK].now_ms()
    body = object_with_fields(await read_body(request), FANOUT_FIELDS)
    for required in ("type", "item", "users"):
        if required not in body:
            raise ValidationError("is required", path=required)
    request_id = body.get("id") or uuid.uuid4().hex
    check_identifier(request_id, "id", "id", 64)
    item = body["item"]
    if not isinstance(item, dict) or len(item) != 1:
        raise ValidationError('must name one item attribute: {"sku": "SKU-X"}', path="item")
    ((attr, raw_value),) = item.items()
    index = next((found for found in keys.registry(request).item_indexes() if found.attr == attr), None)
    if index is None:
        raise NotFoundError(f"no item index on {attr!r} (PUT /v1/items/indexes/{attr})", path=f"item.{attr}")
    value = item_value(raw_value)
    if value is None:
        raise ValidationError("must be a string of 1-128 characters or an integer", path=f"item.{attr}")
    users = object_with_fields(body["users"], USERS_FIELDS, path="users")
    did = _event_type(users.get("did"), "users.did")
    raw_not = users.get("did_not")
    did_not = [_event_type(raw_not, "users.did_not")] if raw_not is not None else []
    for path, event_type in (("users.did", did), *(("users.did_not", name) for name in did_not)):
        if event_type not in index.events:
            raise ValidationError(
                f"{event_type!r} is not indexed on {attr!r} (indexed: {', '.join(index.events)})", path=path
            )
    within_text = users.get("within")
    try:
        within = parse_duration(within_text) if isinstance(within_text, str) else -1
    except ValueError:
        within = -1
    if not 0 < within <= index.window_ms:
        raise ValidationError(
            f"must be a duration up to the index's window ({index.window_ms} ms)", path="users.within"
        )
    # One template event validates type, ts and attrs the way ingest does (paths included).
    attrs = body.get("attrs") or {}
    wire = (
        {"user_id": "-", "type": body["type"], "attrs": {**attrs, attr: raw_value}} if isinstance(attrs, dict) else None
    )
    if wire is None:
        raise ValidationError("must be an object", path="attrs")
    if "ts" in body:
        wire["ts"] = body["ts"]
    template = parse_event(wire, "", now, settings.max_future_ms)
    started = time.perf_counter()
    since = template.ts - within
    redis, partitions = keys.redis(request), settings.partitions
    found: list[str] = []
    for partition in range(partitions):
        found += await matching_users(redis, partition, attr, value, did, did_not, since)
        if len(found) > MAX_FANOUT_USERS:
            raise TooLargeError(f"more than {MAX_FANOUT_USERS} users match; narrow the fan-out", path="users")
    for start in range(0, len(found), APPEND_CHUNK):
        events = [
            Event(f"item:{request_id}:{user}", user, template.type, template.ts, template.attrs, now)
            for user in found[start : start + APPEND_CHUNK]
        ]
        await streams.append_events(redis, events, partitions, keys.services(request).ack_fsync_ms)
    metrics.on_item_fanout(template.type, len(found))
    elapsed_ms = (time.perf_counter() - started) * 1000
    log.info("item event %s %s=%s: %d users in %.0f ms", template.type, attr, value, len(found), elapsed_ms)
    return web.json_response(
        {
            "id": request_id,
            "type": template.type,
            "item": {attr: raw_value},
            "users": len(found),
            "elapsed_ms": round(elapsed_ms),
        }
    )


def add_routes(app: web.Application) -> None:
    """Register the item endpoints."""
    app.router.add_post("/v1/items/events", post_item_event)
    app.router.add_get("/v1/items/indexes", list_indexes)
    app.router.add_put("/v1/items/indexes/{attr}", put_index)
    app.router.add_get("/v1/items/indexes/{attr}", get_index)
    app.router.add_delete("/v1/items/indexes/{attr}", delete_index)
