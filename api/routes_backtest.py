"""`POST /v1/backtest`: stored or unsaved rulesets and journeys over recorded events, summarised per rule,
per journey and per day."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from api import keys
from api.bodies import decode_payload, object_with_fields
from api.middleware import requires
from api.recorded_events import events_from_lines, parse_recorded_event
from beacon.errors import DecodeError, NotFoundError, TooLargeError, ValidationError
from cep.backtest import run_backtest
from cep.events import Event
from rules.journey_model import Journey
from rules.model import Ruleset
from rules.registry import compile_ruleset, load_journey
from rules.schema import RulesetInvalid
from rules.store import RulesetStore

BACKTEST_FIELDS = ("rulesets", "journeys", "events", "until")
NDJSON_QUERY = ("ruleset", "journey", "until")
NDJSON = "application/x-ndjson"
MAX_BACKTEST_EVENTS = 100_000
MAX_BACKTEST_RULESETS = 64
T = TypeVar("T", Ruleset, Journey)
# Above the ingest limit (BEACON_MAX_BODY_BYTES) on purpose: 100,000 recorded events of ~600 bytes.
MAX_BACKTEST_BODY_BYTES = 64 * 1024 * 1024
# Events, chained events and timers together: each event may schedule a timer or two and chain a few
# tag events; a run far past that is two rules feeding each other, and stops here.
MAX_STEPS = 20 * MAX_BACKTEST_EVENTS


async def _read_body(request: web.Request) -> bytes:
    """The raw body, refused past MAX_BACKTEST_BODY_BYTES (this route reads past the app-wide limit)."""
    too_large = TooLargeError(f"body larger than {MAX_BACKTEST_BODY_BYTES} bytes", path="body")
    if request.content_length is not None and request.content_length > MAX_BACKTEST_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > MAX_BACKTEST_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    if not size:
        raise DecodeError("empty body", path="body")
    return b"".join(chunks)


def _until(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            return int(raw)
        except ValueError:
            pass
    elif isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise ValidationError("until must be an integer (ms since the epoch)", path="until")


def _prefixed(prefix: str, path: str | None) -> str:
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


async def _journeys(request: web.Request, items: Any) -> list[Journey]:
    """Each item a stored journey id (its active version) or an unsaved document; errors name `journeys[i]`."""
    if items is None:
        return []
    lateness_ms = request.app[keys.SETTINGS].lateness_ms

    def stored(document: Any, item_id: str, version: int) -> Journey:
        return load_journey(document, journey_id=item_id, lateness_ms=lateness_ms, version=version)

    def unsaved(document: Any) -> Journey:
        return load_journey(document, journey_id=None, lateness_ms=lateness_ms)

    return await _documents(items, "journeys", "journey", keys.journey_store(request), stored, unsaved)


async def _rulesets(request: web.Request, items: Any, *, required: bool = True) -> list[Ruleset]:
    """Each item a stored ruleset id (its active version) or an unsaved document; errors name `rulesets[i]`."""
    if items is None and not required:
        return []
    if not isinstance(items, list) or (required and not items):
        raise ValidationError("rulesets must be a non-empty list of ruleset ids or documents", path="rulesets")
    lateness_ms = request.app[keys.SETTINGS].lateness_ms

    def stored(document: Any, item_id: str, version: int) -> Ruleset:
        return compile_ruleset(document, ruleset_id=item_id, lateness_ms=lateness_ms, version=version)

    def unsaved(document: Any) -> Ruleset:
        return compile_ruleset(document, ruleset_id=None, lateness_ms=lateness_ms)

    return await _documents(items, "rulesets", "ruleset", keys.store(request), stored, unsaved)


async def _documents(
    items: Any,
    field: str,
    what: str,
    store: RulesetStore,
    stored: Callable[[Any, str, int], T],
    unsaved: Callable[[Any], T],
) -> list[T]:
    """Rulesets or journeys named in a backtest: each a stored id (its active version) or an unsaved
    document, validated; every error names `<field>[i]` (and the path inside the document)."""
    if not isinstance(items, list):
        raise ValidationError(f"{field} must be a list of {what} ids or documents", path=field)
    if len(items) > MAX_BACKTEST_RULESETS:
        raise TooLargeError(f"at most {MAX_BACKTEST_RULESETS} {field} per backtest", path=field)
    found: list[T] = []
    for index, item in enumerate(items):
        path = f"{field}[{index}]"
        if isinstance(item, str):
            try:
                document = await store.get(item)
            except NotFoundError as exc:
                raise NotFoundError(exc.message, path=path) from None
            loaded = stored(document.document, item, document.version)
        elif isinstance(item, dict):
            try:
                loaded = unsaved(item)
            except RulesetInvalid as exc:
                errors = [ValidationError(error.message, path=_prefixed(path, error.path)) for error in exc.errors]
                raise RulesetInvalid(errors) from None
        else:
            raise ValidationError(f"must be a stored {what} id or a {what} document", path=path)
        if any(earlier.id == loaded.id for earlier in found):
            raise ValidationError(f"{what} {loaded.id!r} is given twice", path=path)
        found.append(loaded)
    return found


def _inline_events(raw_events: Any, now_ms: int) -> list[Event]:
    if not isinstance(raw_events, list) or not raw_events:
        raise ValidationError("events must be a non-empty list", path="events")
    if len(raw_events) > MAX_BACKTEST_EVENTS:
        raise TooLargeError(f"at most {MAX_BACKTEST_EVENTS} events per backtest", path="events")
    return [parse_recorded_event(item, f"events[{index}]", now_ms) for index, item in enumerate(raw_events)]


def _line_events(body: bytes, now_ms: int) -> list[Event]:
    events = list(events_from_lines(io.BytesIO(body), now_ms, limit=MAX_BACKTEST_EVENTS))
    if not events:
        raise ValidationError("the body holds no event lines", path="events")
    return events


@requires("rules")
async def post_backtest(request: web.Request) -> web.Response:
    """Run rulesets over recorded events (inline JSON, or an x-ndjson body) on a simulated clock."""
    settings = request.app[keys.SETTINGS]
    now = request.app[keys.CLOCK].now_ms()
    body = await _read_body(request)
    if request.content_type == NDJSON:
        unknown = sorted(set(request.query) - set(NDJSON_QUERY))
        if unknown:
            raise ValidationError(f"unknown query parameter {unknown[0]!r} (expected ruleset, until)", path=unknown[0])
        ruleset_ids = request.query.getall("ruleset", [])
        journey_ids = request.query.getall("journey", [])
        if not ruleset_ids and not journey_ids:
            raise ValidationError("name the rulesets or journeys as ?ruleset=<id> / ?journey=<id>", path="ruleset")
        rulesets = await _rulesets(request, ruleset_ids or None, required=False)
        journeys = await _journeys(request, journey_ids or None)
        until = _until(request.query.get("until"))
        # Validation and the run are CPU work of up to seconds: off the event loop, so ingest keeps flowing.
        events = await asyncio.to_thread(_line_events, body, now)
    else:
        document = object_with_fields(decode_payload(body, request.content_type), BACKTEST_FIELDS)
        journeys = await _journeys(request, document.get("journeys"))
        rulesets = await _rulesets(request, document.get("rulesets"), required=not journeys)
        until = _until(document.get("until"))
        events = await asyncio.to_thread(_inline_events, document.get("events"), now)
    report = await asyncio.to_thread(
        run_backtest,
        rulesets,
        events,
        until_ms=until,
        dedupe_horizon_ms=settings.dedupe_horizon_ms,
        max_steps=MAX_STEPS,
        journeys=journeys,
    )
    return web.json_response(report.to_json())


def add_routes(app: web.Application) -> None:
    """Register the backtest endpoint."""
    app.router.add_post("/v1/backtest", post_backtest)
