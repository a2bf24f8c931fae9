"""Profile endpoints: read and patch a user's attributes and tags, with their recent actions."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api import keys
from api.bodies import object_with_fields, read_body
from api.event_wire import check_identifier, check_json_value
from api.middleware import requires
from beacon.errors import ValidationError
from cep.live_state import live_state
from cep.profiles import Profile, get_profile, patch_profile

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
    redis = keys.redis(request)
    body = _profile_json(user_id, await get_profile(redis, user_id))
    body["rules"] = await live_state(redis, user_id)
    return web.json_response(body)


@requires("events")
async def patch_user(request: web.Request) -> web.Response:
    """Set or delete (null) attributes and add or remove tags, atomically."""
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
    profile = await patch_profile(keys.redis(request), user_id, attrs, add_tags, remove_tags)
    return web.json_response(_profile_json(user_id, profile))


def add_routes(app: web.Application) -> None:
    """Register the profile endpoints."""
    app.router.add_get("/v1/users/{user_id}", get_user)
    app.router.add_patch("/v1/users/{user_id}", patch_user)
