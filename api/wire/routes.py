"""The route table: for every route the app serves, its scope, summary, request (body, query) and reply models,
and the error statuses it answers. `api.openapi` builds the OpenAPI document from it; the tests' servers check
each request a handler accepted and each reply it sent against it (`tests/wire_check.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from api.wire import common, documents, events, reports, users

JSON = "application/json"
MSGPACK = "application/msgpack"
NDJSON = "application/x-ndjson"
CSV = "text/csv"
HTML = "text/html"
TEXT = "text/plain"
# A body type is a model (a msgspec Struct), a language name (its JSON Schema: `api.wire.languages`), or a
# media type whose body is free text (CSV and NDJSON lines).
BodyType = type | str


@dataclass(frozen=True, slots=True)
class Route:
    """One method on one path."""

    method: str
    path: str  # OpenAPI spelling: `{id}`, no regex
    summary: str
    scope: str | None  # the API key scope it needs; None: open
    body: tuple[BodyType, ...] = ()  # accepted shapes (JSON or msgpack), any one of them
    body_media: tuple[str, ...] = (JSON, MSGPACK)
    text_media: tuple[str, ...] = ()  # other media types the body may take (CSV, NDJSON)
    query: type[common.Query] | None = None
    replies: dict[int, type | None] = field(default_factory=dict)  # status -> model (None: not JSON)
    reply_media: str = JSON
    reply_text: tuple[str, ...] = ()  # other media types a 2xx may come in, as text (a report as CSV)
    errors: tuple[int, ...] = ()  # besides those `statuses()` adds
    error_models: dict[int, type] = field(default_factory=dict)  # an error reply with its own shape
    description: str = ""

    def statuses(self) -> tuple[int, ...]:
        """Every error status the route may answer: its own, plus those of auth, bodies and Redis."""
        found = set(self.errors)
        if self.scope is not None:
            found |= {401, 403}
        if self.body or self.text_media:
            found |= {400, 413, 422}
        if self.query is not None or "{" in self.path:
            found.add(422)
        return tuple(sorted(found))


_DOC = (404, 503)  # a route reading a stored document
_STORE = (503,)


def _document_routes(kind: str, plural: str, language: str, extra: dict[str, Any]) -> list[Route]:
    """PUT, GET, DELETE, list and validate of one kind of stored document."""
    base = f"/v1/{plural}"
    return [
        Route("get", base, f"List active {plural}", "rules", replies={200: extra["listed"]}, errors=_STORE),
        Route(
            "post",
            f"{base}:validate",
            f"Validate a {kind} without storing it",
            "rules",
            body=(language,),
            replies={200: extra["valid"]},
            errors=extra.get("validate_errors", _STORE),
        ),
        Route(
            "put",
            f"{base}/{{id}}",
            f"Store a new version of a {kind}",
            "rules",
            body=(language,),
            replies={200: extra["stored"]},
            errors=extra.get("put_errors", (403, 503)),
            description=extra.get("put_description", ""),
        ),
        Route(
            "get",
            f"{base}/{{id}}",
            f"A {kind}'s active (or ?version=N) document, its kept versions",
            "rules",
            query=common.VersionQuery,
            replies={200: extra["view"]},
            errors=_DOC,
        ),
        Route(
            "delete",
            f"{base}/{{id}}",
            extra.get("delete_summary", f"Delete a {kind}"),
            "rules",
            replies={200: common.Deleted},
            errors=extra.get("delete_errors", (403, 404, 503)),
        ),
    ]


ROUTES: tuple[Route, ...] = (
    Route(
        "post",
        "/v1/events",
        "Ingest one event or a batch",
        "events",
        body=(events.Event, events.EventsBatch),
        replies={200: events.Accepted},
        errors=(503,),
        error_models={422: events.EventsRefused},
        description="200 with the accepted ids and each refused item's error; 422 when nothing was acceptable.",
    ),
    Route(
        "get",
        "/v1/ingest",
        "WebSocket ingest: frames {seq, events}, replies {ack, accepted, errors}",
        "events",
        replies={101: None},
        errors=(503,),
        description=(
            "Upgrade to a WebSocket. Binary frames are msgpack, text frames JSON: each an IngestFrame, each"
            " answered by a FrameAck. See docs/ingest.md."
        ),
    ),
    *_document_routes(
        "ruleset",
        "rulesets",
        "ruleset",
        {
            "listed": documents.Rulesets,
            "valid": documents.RulesetValid,
            "stored": documents.RulesetStored,
            "view": documents.OwnedDocument,
        },
    ),
    Route(
        "post",
        "/v1/rulesets/{id}:dry-run",
        "Run a ruleset (stored, or the unsaved `document`) on events with a simulated clock",
        "rules",
        body=(documents.DryRunBody,),
        replies={200: documents.RulesetDryRun},
        errors=_DOC,
    ),
    *_document_routes(
        "journey",
        "journeys",
        "journey",
        {
            "listed": documents.Journeys,
            "valid": documents.JourneyValid,
            "stored": documents.JourneyStored,
            "view": documents.OwnedDocument,
            "put_description": "Running instances stay on their version.",
            "delete_summary": "Delete a journey and cancel its instances",
        },
    ),
    Route(
        "post",
        "/v1/journeys/{id}:dry-run",
        "Run a journey (stored, or the unsaved `document`) on events with a simulated clock",
        "rules",
        body=(documents.DryRunBody,),
        replies={200: documents.JourneyDryRun},
        errors=_DOC,
    ),
    Route(
        "get",
        "/v1/journeys/{id}/stats",
        "Per version and node: entered, waiting, left by branch, exited, converted",
        "rules",
        replies={200: documents.JourneyStats},
        errors=_DOC,
    ),
    *_document_routes(
        "segment",
        "segments",
        "segment",
        {
            "listed": documents.Segments,
            "valid": documents.SegmentValid,
            "stored": documents.SegmentStored,
            "view": documents.SegmentView,
            "put_errors": _STORE,
            "delete_errors": _DOC,
            "delete_summary": "Delete a segment and its members",
        },
    ),
    Route(
        "post",
        "/v1/segments:estimate",
        "Size an unsaved segment definition over the stored users",
        "rules",
        body=(documents.SegmentEstimateBody,),
        replies={200: documents.Estimate},
        errors=_STORE,
        description=(
            "Exact up to exact_limit user records, beyond that from a hash sample with a 95 % error bound."
            " Behaviour conditions see only the history the engine keeps. See docs/audiences.md."
        ),
    ),
    Route(
        "get",
        "/v1/segments/{id}/members",
        "One page of a segment's members (cursor empty when done)",
        "rules",
        query=common.PageQuery,
        replies={200: common.MembersPage},
        errors=_DOC,
    ),
    Route(
        "post",
        "/v1/segments/{id}:backfill",
        "Feed past events (up to 10,000) to the segment's behaviour history, silently",
        "rules",
        body=(documents.BackfillBody,),
        replies={200: documents.Backfilled},
        errors=_DOC,
    ),
    Route(
        "get",
        "/v1/audiences",
        "List audiences with their kind and size",
        "rules",
        replies={200: documents.Audiences},
        errors=_STORE,
    ),
    Route(
        "put",
        "/v1/audiences/{id}",
        "Replace an audience: a static list or an expression",
        "rules",
        body=(documents.AudienceBody,),
        text_media=(CSV, NDJSON),
        replies={200: documents.AudienceStored},
        errors=(415, 503),
        description=(
            'application/json {"ids": [...]} or {"expr": ...}; text/csv (one id per line, optional header user_id)'
            ' or application/x-ndjson ({"user_id": ...} per line), streamed. Expressions: union, intersect,'
            ' exclude {from, minus}, sample {of, percent} over "seg:<id>" / "aud:<id>". See docs/audiences.md.'
        ),
    ),
    Route(
        "get",
        "/v1/audiences/{id}",
        "An audience: kind, expression (if one), size now",
        "rules",
        replies={200: documents.AudienceView},
        errors=_DOC,
    ),
    Route(
        "delete",
        "/v1/audiences/{id}",
        "Delete an audience (refused while an expression refers to it)",
        "rules",
        replies={200: common.Deleted},
        errors=(404, 409, 503),
    ),
    Route(
        "get",
        "/v1/audiences/{id}/members",
        "One page of an audience's members (cursor empty when done)",
        "rules",
        query=common.PageQuery,
        replies={200: common.MembersPage},
        errors=_DOC,
    ),
    *_document_routes(
        "plan",
        "plans",
        "plan",
        {
            "listed": documents.Plans,
            "valid": documents.PlanValid,
            "stored": documents.PlanStored,
            "view": documents.PlanView,
            "put_errors": _STORE,
            "delete_errors": _DOC,
            "put_description": "See docs/audiences.md, Plans. The audiences and journeys it names must exist.",
            "delete_summary": "Delete a plan: running occurrences stop, runs and statistics are dropped",
        },
    ),
    Route(
        "get",
        "/v1/plans/{id}/runs",
        "Occurrences, newest first: status, targeted, sent, entered, blocked by reason",
        "rules",
        replies={200: documents.PlanRuns},
        errors=_DOC,
    ),
    *(
        Route(
            "post", f"/v1/plans/{{id}}:{verb}", summary, "rules", replies={200: documents.PlanStateChanged}, errors=_DOC
        )
        for verb, summary in (
            ("pause", "Stop sending and opening occurrences until resumed"),
            ("resume", "Make a paused or cancelled plan active again"),
            ("cancel", "End the running occurrences (unsent users dropped); open no more until resumed"),
        )
    ),
    Route(
        "post",
        "/v1/plans/{id}:estimate",
        "Each branch's size now, less the earlier branches' members",
        "rules",
        replies={200: documents.PlanEstimate},
        errors=_DOC,
    ),
    *(
        Route(
            "get",
            f"/v1/reports/{kind}/{{id}}",
            summary,
            "rules",
            query=reports.ReportQuery,
            replies={200: model},
            reply_text=(CSV,),
            errors=_DOC,
            description="format=csv answers text/csv: one row per unit (and per day), the totals first.",
        )
        for kind, summary, model in (
            ("rulesets", "Funnel of a ruleset and its rules", reports.RulesetReport),
            ("journeys", "Funnel of a journey, its nodes and split arms with lift", reports.JourneyReport),
            ("plans", "Funnel of a plan and its runs", reports.PlanReport),
        )
    ),
    Route(
        "post",
        "/v1/backtest",
        "Run rulesets and journeys over recorded events: firings per rule, per journey and per day",
        "rules",
        body=(reports.BacktestBody,),
        text_media=(NDJSON,),
        query=reports.BacktestQuery,
        replies={200: reports.Backtest},
        errors=_DOC,
        description=(
            "Events inline (JSON or msgpack), or an application/x-ndjson body of one event per line with the"
            " rulesets named by ?ruleset=<id> (and journeys by ?journey=<id>). At most 100,000 events; every"
            " event needs ts."
        ),
    ),
    Route(
        "get", "/v1/items/indexes", "Declared item indexes", "rules", replies={200: events.ItemIndexes}, errors=_STORE
    ),
    Route(
        "put",
        "/v1/items/indexes/{attr}",
        "Index events by an item attribute: {events, window}",
        "rules",
        body=(events.ItemIndexBody,),
        replies={200: events.ItemIndexStored},
        errors=_STORE,
    ),
    Route(
        "get",
        "/v1/items/indexes/{attr}",
        "One item index as stored (or ?version=N)",
        "rules",
        query=common.VersionQuery,
        replies={200: common.StoredDocument},
        errors=_DOC,
    ),
    Route(
        "delete",
        "/v1/items/indexes/{attr}",
        "Stop indexing an attribute",
        "rules",
        replies={200: events.ItemIndexDeleted},
        errors=_DOC,
    ),
    Route(
        "post",
        "/v1/items/events",
        "Fan an item's event out to the users an item index names (see docs/audiences.md)",
        "events",
        body=(events.ItemEventBody,),
        replies={200: events.ItemFanout},
        errors=_DOC,
    ),
    Route(
        "post",
        "/v1/identities",
        "Link aliases to a user; a user an alias named before is merged into it (see docs/audiences.md)",
        "events",
        body=(events.IdentitiesBody,),
        replies={200: events.Linked, 202: events.Linked},
        errors=_STORE,
        description="202 (status queued) when the merges were not applied within 5 s: they will be.",
    ),
    Route(
        "get",
        "/v1/identities/{type}/{id}",
        "The user an alias names, and the user it was merged into in the end",
        "events",
        replies={200: events.AliasOwner},
        errors=_DOC,
    ),
    Route(
        "get",
        "/v1/users/{user_id}",
        "Profile, tags, aliases, live rule state and journey instances",
        "events",
        replies={200: users.UserView},
        errors=_STORE,
    ),
    Route(
        "patch",
        "/v1/users/{user_id}",
        "Set attributes (null deletes) and add or remove tags",
        "events",
        body=(users.ProfilePatch,),
        replies={200: users.ProfileView, 202: users.PatchPending},
        errors=_STORE,
    ),
    Route(
        "get",
        "/v1/users/{user_id}/trace",
        "Every evaluation of rules and journeys for the user, newest first",
        "events",
        query=users.TraceQuery,
        replies={200: users.Trace},
        errors=_STORE,
    ),
    Route(
        "get",
        "/v1/actions",
        "Actions with delivery status, newest first",
        "events",
        query=users.ActionsQuery,
        replies={200: users.Actions},
        errors=_STORE,
    ),
    Route(
        "get",
        "/v1/dead-letters",
        "Actions whose delivery gave up, newest first",
        "admin",
        query=users.DeadLettersQuery,
        replies={200: users.DeadLetters},
        errors=_STORE,
    ),
    Route(
        "post",
        "/v1/dead-letters:replay",
        "Redeliver dead letters by id, or all (optionally one connector's)",
        "admin",
        body=(users.ReplayBody,),
        body_media=(JSON,),
        replies={200: users.Replayed},
        errors=_STORE,
    ),
    Route(
        "get",
        "/c/{token}",
        "A tracked link: 302 to its URL, recording a click event for the user",
        None,
        replies={302: None},
        errors=(404, 503),
    ),
    Route("get", "/metrics", "Prometheus metrics", None, replies={200: None}, reply_media=TEXT),
    Route(
        "get", "/healthz", "Health", None, replies={200: users.Health}, error_models={503: users.Health}, errors=(503,)
    ),
    Route("get", "/openapi.json", "This document", None, replies={200: None}),
    Route("get", "/docs", "This document as a page", None, replies={200: None}, reply_media=HTML),
    Route(
        "get",
        "/v1/schemas/{name}",
        "The JSON Schema of a document language (ruleset.json, journey.json, segment.json, plan.json), for editors",
        None,
        replies={200: None},
        reply_media="application/schema+json",
        errors=(404,),
    ),
    Route("get", "/console", "The console (redirects to /console/)", None, replies={302: None}),
    Route(
        "get",
        "/console/{path}",
        "The console's page (empty path) and its assets; data comes from the API with a key",
        None,
        replies={200: None},
        reply_media=HTML,
        errors=(404,),
    ),
)


def route_table() -> dict[tuple[str, str], Route]:
    """Every route by (OpenAPI path, lower-case method)."""
    return {(route.path, route.method): route for route in ROUTES}
