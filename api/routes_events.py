"""HTTP ingest: one event or a batch, validated per item, aliases resolved to users, acknowledged once durably
appended."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from api import keys
from api.bodies import read_body
from api.event_wire import parse_ingest_event
from api.middleware import requires
from beacon import metrics
from beacon.errors import TooLargeError, ValidationError
from cep import identities, streams
from cep.events import Event
from cep.identities import Alias


def split_batch(body: Any, max_events: int) -> tuple[list[Any], bool]:
    """The wire events of a body (`{"events": [...]}` or one event) and whether it was a batch."""
    if isinstance(body, dict) and "events" in body and "user_id" not in body:
        extra = sorted(set(body) - {"events"})
        if extra:
            raise ValidationError(f"unknown field {extra[0]!r} (expected: events)", path=extra[0])
        items = body["events"]
        if not isinstance(items, list) or not items:
            raise ValidationError("events must be a non-empty list", path="events")
        if len(items) > max_events:
            raise TooLargeError(f"{len(items)} events in one batch; the limit is {max_events}", path="events")
        return items, True
    return [body], False


@dataclass(slots=True)
class Validated:
    """A request's (or frame's) good events, its per-item errors, and which events name their user by alias."""

    events: list[Event] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    aliased: list[tuple[int, Alias]] = field(default_factory=list)  # (index in events, alias)


def validate_items(items: list[Any], batch: bool, now_ms: int, transport: str, max_ahead_ms: int) -> Validated:
    """Parse each item into the good events and per-item errors (index, code, message, path)."""
    found = Validated()
    for index, item in enumerate(items):
        try:
            event, alias = parse_ingest_event(item, f"events[{index}]" if batch else "", now_ms, max_ahead_ms)
        except ValidationError as exc:
            metrics.on_event_rejected(transport, exc.code)
            found.errors.append({"index": index, "code": exc.code, "message": exc.message, "path": exc.path})
            continue
        if alias is not None:
            found.aliased.append((len(found.events), alias))
        found.events.append(event)
    return found


async def resolve_aliases(redis: Redis, partitions: int, requests: Sequence[Validated]) -> None:
    """Give every aliased event its user: one pipelined round trip for all the requests' aliases, an unknown
    alias becoming a user of its own (`cep.identities.resolve`)."""
    wanted = [alias for request in requests for _, alias in request.aliased]
    if not wanted:
        return
    users, created = await identities.resolve(redis, partitions, wanted)
    metrics.on_aliases("created", created)
    for request in requests:
        for index, alias in request.aliased:
            request.events[index] = replace(request.events[index], user_id=users[alias])
        request.aliased.clear()


@requires("events")
async def post_events(request: web.Request) -> web.Response:
    """Accept events; 200 with accepted ids and per-item errors, 422 when nothing was acceptable."""
    settings = request.app[keys.SETTINGS]
    body = await read_body(request)
    items, batch = split_batch(body, settings.max_batch_events)
    found = validate_items(items, batch, request.app[keys.CLOCK].now_ms(), "http", settings.max_future_ms)
    events, errors = found.events, found.errors
    if not batch and errors:
        error = errors[0]
        raise ValidationError(error["message"], path=error["path"])
    if not events:
        first = errors[0]
        message = f"no event in the batch was valid; first: {first['path']}: {first['message']}"
        body = {"error": {"code": "invalid", "message": message, "path": "events"}, "accepted": [], "errors": errors}
        return web.json_response(body, status=422)
    redis = keys.redis(request)
    await resolve_aliases(redis, settings.partitions, [found])
    events = found.events
    await streams.append_events(redis, events, settings.partitions, keys.services(request).ack_fsync_ms)
    metrics.on_events_accepted("http", len(events))
    return web.json_response({"accepted": [event.event_id for event in events], "errors": errors})


def add_routes(app: web.Application) -> None:
    """Register the ingest endpoint."""
    app.router.add_post("/v1/events", post_events)
