"""The action ledger endpoint: what fired, for whom, and its delivery status."""

from __future__ import annotations

from aiohttp import web

from api import keys
from api.event_wire import check_identifier
from api.middleware import requires
from api.paging import query_limit
from cep.ledger import recent_actions, user_actions
from cep.user_state import read_state
from rules.secret_headers import redact_action


@requires("events")
async def list_actions(request: web.Request) -> web.Response:
    """`GET /v1/actions?user_id=&rule=&limit=`: newest first; a user's include those of the users merged into it."""
    limit = query_limit(request)
    rule = request.query.get("rule") or None
    user_id = request.query.get("user_id")
    redis = keys.redis(request)
    partitions = request.app[keys.SETTINGS].partitions
    if user_id is not None:
        check_identifier(user_id, "user_id", "user_id")
        # One person's ledger: a merge leaves each user's actions under its id, so the users merged into this
        # one are listed with it. A user merged away lists its own (its state is a tombstone, merged from none).
        merged_from = (await read_state(redis, partitions, user_id)).merged_from
        actions = await user_actions(redis, partitions, user_id, rule, limit, merged_from)
    else:
        actions = await recent_actions(redis, partitions, rule, limit)
    # A webhook's header values are its rule author's secrets, and `events` keys read the ledger.
    return web.json_response({"actions": [redact_action(action) for action in actions]})


def add_routes(app: web.Application) -> None:
    """Register the ledger endpoint."""
    app.router.add_get("/v1/actions", list_actions)
