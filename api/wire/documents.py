"""Wire shapes around stored documents: rulesets, journeys, segments, audiences and plans (the documents
themselves are described by `api.wire.languages`), their dry-runs, estimates and backfills."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from api.wire.common import Body, ListPage, Millis, Occurrence, Reply, StoredDocument, UserId, ValidDocument


class RulesetStored(Reply, kw_only=True):
    """A ruleset stored as a new version."""

    id: str
    version: int
    rules: int


class RulesetListed(Reply, kw_only=True):
    """An active ruleset, as listed."""

    id: str
    version: int
    description: str
    rules: int
    updated_ms: Millis
    owner: str | None


class Rulesets(ListPage, kw_only=True):
    """One page of the active rulesets, by id."""

    rulesets: list[RulesetListed]


class OwnedDocument(StoredDocument, kw_only=True):
    """A stored ruleset or journey with its owner (null: none)."""

    owner: str | None


class RulesetValid(ValidDocument, kw_only=True):
    """A ruleset that validated: its rule ids."""

    rules: list[str]


class Profile(Body, kw_only=True):
    """A simulated user's profile in a dry-run."""

    attrs: dict[str, Any] | UnsetType = UNSET
    tags: list[Annotated[str, msgspec.Meta(min_length=1)]] | UnsetType = UNSET


class DryRunBody(Body, kw_only=True):
    """Events (and profiles) to run the stored document, or the unsaved `document`, on a simulated clock."""

    events: Annotated[list[Any], msgspec.Meta(min_length=1, max_length=10_000, description="each an Event")]
    profiles: dict[UserId, Profile] | UnsetType | None = UNSET
    until: Annotated[int, msgspec.Meta(description="stop the simulated clock here (ms)")] | UnsetType | None = UNSET
    document: dict[str, Any] | UnsetType = UNSET


class RulesetDryRun(Reply, kw_only=True):
    """What a ruleset would fire on the events, and when."""

    ruleset_id: str
    version: int
    firings: list[dict[str, Any]]
    late: list[dict[str, Any]]
    pending_timers: list[dict[str, Any]]


class JourneyDryRun(Reply, kw_only=True):
    """A journey's simulated steps, per-node statistics, instances still waiting, and each user's trace."""

    journey_id: str
    version: int
    steps: list[dict[str, Any]]
    stats: dict[str, Any]
    waiting: list[dict[str, Any]]
    trace: dict[str, list[dict[str, Any]]]


class JourneyStored(Reply, kw_only=True):
    """A journey stored as a new version."""

    id: str
    version: int
    nodes: int


class JourneyListed(Reply, kw_only=True):
    """An active journey, as listed."""

    id: str
    version: int
    description: str
    nodes: int
    updated_ms: Millis
    owner: str | None


class Journeys(ListPage, kw_only=True):
    """One page of the active journeys, by id."""

    journeys: list[JourneyListed]


class JourneyValid(ValidDocument, kw_only=True):
    """A journey that validated: its node ids."""

    nodes: list[str]


class JourneyStats(Reply, kw_only=True):
    """Per version and node: entered, waiting, left by branch, exited, converted (`cep.journey_stats`)."""

    id: str
    version: int
    versions: dict[str, dict[str, Any]]


class SegmentStored(Reply, kw_only=True):
    """A segment stored as a new version."""

    id: str
    version: int


class SegmentListed(Reply, kw_only=True):
    """An active segment, as listed."""

    id: str
    version: int
    description: str
    size: int
    updated_ms: Millis


class Segments(ListPage, kw_only=True):
    """One page of the active segments, by id."""

    segments: list[SegmentListed]


class SegmentView(StoredDocument, kw_only=True):
    """A stored segment with its size now."""

    size: int


class SegmentValid(ValidDocument, kw_only=True):
    """A segment that validated."""


class SegmentEstimateBody(Body, kw_only=True):
    """Exactly one of `where` (a condition) or `segment` (a document), and the exact-count limit."""

    where: dict[str, Any] | UnsetType = UNSET
    segment: dict[str, Any] | UnsetType = UNSET
    exact_limit: Annotated[int, msgspec.Meta(ge=100, le=200_000)] | UnsetType = UNSET


class Estimate(Reply, kw_only=True):
    """A segment's size: exact up to `exact_limit` records, beyond that from a sample with a 95 % error bound."""

    estimate: int
    exact: bool
    population: int
    sampled: int
    error_bound: int | UnsetType = UNSET
    unreadable: int
    elapsed_ms: float


class BackfillBody(Body, kw_only=True):
    """Past events for a segment's behaviour history."""

    events: Annotated[list[Any], msgspec.Meta(min_length=1, max_length=10_000, description="each an Event")]


# A window bound: ms since the epoch, a UTC date (`from`: its start, `to`: its end) or an ISO 8601 time.
Moment = Annotated[
    Annotated[int, msgspec.Meta(ge=0, le=253_402_300_799_999)] | str,
    msgspec.Meta(description="ms since the epoch, a date YYYY-MM-DD (UTC, the whole day) or an ISO 8601 time"),
]


class ArchiveBackfillBody(Body, kw_only=True):
    """The event archive's events of the types the segment reads, in an event-time window (inclusive)."""

    source: Literal["archive"]
    from_: Moment | UnsetType = msgspec.field(default=UNSET, name="from")  # default: now less the longest window
    to: Moment | UnsetType = UNSET  # default: now


class BackfillError(Reply, kw_only=True):
    """One refused event of a backfill."""

    index: int
    path: str | None
    message: str


class Backfilled(Reply, kw_only=True):
    """Events appended (`accepted`). From a file: those ignored (by type: the segment does not read them) and
    refused. From the archive: the window and types read, rows read and skipped, and how long it took."""

    segment: str
    accepted: int
    ignored: dict[str, int] | UnsetType = UNSET
    errors: list[BackfillError] | UnsetType = UNSET
    error_count: int | UnsetType = UNSET
    source: Literal["archive"] | UnsetType = UNSET
    from_ms: Millis | UnsetType = UNSET
    to_ms: Millis | UnsetType = UNSET
    types: list[str] | UnsetType = UNSET
    read: int | UnsetType = UNSET
    skipped: Annotated[dict[str, int], msgspec.Meta(description="rows not fed, by reason")] | UnsetType = UNSET
    elapsed_ms: float | UnsetType = UNSET


AudienceKind = Literal["list", "expr"]


class AudienceBody(Body, kw_only=True):
    """A static list (`ids`) or an expression (`expr`) over `seg:<id>` and `aud:<id>`: exactly one."""

    id: str | UnsetType = UNSET
    ids: list[UserId] | UnsetType = UNSET
    expr: Any | UnsetType = UNSET


class AudienceStored(Reply, kw_only=True):
    """An audience replaced: its kind and size."""

    id: str
    kind: AudienceKind
    size: int


class AudienceListed(Reply, kw_only=True):
    """An audience, as listed."""

    id: str
    kind: AudienceKind
    size: int
    updated_ms: Millis


class Audiences(ListPage, kw_only=True):
    """One page of the audiences, by id."""

    audiences: list[AudienceListed]


class AudienceView(Reply, kw_only=True):
    """One audience: kind, expression (for `expr`), size now."""

    id: str
    kind: AudienceKind
    size: int
    expr: Any | UnsetType = UNSET
    created_ms: Millis
    updated_ms: Millis


PlanState = Literal["active", "paused", "cancelled"]


class PlanStored(Reply, kw_only=True):
    """A plan stored as a new version, and its next occurrence."""

    id: str
    version: int
    next_occurrence: Occurrence | None


class PlanValid(ValidDocument, kw_only=True):
    """A plan that validated, and its next occurrence."""

    next_occurrence: Occurrence | None


class PlanListed(Reply, kw_only=True):
    """A plan, as listed."""

    id: str
    version: int
    description: str
    state: PlanState
    next_occurrence: Occurrence | None
    updated_ms: Millis


class Plans(ListPage, kw_only=True):
    """One page of the plans, by id."""

    plans: list[PlanListed]


class PlanView(StoredDocument, kw_only=True):
    """A stored plan with its state and next occurrence."""

    state: PlanState
    next_occurrence: Occurrence | None


class PlanRun(Reply, kw_only=True):
    """One occurrence's run."""

    occurrence: str
    status: Literal["running", "done", "cancelled", "missed"]
    version: int
    start_ms: Millis
    opened_ms: Millis
    local: str | UnsetType = UNSET
    finished_ms: Millis | UnsetType = UNSET
    targeted: int
    sent: int
    entered: int
    blocked: dict[str, int]
    partitions_done: int


class PlanRuns(Reply, kw_only=True):
    """A plan's remembered occurrences, newest first."""

    id: str
    state: PlanState
    runs: list[PlanRun]


class PlanStateChanged(Reply, kw_only=True):
    """A plan paused, resumed or cancelled (and the runs that cancelling ended)."""

    id: str
    state: PlanState
    cancelled_runs: list[str]


class PlanEstimate(Reply, kw_only=True):
    """Each branch's size now, less the earlier branches' members."""

    id: str
    branches: list[int]
    total: int
