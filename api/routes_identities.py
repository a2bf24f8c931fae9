"""Identity endpoints: link aliases to a user (merging users an alias already named), and look an alias up.

`POST /v1/identities` with `{"user_id": "m-1042", "aliases": [{"type": "phone", "id": "13800000000"}]}`
links each alias atomically (`cep.identities`); an alias that names another user merges that user into
`user_id`, through the partitions' streams (`cep.merges`). The reply waits up to 5 s for the merges to
be applied (200, `"status": "merged"` or `"linked"`), else answers 202 (`"status": "queued"`): they will be.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from api import keys
from api.bodies import object_with_fields, read_body
from api.event_wire import MAX_ALIAS_ID, check_identifier, parse_alias
from api.middleware import requires
from beacon import metrics
from beacon.errors import NotFoundError, ValidationError
from cep import identities, streams
from cep.identities import ALIAS_TYPES, Alias, LinkResult
from cep.merge_items import MergeOut, merge_id
from cep.user_record import event_id_hash
from cep.user_state import read_state

LINK_FIELDS = ("user_id", "aliases")
MAX_ALIASES = 32  # per request
MERGE_WAIT_S = 5.0
POLL_S = 0.01


def _aliases(body: dict[str, Any]) -> list[Alias]:
    if "aliases" not in body:
        raise ValidationError("is required", path="aliases")
    raw = body["aliases"]
    if not isinstance(raw, list) or not raw:
        raise ValidationError('aliases must be a non-empty list of {"type", "id"}', path="aliases")
    if len(raw) > MAX_ALIASES:
        raise ValidationError(f"more than {MAX_ALIASES} aliases in one request", path="aliases")
    return [parse_alias(item, f"aliases[{index}]") for index, item in enumerate(raw)]


@requires("events")
async def post_identities(request: web.Request) -> web.Response:
    """Link aliases to a user; merge the users they named before into it."""
    body = object_with_fields(await read_body(request), LINK_FIELDS)
    if "user_id" not in body:
        raise ValidationError("is required", path="user_id")
    user_id = check_identifier(body["user_id"], "user_id", "user_id")
    aliases = _aliases(body)
    redis, partitions = keys.redis(request), request.app[keys.SETTINGS].partitions
    result = await identities.link(redis, partitions, user_id, aliases)
    if result.merges:
        merges = [MergeOut(merge.source, merge.target) for merge in result.merges]
        await streams.append_merges(redis, merges, partitions, keys.services(request).ack_fsync_ms)
        metrics.on_identity("decided", len(merges))
    if result.sources:
        await identities.move_aliases(redis, partitions, result.user_id, result.sources, result.moving)
    metrics.on_aliases("linked", len(result.linked))
    applied = await _merged(request, result)
    body = {
        "user_id": result.user_id,
        "linked": [alias.name for alias in result.linked],
        "already": [alias.name for alias in result.already],
        "merged": [{"from": merge.source, "into": merge.target} for merge in result.merges],
        "aliases": [alias.name for alias in await identities.aliases_of(redis, partitions, result.user_id)],
        "status": ("merged" if result.merges else "linked") if applied else "queued",
    }
    return web.json_response(body, status=200 if applied else 202)


async def _merged(request: web.Request, result: LinkResult) -> bool:
    """Whether the merges into the user have been applied by its partition owner, waiting up to MERGE_WAIT_S."""
    waiting = {event_id_hash(merge_id(m.source)) for m in result.merges if m.target == result.user_id}
    if not waiting:
        return True
    redis, partitions = keys.redis(request), request.app[keys.SETTINGS].partitions
    deadline = time.monotonic() + MERGE_WAIT_S
    while True:
        state = await read_state(redis, partitions, result.user_id)
        if waiting <= state.seen.keys():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_S)


@requires("events")
async def get_alias(request: web.Request) -> web.Response:
    """The user an alias names (`user_id`), and the user that one was merged into in the end (`head`)."""
    kind = request.match_info["type"]
    if kind not in ALIAS_TYPES:
        raise ValidationError(f"type must be one of: {', '.join(ALIAS_TYPES)}", path="type")
    alias = Alias(kind, check_identifier(request.match_info["id"], "id", "an alias id", MAX_ALIAS_ID))
    redis = keys.redis(request)
    owner = await identities.lookup(redis, request.app[keys.SETTINGS].partitions, alias)
    if owner is None:
        raise NotFoundError(f"no user has the alias {alias.name!r}", path="id")
    return web.json_response({"alias": alias.name, "user_id": owner, "head": await identities.head_of(redis, owner)})


def add_routes(app: web.Application) -> None:
    """Register the identity endpoints."""
    app.router.add_post("/v1/identities", post_identities)
    app.router.add_get("/v1/identities/{type}/{id}", get_alias)
