"""The route table: for every route the app serves, its scope, summary, request (body, query) and reply models,
and the error statuses it answers. `api.openapi` builds the OpenAPI document from it; the tests' servers check
each request a handler accepted and each reply it sent against it (`tests/wire_check.py`)."""

from __future__ import annotations

from api.wire import common, events, users
from api.wire.route_spec import DOC_ERRORS, HTML, JSON, STORE_ERRORS, TEXT, Route
from api.wire.routes_documents import DOCUMENT_ROUTES

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
    *DOCUMENT_ROUTES,
    Route(
        "get",
        "/v1/items/indexes",
        "Declared item indexes",
        "rules",
        replies={200: events.ItemIndexes},
        errors=STORE_ERRORS,
    ),
    Route(
        "put",
        "/v1/items/indexes/{attr}",
        "Index events by an item attribute: {events, window}",
        "rules",
        body=(events.ItemIndexBody,),
        replies={200: events.ItemIndexStored},
        errors=STORE_ERRORS,
    ),
    Route(
        "get",
        "/v1/items/indexes/{attr}",
        "One item index as stored (or ?version=N)",
        "rules",
        query=common.VersionQuery,
        replies={200: common.StoredDocument},
        errors=DOC_ERRORS,
    ),
    Route(
        "delete",
        "/v1/items/indexes/{attr}",
        "Stop indexing an attribute",
        "rules",
        replies={200: events.ItemIndexDeleted},
        errors=DOC_ERRORS,
    ),
    Route(
        "post",
        "/v1/items/events",
        "Fan an item's event out to the users an item index names (see docs/audiences.md)",
        "events",
        body=(events.ItemEventBody,),
        replies={200: events.ItemFanout},
        errors=DOC_ERRORS,
    ),
    Route(
        "post",
        "/v1/identities",
        "Link aliases to a user; a user an alias named before is merged into it (see docs/audiences.md)",
        "events",
        body=(events.IdentitiesBody,),
        replies={200: events.Linked, 202: events.Linked},
        errors=STORE_ERRORS,
        description="202 (status queued) when the merges were not applied within 5 s: they will be.",
    ),
    Route(
        "get",
        "/v1/identities/{type}/{id}",
        "The user an alias names, and the user it was merged into in the end",
        "events",
        replies={200: events.AliasOwner},
        errors=DOC_ERRORS,
    ),
    Route(
        "get",
        "/v1/users/{user_id}",
        "Profile, tags, aliases, live rule state and journey instances",
        "events",
        replies={200: users.UserView},
        errors=STORE_ERRORS,
    ),
    Route(
        "patch",
        "/v1/users/{user_id}",
        "Set attributes (null deletes) and add or remove tags",
        "events",
        body=(users.ProfilePatch,),
        replies={200: users.ProfileView, 202: users.PatchPending},
        errors=STORE_ERRORS,
    ),
    Route(
        "get",
        "/v1/users/{user_id}/trace",
        "Every evaluation of rules and journeys for the user, newest first",
        "events",
        query=users.TraceQuery,
        replies={200: users.Trace},
        errors=STORE_ERRORS,
    ),
    Route(
        "get",
        "/v1/actions",
        "Actions with delivery status, newest first",
        "events",
        query=users.ActionsQuery,
        replies={200: users.Actions},
        errors=STORE_ERRORS,
        description=(
            "With user_id: that user's actions and those of the users merged into it, each naming its user_id; "
            "a user merged away lists its own."
        ),
    ),
    Route(
        "get",
        "/v1/dead-letters",
        "Actions whose delivery gave up, newest first",
        "admin",
        query=users.DeadLettersQuery,
        replies={200: users.DeadLetters},
        errors=STORE_ERRORS,
    ),
    Route(
        "post",
        "/v1/dead-letters:replay",
        "Redeliver dead letters by id, or all (optionally one connector's)",
        "admin",
        body=(users.ReplayBody,),
        body_media=(JSON,),
        replies={200: users.Replayed},
        errors=STORE_ERRORS,
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
