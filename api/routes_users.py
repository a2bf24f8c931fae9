"""Profile endpoints: read and patch a user's attributes and tags, with their aliases, identity merges and trace."""

from __future__ import annotations

from typing import Any

import msgpack
from aiohttp import web

from api import keys
from api.bodies import object_with_fields, read_body
from api.event_wire import check_identifier, check_json_value
from api.middleware import requires
from api.paging import query_limit
from beacon.errors import ValidationError
from cep import identities
from cep.events import ProfilePatch
from cep.ledger import action_outcomes
from cep.live_state import journey_state, live_state, segment_state
from cep.profiles import Profile, patch_profile
from cep.rule_index import RuleIndex
from cep.trace import read_trace
from cep.user_record import UserState
from cep.user_state import read_state

# How long PATCH waits for the partition owner to apply the change before answering 202.
PATCH_WAIT_S = 5.0

PATCH_FIELDS = ("attrs", "add_tags", "remove_tags")
# A profile is read on every event of its user and rewritten with each change: it stays small.
MAX_PROFILE_ATTRS = 256
MAX_TAGS = 256
MAX_NAME_CHARS = 64
MAX_PATCH_BYTES = 64 * 1024  # the attributes of one PATCH, msgpack-encoded


def _user_id(request: web.Request) -> str:
    return check_identifier(request.match_info["user_id"], "user_id", "user_id")


def _profile_json(user_id: str, profile: Profile) -> dict[str, Any]:
    return {"user_id": user_id, "attrs": profile.attrs, "tags": sorted(profile.tags)}


def _tag_list(body: dict[str, Any], name: str) -> list[str]:
    tags = body.get(name, [])
    if not isinstance(tags, list):
        raise ValidationError("must be a list of tags", path=name)
    if len(tags) > MAX_TAGS:
        raise ValidationError(f"more than {MAX_TAGS} tags", path=name)
    for index, tag in enumerate(tags):
        check_identifier(tag, f"{name}[{index}]", "a tag", MAX_NAME_CHARS)
    return tags


def _check_size(state: UserState, attrs: dict[str, Any], add_tags: list[str], remove_tags: list[str]) -> None:
    """Refuse a patch that would take the profile past its bounds (checked against the stored profile)."""
    names = set(state.profile)
    names.update(name for name, value in attrs.items() if value is not None)
    names.difference_update(name for name, value in attrs.items() if value is None)
    if len(names) > MAX_PROFILE_ATTRS:
        raise ValidationError(f"the profile would hold more than {MAX_PROFILE_ATTRS} attributes", path="attrs")
    if len((state.tags | set(add_tags)) - set(remove_tags)) > MAX_TAGS:
        raise ValidationError(f"the profile would hold more than {MAX_TAGS} tags", path="add_tags")


@requires("events")
async def get_user(request: web.Request) -> web.Response:
    """A user's profile (empty for an unknown user) and live rule state: the "why didn't it fire?" view."""
    user_id = _user_id(request)
    state = await read_state(keys.redis(request), request.app[keys.SETTINGS].partitions, user_id)
    body = _profile_json(user_id, Profile(state.profile, frozenset(state.tags)))
    registry = keys.registry(request)
    index = RuleIndex(await registry.refresh(), registry.journeys(), registry.segments())
    body["rules"] = live_state(state, index)
    body["journeys"] = journey_state(state, index)
    body["segments"] = segment_state(state, index)
    redis, partitions = keys.redis(request), request.app[keys.SETTINGS].partitions
    body["aliases"] = [alias.name for alias in await identities.aliases_of(redis, partitions, user_id)]
    if state.merged_into:
        # A tombstone: everything the user had went to `merged_into`, and its events follow.
        body["merged_into"] = state.merged_into
        body["merged_at"] = state.merged_at
    if state.merged_from:
        body["merged_from"] = state.merged_from
    return web.json_response(body)


@requires("events")
async def patch_user(request: web.Request) -> web.Response:
    """Set or delete (null) attributes and add or remove tags, atomically and in order with the user's events.

    200 with the profile once the partition owner applied it; 202 if it is queued but not yet applied, or was
    forwarded to the user this one was merged into.
    """
    user_id = _user_id(request)
    body = await read_body(request)
    body = object_with_fields(body, PATCH_FIELDS)
    attrs = body.get("attrs", {})
    if not isinstance(attrs, dict):
        raise ValidationError("attrs must be an object", path="attrs")
    if len(attrs) > MAX_PROFILE_ATTRS:
        raise ValidationError(f"more than {MAX_PROFILE_ATTRS} attributes", path="attrs")
    for name, value in attrs.items():
        check_identifier(name, "attrs", "an attribute name", MAX_NAME_CHARS)
        check_json_value(value, f"attrs.{name}")
    if len(msgpack.packb(attrs, use_bin_type=True)) > MAX_PATCH_BYTES:
        raise ValidationError(f"attributes larger than {MAX_PATCH_BYTES} bytes encoded", path="attrs")
    add_tags, remove_tags = _tag_list(body, "add_tags"), _tag_list(body, "remove_tags")
    redis, partitions = keys.redis(request), request.app[keys.SETTINGS].partitions
    _check_size(await read_state(redis, partitions, user_id), attrs, add_tags, remove_tags)
    patch = ProfilePatch(user_id, dict(attrs), tuple(add_tags), tuple(remove_tags))
    if not await patch_profile(redis, partitions, patch, PATCH_WAIT_S):
        return web.json_response({"user_id": user_id, "status": "queued"}, status=202)
    state = await read_state(redis, partitions, user_id)
    if state.merged_into:
        # The user was merged away: its owner handed the patch on to the user it went into (cep.merges).
        body = {"user_id": user_id, "status": "forwarded", "merged_into": state.merged_into}
        return web.json_response(body, status=202)
    return web.json_response(_profile_json(user_id, Profile(state.profile, frozenset(state.tags))))


@requires("events")
async def get_trace(request: web.Request) -> web.Response:
    """Every evaluation of rules and journeys for the user, newest first (`?limit=`, default 100), with
    each action's delivery outcome: the "why didn't they get the message?" answer."""
    user_id = _user_id(request)
    limit = query_limit(request, default=100, maximum=10_000)
    redis, partitions = keys.redis(request), request.app[keys.SETTINGS].partitions
    entries = await read_trace(redis, partitions, user_id, limit)
    merged_from = (await read_state(redis, partitions, user_id)).merged_from
    if merged_from:
        # One history: the traces of the users merged into this one, each entry naming its user, by time.
        for other in merged_from:
            entries.extend({**entry, "user_id": other} for entry in await read_trace(redis, partitions, other, limit))
        entries = sorted(entries, key=lambda entry: entry["at"], reverse=True)[:limit]
    wanted: dict[str, set[str]] = {}  # by the user whose ledger holds them
    for entry in entries:
        wanted.setdefault(entry.get("user_id", user_id), set()).update(entry.get("actions", ()))
    outcomes: dict[str, Any] = {}
    for owner, action_ids in wanted.items():
        if action_ids:
            outcomes.update(await action_outcomes(redis, partitions, owner, sorted(action_ids)))
    for entry in entries:
        if "actions" in entry:
            entry["actions"] = [{"action_id": a, **outcomes.get(a, {"status": "unknown"})} for a in entry["actions"]]
    return web.json_response(
        {"user_id": user_id, "trace": entries, "tracing": request.app[keys.SETTINGS].trace_depth > 0}
    )


def add_routes(app: web.Application) -> None:
    """Register the profile endpoints."""
    app.router.add_get("/v1/users/{user_id}", get_user)
    app.router.add_get("/v1/users/{user_id}/trace", get_trace)
    app.router.add_patch("/v1/users/{user_id}", patch_user)
