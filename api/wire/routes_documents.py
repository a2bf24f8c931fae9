"""The route table's stored-document routes: rulesets, journeys, segments, audiences, plans, their dry-runs,
estimates and backfills, reports and backtests."""

from __future__ import annotations

from typing import Any

from api.wire import common, documents, reports
from api.wire.route_spec import CSV, DOC_ERRORS, NDJSON, STORE_ERRORS, Route

LIST_DESCRIPTION = (
    "At most `limit` documents (default 100, at most 1000) whose id comes after `after`, in id order; with `q`,"
    " only ids containing it (any case). `next` is the `after` of the following page (null on the last), `total`"
    " how many ids match. A document added or deleted between pages moves no other: follow `next` to list all."
)


def _document_routes(kind: str, plural: str, language: str, extra: dict[str, Any]) -> list[Route]:
    """PUT, GET, DELETE, list and validate of one kind of stored document."""
    base = f"/v1/{plural}"
    return [
        Route(
            "get",
            base,
            f"A page of the active {plural}, by id",
            "rules",
            query=common.ListQuery,
            replies={200: extra["listed"]},
            errors=STORE_ERRORS,
            description=LIST_DESCRIPTION,
        ),
        Route(
            "post",
            f"{base}:validate",
            f"Validate a {kind} without storing it",
            "rules",
            body=(language,),
            replies={200: extra["valid"]},
            errors=extra.get("validate_errors", STORE_ERRORS),
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
            errors=DOC_ERRORS,
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


DOCUMENT_ROUTES: tuple[Route, ...] = (
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
        errors=DOC_ERRORS,
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
        errors=DOC_ERRORS,
    ),
    Route(
        "get",
        "/v1/journeys/{id}/stats",
        "Per version and node: entered, waiting, left by branch, exited, converted",
        "rules",
        replies={200: documents.JourneyStats},
        errors=DOC_ERRORS,
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
            "put_errors": STORE_ERRORS,
            "delete_errors": DOC_ERRORS,
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
        errors=STORE_ERRORS,
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
        errors=DOC_ERRORS,
    ),
    Route(
        "post",
        "/v1/segments/{id}:backfill",
        "Feed past events (up to 10,000, or the event archive's) to the segment's behaviour history, silently",
        "rules",
        body=(documents.BackfillBody, documents.ArchiveBackfillBody),
        replies={200: documents.Backfilled},
        errors=(*DOC_ERRORS, 409),
        description=(
            '{"source": "archive"} reads the event archive in the process that holds it (elsewhere a 409) and'
            " answers once every event is appended, at the rate the partition owners process them"
            " (docs/audiences.md, Backfill)."
        ),
    ),
    Route(
        "get",
        "/v1/audiences",
        "A page of the audiences, by id, with their kind and size",
        "rules",
        query=common.ListQuery,
        replies={200: documents.Audiences},
        errors=STORE_ERRORS,
        description=LIST_DESCRIPTION,
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
        errors=DOC_ERRORS,
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
        errors=DOC_ERRORS,
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
            "put_errors": STORE_ERRORS,
            "delete_errors": DOC_ERRORS,
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
        errors=DOC_ERRORS,
    ),
    *(
        Route(
            "post",
            f"/v1/plans/{{id}}:{verb}",
            summary,
            "rules",
            replies={200: documents.PlanStateChanged},
            errors=DOC_ERRORS,
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
        errors=DOC_ERRORS,
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
            errors=(*DOC_ERRORS, 409),
            description=(
                "format=csv answers text/csv: one row per unit (and per day), the totals first. source=archive"
                " replays the event archive, in the process that holds it (elsewhere a 409)."
            ),
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
        errors=DOC_ERRORS,
        description=(
            "Events inline (JSON or msgpack), or an application/x-ndjson body of one event per line with the"
            " rulesets named by ?ruleset=<id> (and journeys by ?journey=<id>). At most 100,000 events; every"
            " event needs ts."
        ),
    ),
)
