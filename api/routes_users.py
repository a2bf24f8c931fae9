"""Profile endpoints: read and patch a user's attributes and tags, with their recent actions."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api import keys
from api.bodies import object_with_fields, read_body
from api.event_wire import check_identifier, check_json_value
from api.middleware import requires
from beacon.errors import ValidationError
from cep.events import ProfilePatch
from cep.live_state import live_state
from cep.profiles import Profile, patch_profile
from cep.rule_index import RuleIndex
from cep.user_state import read_state

# How long PATCH waits for the partition owner to apply the change before answering 202.
PATCH_WAIT_S = 5.0

PATCH_FIELDS = ("attrs", "add_tags", "remove_tags")


def _user_id(request: web.Request) -> str:
    return check_identifier(request.match_info["user_id"], "user_id", "user_id")


def _profile_json(user_id: str, profile: Profile) -> dict[str, Any]:
    return {"user_id": user_id, "attrs": profile.attrs, "tags": sorted(profile.tags)}


def _tag_list(body: dict[str, Any], name: str) -> list[str]:
    tags = body.get(name, [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) and tag for tag in tags):
        raise ValidationError("must be a list of non-empty strings", path=name)
    return tags


@requires("events")
async def get_user(request: web.Request) -> web.Response:
    """A user's profile (empty for an unknown user) and live rule state: the "why didn't it fire?" view."""
    user_id = _user_id(request)
    state = await read_state(keys.redis(request), request.app[keys.SETTINGS].partitions, user_id)
    body = _profile_json(user_id, Profile(state.profile, frozenset(state.tags)))
    body["rules"] = live_state(state, RuleIndex(await keys.registry(request).refresh()))
    return web.json_response(body)


@requires("events")
async def patch_user(request: web.Request) -> web.Response:
    """Set or delete (null) attributes and add or remove tags, atomically and in order with the user's events.

    200 with the profile once the partition owner applied it; 202 if it is queued but not yet applied.
    """
    user_id = _user_id(request)
    body = await read_body(request)
    body = object_with_fields(body, PATCH_FIELDS)
    attrs = body.get("attrs", {})
    if not isinstance(attrs, dict):
        raise ValidationError("attrs must be an object", path="attrs")
    for name, value in attrs.items():
        if not name:
            raise ValidationError("attribute names must be non-empty", path="attrs")
        check_json_value(value, f"attrs.{name}")
    add_tags, remove_tags = _tag_list(body, "add_tags"), _tag_list(body, "remove_tags")
    redis, partitions = keys.redis(request), request.app[keys.SETTINGS].partitions
    patch = ProfilePatch(user_id, dict(attrs), tuple(add_tags), tuple(remove_tags))
    if not await patch_profile(redis, partitions, patch, PATCH_WAIT_S):
        return web.json_response({"user_id": user_id, "status": "queued"}, status=202)
    state = await read_state(redis, partitions, user_id)
    return web.json_response(_profile_json(user_id, Profile(state.profile, frozenset(state.tags))))


def add_routes(app: web.Application) -> None:
    """Register the profile endpoints."""
    app.router.add_get("/v1/users/{user_id}", get_user)
    app.router.add_patch("/v1/users/{user_id}", patch_user)
