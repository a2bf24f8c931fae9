"""Dead-letter endpoints: list actions that exhausted their attempts, and replay them."""

from __future__ import annotations

import re

from aiohttp import web

from api import keys
from api.bodies import object_with_fields, read_body
from api.middleware import requires
from beacon.errors import ValidationError
from connectors.dead_letters import list_dead_letters, replay, rows_by_ids

MAX_LIMIT = 1000
MAX_REPLAY = 1000
REPLAY_FIELDS = ("ids", "all", "connector", "limit")
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # ASCII: `\d` takes any script's digits, Redis does not
_MAX_ID_PART = 2**64 - 1  # a stream id's parts are 64-bit: Redis refuses a larger one (a 503 said "retry")


def _is_entry_id(text: object) -> bool:
    return isinstance(text, str) and bool(_ENTRY_ID.fullmatch(text)) and max(map(int, text.split("-"))) <= _MAX_ID_PART


def _limit(text: str, path: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise ValidationError(f"must be an integer from 1 to {MAX_LIMIT}", path=path)
    return int(text)


@requires("admin")
async def list_letters(request: web.Request) -> web.Response:
    """`GET /v1/dead-letters?connector=&limit=`: newest first, each with its ledger record."""
    limit = _limit(request.query.get("limit", "100"), "limit")
    rows = await list_dead_letters(
        keys.redis(request), request.app[keys.SETTINGS].partitions, limit, request.query.get("connector") or None
    )
    return web.json_response({"dead_letters": rows})


@requires("admin")
async def replay_letters(request: web.Request) -> web.Response:
    """`POST /v1/dead-letters:replay` with `{"ids": [...]}` or `{"all": true, "connector"?, "limit"?}`."""
    # read_body, not request.json(): a 10,000-deep array was a RecursionError (500), NaN was accepted.
    body = await read_body(request)
    if not isinstance(body, dict):
        raise ValidationError("must be an object", path="body")
    # A misspelt field ("connectors") was ignored: the replay then covered every connector's dead letters.
    object_with_fields(body, REPLAY_FIELDS)
    if not isinstance(body.get("all", False), bool):
        raise ValidationError("must be true or false", path="all")
    connector = body.get("connector")
    if connector is not None and not isinstance(connector, str):
        raise ValidationError("must be a string", path="connector")
    limit = body.get("limit", MAX_REPLAY)
    if type(limit) is not int or not 1 <= limit <= MAX_REPLAY:  # "5" and 5.0 were read as 5
        raise ValidationError(f"must be an integer from 1 to {MAX_REPLAY}", path="limit")
    redis = keys.redis(request)
    ids, replay_all = body.get("ids"), body.get("all")
    if ids is not None:
        if not isinstance(ids, list) or not all(_is_entry_id(i) for i in ids) or len(ids) > MAX_REPLAY:
            raise ValidationError(f"must be a list of at most {MAX_REPLAY} dead-letter ids", path="ids")
        rows = await rows_by_ids(redis, ids)
        unknown = sorted(set(ids) - {row["id"] for row in rows})
    elif replay_all is True:
        rows = await list_dead_letters(redis, request.app[keys.SETTINGS].partitions, limit, connector)
        unknown = []
    else:
        raise ValidationError('give "ids": [...] or "all": true', path="body")
    result = await replay(redis, request.app[keys.CLOCK], request.app[keys.SETTINGS].partitions, rows)
    return web.json_response({**result, "unknown": unknown})


def add_routes(app: web.Application) -> None:
    """Register the dead-letter endpoints."""
    app.router.add_get("/v1/dead-letters", list_letters)
    app.router.add_post("/v1/dead-letters:replay", replay_letters)
