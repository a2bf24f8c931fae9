"""Wire shapes of events in: ingest (HTTP and WebSocket frames), identities, item fan-outs and item indexes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from api.wire.common import Body, ErrorDetail, Reply, UserId

EventType = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$", description="an event type")]
EventTs = Annotated[
    int,
    msgspec.Meta(ge=946_684_800_000, le=4_102_444_800_000, description="event time, ms since the epoch (2000 to 2100)"),
]
AliasType = Literal["openid", "unionid", "phone", "member_id"]
Attrs = Annotated[dict[str, Any], msgspec.Meta(max_length=64, description="JSON values, 4 levels deep at most")]


class Alias(Body, kw_only=True):
    """Another id of a user (an app's openid, a phone number, ...)."""

    type: AliasType
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f{}]+$")]


class Event(Body, kw_only=True):
    """One event: its user by `user_id` or (ingest only) by `alias`; `ts` defaults to now, `event_id` to a new id."""

    type: EventType
    user_id: UserId | UnsetType = UNSET
    alias: Alias | UnsetType = UNSET
    ts: EventTs | UnsetType = UNSET
    event_id: UserId | UnsetType = UNSET
    attrs: Attrs | UnsetType | None = UNSET


class EventsBatch(Body, kw_only=True):
    """A batch of events (at most BEACON_MAX_BATCH_EVENTS)."""

    events: Annotated[list[Any], msgspec.Meta(min_length=1, description="each an Event, judged one by one")]


class ItemError(Reply, kw_only=True):
    """One refused item of a batch: its index, why, and the path inside the request."""

    index: int
    code: str
    message: str
    path: str | None


class Accepted(Reply, kw_only=True):
    """The events appended (their ids, in order) and the refused ones."""

    accepted: list[str]
    errors: list[ItemError]


class EventsRefused(Reply, kw_only=True):
    """422: the error (for a batch: every event was refused, with each one's error listed)."""

    error: ErrorDetail
    accepted: list[str] | UnsetType = UNSET
    errors: list[ItemError] | UnsetType = UNSET


class IngestFrame(Body, kw_only=True):
    """A WebSocket ingest frame (JSON text or msgpack binary): a sequence number and a batch."""

    seq: int
    events: list[Any]


class FrameAck(Reply, kw_only=True):
    """The reply to a frame: `ack` is its `seq`; a refused frame carries `error` instead of the lists."""

    ack: int | None
    accepted: list[str] | UnsetType = UNSET
    errors: list[ItemError] | UnsetType = UNSET
    error: ErrorDetail | UnsetType = UNSET


class IdentitiesBody(Body, kw_only=True):
    """Link aliases to a user."""

    user_id: UserId
    aliases: Annotated[list[Alias], msgspec.Meta(min_length=1, max_length=32)]


class Merge(Reply, kw_only=True):
    """A user merged into another."""

    from_: str = msgspec.field(name="from")
    into: str


class Linked(Reply, kw_only=True):
    """Which aliases were linked (or already were), the merges decided, and whether they were applied yet."""

    user_id: str
    linked: list[str]
    already: list[str]
    merged: list[Merge]
    aliases: list[str]
    status: Literal["linked", "merged", "queued"]


class AliasOwner(Reply, kw_only=True):
    """The user an alias names, and the user that one was merged into in the end (`head`)."""

    alias: str
    user_id: str
    head: str


class EventNamed(Body, kw_only=True):
    """`{"event": "<type>"}`."""

    event: str


class ItemAudience(Body, kw_only=True):
    """Who gets an item's event: users who `did` one event (and not `did_not` another) `within` a duration."""

    did: EventNamed
    did_not: EventNamed | UnsetType = UNSET
    within: Annotated[str, msgspec.Meta(description='a duration like "30d", up to the index window')]


class ItemEventBody(Body, kw_only=True):
    """An item's event fanned out to the users an item index names."""

    type: EventType
    item: Annotated[dict[str, str | int], msgspec.Meta(min_length=1, max_length=1, description="one attribute")]
    users: ItemAudience
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | UnsetType = UNSET
    attrs: dict[str, Any] | UnsetType | None = UNSET
    ts: EventTs | UnsetType = UNSET


class ItemFanout(Reply, kw_only=True):
    """How many users got the item's event."""

    id: str
    type: str
    item: dict[str, Any]
    users: int
    elapsed_ms: int


class ItemIndexBody(Body, kw_only=True):
    """Index events of these types by the attribute, for `window`."""

    events: Annotated[list[EventType], msgspec.Meta(min_length=1)]
    window: Annotated[str, msgspec.Meta(description='a duration like "30d"')]
    attr: str | UnsetType = UNSET


class ItemIndexStored(Reply, kw_only=True):
    """An item index as stored."""

    attr: str
    version: int
    events: list[str]
    window_ms: int


class ItemIndexListed(Reply, kw_only=True):
    """A declared index, as listed."""

    attr: str
    version: int
    events: list[str]
    window: str


class ItemIndexes(Reply, kw_only=True):
    """Every declared item index."""

    indexes: list[ItemIndexListed]


class ItemIndexDeleted(Reply, kw_only=True):
    """An index dropped."""

    attr: str
    deleted: bool
