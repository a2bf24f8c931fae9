"""`GET /c/{token}`: a tracked link's redirect, which records the click as a `click` event of the user.

Open (no API key: the user's phone follows it). The token's record (`cep.links`) holds the URL, written
when the action was created, so the redirect can only go where a template author wrote. The click event
(`{"action_id", "url", "index", "ruleset_id", "rule_id", "journey_id", "node_id", "plan_id",
"occurrence"}`, as known) has the id `click:<token>`: a link's first click is its click event, later ones
are deduplicated by the engine (and counted by the metric). Recording a click never stands between the
user and the page: if Redis cannot take it, the redirect happens anyway and the failure is counted.
"""

from __future__ import annotations

import logging

from aiohttp import web

from api import keys
from beacon import metrics
from beacon.errors import NotFoundError
from beacon.redis_errors import describe, is_redis_trouble
from cep import links, streams
from cep.events import Event

log = logging.getLogger("beacon.clicks")

CLICK_EVENT = "click"
CLICK_FIELDS = ("action_id", "url", "index", *links.ATTRIBUTION_FIELDS)


async def follow(request: web.Request) -> web.StreamResponse:
    """302 to the link's URL, after appending the click; 404 for an unknown or expired link."""
    token = request.match_info["token"]
    redis, settings = keys.redis(request), request.app[keys.SETTINGS]
    record = await links.resolve(redis, settings.partitions, token)
    if record is None:
        raise NotFoundError("unknown or expired link", path="token")
    now = request.app[keys.CLOCK].now_ms()
    attrs = {name: record[name] for name in CLICK_FIELDS if name in record}
    event = Event(f"click:{token}", str(record["user_id"]), CLICK_EVENT, now, attrs, now)
    try:
        await streams.append_events(redis, [event], settings.partitions, keys.services(request).ack_fsync_ms)
        metrics.on_click(str(record.get("source") or "rule"), recorded=True)
    except Exception as exc:
        if not is_redis_trouble(exc):
            raise
        log.warning("click on %s not recorded: %s", token, describe(exc))
        metrics.on_click(str(record.get("source") or "rule"), recorded=False)
    raise web.HTTPFound(str(record["url"]))


def add_routes(app: web.Application) -> None:
    """Register the click redirect."""
    app.router.add_get("/c/{token}", follow)
