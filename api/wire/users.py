"""Wire shapes of users (profile, live state, trace), the action ledger and dead letters."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from api.wire.common import Body, Millis, Query, Reply, UserId

Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f{}]+$")]


class ProfilePatch(Body, kw_only=True):
    """Attributes to set (null deletes one) and tags to add or remove, applied in order with the user's events."""

    attrs: Annotated[dict[str, Any], msgspec.Meta(max_length=256)] | UnsetType = UNSET
    add_tags: Annotated[list[Tag], msgspec.Meta(max_length=256)] | UnsetType = UNSET
    remove_tags: Annotated[list[Tag], msgspec.Meta(max_length=256)] | UnsetType = UNSET


class ProfileView(Reply, kw_only=True):
    """A user's profile as applied."""

    user_id: str
    attrs: dict[str, Any]
    tags: list[str]


class PatchPending(Reply, kw_only=True):
    """202: the patch is queued, or was forwarded to the user this one was merged into."""

    user_id: str
    status: Literal["queued", "forwarded"]
    merged_into: str | UnsetType = UNSET


class UserView(Reply, kw_only=True):
    """A user's profile, aliases, identity merges and live state of rules, journeys and segments."""

    user_id: str
    attrs: dict[str, Any]
    tags: list[str]
    rules: dict[str, Any]
    journeys: dict[str, Any]
    segments: dict[str, Any]
    aliases: list[str]
    merged_into: str | UnsetType = UNSET
    merged_at: Millis | UnsetType = UNSET
    merged_from: list[str] | UnsetType = UNSET


class TraceQuery(Query, kw_only=True):
    """`?limit=`: entries, newest first (default 100)."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | UnsetType = UNSET


class Trace(Reply, kw_only=True):
    """Every evaluation for the user, newest first, each action with its delivery outcome."""

    user_id: str
    trace: list[dict[str, Any]]
    tracing: bool


class ActionsQuery(Query, kw_only=True):
    """Filters of the ledger: one user's (with the users merged into it), one rule's; newest first."""

    user_id: UserId | UnsetType = UNSET
    rule: str | UnsetType = UNSET
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] | UnsetType = UNSET


class Actions(Reply, kw_only=True):
    """Actions with their delivery status (webhook header values masked)."""

    actions: list[dict[str, Any]]


class DeadLettersQuery(Query, kw_only=True):
    """One connector's dead letters, newest first."""

    connector: str | UnsetType = UNSET
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] | UnsetType = UNSET


class DeadLetters(Reply, kw_only=True):
    """Actions whose delivery gave up, each with its ledger record."""

    dead_letters: list[dict[str, Any]]


DeadLetterId = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$")]


class ReplayBody(Body, kw_only=True):
    """Dead letters to redeliver: by `ids`, or `all` (optionally one connector's, at most `limit`)."""

    ids: Annotated[list[DeadLetterId], msgspec.Meta(max_length=1000)] | UnsetType | None = UNSET
    all: bool | UnsetType = UNSET
    connector: str | UnsetType | None = UNSET
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] | UnsetType = UNSET


class Refusal(Reply, kw_only=True):
    """A dead letter not replayed: no longer dead, or changed meanwhile."""

    action_id: str
    reason: Literal["not_dead", "changed"]


class Replayed(Reply, kw_only=True):
    """The actions made pending again, those refused, and the ids that named no dead letter."""

    replayed: list[str]
    refused: list[Refusal]
    unknown: list[str]


class Health(Reply, kw_only=True):
    """`ok`, or `unavailable` with the problems."""

    status: Literal["ok", "unavailable"]
    problems: list[str]
