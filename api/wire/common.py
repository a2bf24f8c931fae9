"""Wire shapes every area shares: the error reply, ids, stored-document replies, deletions, list and member pages."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

# The id rule of rulesets, journeys, segments, audiences and plans (`api.routes_rulesets.ID_PATTERN`).
DocumentId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", description="a document id")]
# A user id (`api.event_wire.check_identifier`): no braces (the Redis Cluster hash tag), no control characters.
UserId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f{}]+$", description="a user id")
]
Millis = Annotated[int, msgspec.Meta(description="ms since the epoch")]


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: a field the handler does not know is refused there too."""


class Reply(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of replies: a field the handler sends that the model lacks fails the tests' wire check."""


class Query(msgspec.Struct, kw_only=True):
    """Base of query-string models: values arrive as strings and are converted to the field types."""


class ErrorItem(Reply, kw_only=True):
    """One problem of a document that has several (a ruleset, journey, segment or plan)."""

    path: str | None
    message: str


class ErrorDetail(Reply, kw_only=True):
    """What went wrong: a machine-readable code, a sentence, and the JSON path (or parameter) at fault."""

    code: str
    message: str
    path: str | None
    errors: list[ErrorItem] | UnsetType = UNSET  # every problem of a document (the first is `message`)
    line: int | UnsetType = UNSET  # the line of an x-ndjson body at fault


class Error(Reply, kw_only=True):
    """Every 4xx and 5xx reply: `{"error": {"code", "message", "path"}}`."""

    error: ErrorDetail


class Deleted(Reply, kw_only=True):
    """A deletion done."""

    id: str
    deleted: bool


class StoredDocument(Reply, kw_only=True):
    """A stored document's active (or `?version=N`) version, its kept versions; webhook header values masked."""

    id: str
    version: int
    document: dict[str, Any]
    updated_ms: Millis
    versions: list[int]


class MembersPage(Reply, kw_only=True):
    """One page of members; `cursor` is empty when there are no more."""

    members: list[str]
    cursor: str


class VersionQuery(Query, kw_only=True):
    """`?version=N`: a kept version instead of the active one."""

    version: Annotated[int, msgspec.Meta(ge=1)] | UnsetType = UNSET


class PageQuery(Query, kw_only=True):
    """`?cursor=` from the previous page (none to start) and `?limit=` (a hint)."""

    cursor: str | UnsetType = UNSET
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] | UnsetType = UNSET


# A document list's cursor (`api.paging`): the id its previous page ended on, or empty for the first page.
ListCursor = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^([A-Za-z0-9][A-Za-z0-9_.\-]{0,63})?$",
        description="the previous page's `next` (none: the first page)",
    ),
]
ListLimit = Annotated[int, msgspec.Meta(ge=1, le=1000, description="documents on the page (default 100)")]


class ListQuery(Query, kw_only=True):
    """A page of a document list (`api.paging`): ids after `after`, in id order, containing `q` (any case)."""

    limit: ListLimit | UnsetType = UNSET
    after: ListCursor | UnsetType = UNSET
    q: Annotated[str, msgspec.Meta(description="only the ids that contain this, in any case")] | UnsetType = UNSET


class ListPage(Reply, kw_only=True):
    """What a page of a document list carries besides its items."""

    next: Annotated[str | None, msgspec.Meta(description="`after` for the following page; null on the last")]
    total: Annotated[int, msgspec.Meta(ge=0, description="documents matching `q`, on every page")]


class Occurrence(Reply, kw_only=True):
    """A plan's occurrence: its id and start; `local` for a plan at each user's local time."""

    id: str
    start_ms: Millis
    local: str | UnsetType = UNSET


class ValidDocument(Reply, kw_only=True):
    """A document that validated (nothing stored)."""

    valid: bool
    id: str
