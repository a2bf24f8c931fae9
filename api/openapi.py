"""The OpenAPI 3.1 description served at /openapi.json (kept beside the routes it describes)."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _op(summary: str, scope: str | None, body: str | None = None, ok: str = "OK") -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": ok},
            "4XX": {"description": "Client error", "content": {"application/json": {"schema": _ERROR}}},
        },
    }
    if scope:
        operation["security"] = [{"bearer": [scope]}]
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}},
                "application/msgpack": {"schema": {"$ref": f"#/components/schemas/{body}"}},
            },
        }
    return operation


_ID_PARAM = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_USER_PARAM = [{"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Beacon", "version": "0.1.0", "description": "Real-time marketing trigger server"},
    "paths": {
        "/v1/events": {"post": _op("Ingest one event or a batch", "events", "EventsBody")},
        "/v1/rulesets": {"get": _op("List active rulesets", "rules")},
        "/v1/rulesets:validate": {"post": _op("Validate a ruleset without storing it", "rules", "Ruleset")},
        "/v1/rulesets/{id}": {
            "parameters": _ID_PARAM,
            "get": _op("A ruleset's active (or ?version=N) document", "rules"),
            "put": _op("Store a new version", "rules", "Ruleset"),
            "delete": _op("Delete a ruleset", "rules"),
        },
        "/v1/rulesets/{id}:dry-run": {
            "parameters": _ID_PARAM,
            "post": _op("Run a ruleset on events with a simulated clock", "rules", "DryRunBody"),
        },
        "/v1/backtest": {
            "post": {
                **_op("Run rulesets over recorded events: firings per rule and per day", "rules"),
                "description": (
                    "Events inline (JSON or msgpack), or an application/x-ndjson body of one event per line"
                    " with the rulesets named by ?ruleset=<id>. At most 100,000 events; every event needs ts."
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/BacktestBody"}},
                        "application/msgpack": {"schema": {"$ref": "#/components/schemas/BacktestBody"}},
                        "application/x-ndjson": {
                            "schema": {"type": "string", "description": "one Event (JSON) per line"}
                        },
                    },
                },
                "parameters": [
                    {
                        "name": "ruleset",
                        "in": "query",
                        "description": "x-ndjson bodies only: a stored ruleset id (repeatable)",
                        "schema": {"type": "array", "items": {"type": "string"}},
                        "style": "form",
                        "explode": True,
                    },
                    {
                        "name": "journey",
                        "in": "query",
                        "description": "x-ndjson bodies only: a stored journey id (repeatable)",
                        "schema": {"type": "array", "items": {"type": "string"}},
                        "style": "form",
                        "explode": True,
                    },
                    {
                        "name": "until",
                        "in": "query",
                        "description": "x-ndjson bodies only",
                        "schema": {"type": "integer"},
                    },
                ],
            }
        },
        "/v1/journeys": {"get": _op("List active journeys", "rules")},
        "/v1/journeys:validate": {"post": _op("Validate a journey without storing it", "rules", "Journey")},
        "/v1/journeys/{id}": {
            "parameters": _ID_PARAM,
            "get": _op("A journey's active (or ?version=N) document", "rules"),
            "put": _op("Store a new version (running instances stay on theirs)", "rules", "Journey"),
            "delete": _op("Delete a journey and cancel its instances", "rules"),
        },
        "/v1/journeys/{id}:dry-run": {
            "parameters": _ID_PARAM,
            "post": _op("Run a journey on events with a simulated clock", "rules", "DryRunBody"),
        },
        "/v1/journeys/{id}/stats": {
            "parameters": _ID_PARAM,
            "get": _op("Per version and node: entered, waiting, left by branch, exited, converted", "rules"),
        },
        "/v1/segments": {"get": _op("List active segments with their sizes", "rules")},
        "/v1/segments:validate": {"post": _op("Validate a segment without storing it", "rules", "Segment")},
        "/v1/segments:estimate": {
            "post": {
                **_op("Size an unsaved segment definition over the stored users", "rules", "SegmentEstimateBody"),
                "description": (
                    "Replies {estimate, exact, population, sampled, error_bound?, unreadable, elapsed_ms}: exact up to"
                    " exact_limit user records, beyond that from a hash sample with a 95 % error bound. Behaviour"
                    " conditions see only the history the engine keeps (shapes an active journey or segment reads)."
                    " See docs/audiences.md."
                ),
            }
        },
        "/v1/segments/{id}": {
            "parameters": _ID_PARAM,
            "get": _op("A segment's active (or ?version=N) document, kept versions and size", "rules"),
            "put": _op("Store a new version", "rules", "Segment"),
            "delete": _op("Delete a segment and its members", "rules"),
        },
        "/v1/segments/{id}/members": {
            "parameters": _ID_PARAM,
            "get": {
                **_op("One page of a segment's members: {members, cursor} (cursor empty when done)", "rules"),
                "parameters": [
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
            },
        },
        "/v1/audiences": {
            "get": _op("List audiences: id, kind (list or expr), size (an expression's computed now)", "rules")
        },
        "/v1/audiences/{id}": {
            "parameters": _ID_PARAM,
            "get": _op("An audience: kind, expression (if one), size now", "rules"),
            "put": {
                **_op("Replace an audience: a static list or an expression", "rules"),
                "description": (
                    'application/json {"ids": [...]} or {"expr": ...}; text/csv (one id per line, optional header'
                    ' user_id) or application/x-ndjson ({"user_id": ...} per line), streamed. Expressions: union,'
                    ' intersect, exclude {from, minus}, sample {of, percent} over "seg:<id>" / "aud:<id>".'
                    " See docs/audiences.md."
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/csv": {"schema": {"type": "string"}},
                        "application/x-ndjson": {"schema": {"type": "string"}},
                    },
                },
            },
            "delete": _op("Delete an audience (refused with 409 while an expression refers to it)", "rules"),
        },
        "/v1/audiences/{id}/members": {
            "parameters": _ID_PARAM,
            "get": {
                **_op("One page of an audience's members: {members, cursor} (cursor empty when done)", "rules"),
                "parameters": [
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
            },
        },
        "/v1/segments/{id}:backfill": {
            "parameters": _ID_PARAM,
            "post": _op(
                "Feed past events ({events: [...]}, up to 10,000) to the segment's behaviour history, silently",
                "rules",
            ),
        },
        "/c/{token}": {
            "parameters": [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                **_op("A tracked link: 302 to its URL, recording a click event for the user (404 when unknown)", None),
                "responses": {"302": {"description": "to the link's URL"}, "404": {"description": "unknown link"}},
            },
        },
        "/v1/reports/rulesets/{id}": {
            "parameters": _ID_PARAM,
            "get": _op("Funnel of a ruleset and its rules (?from=&to=YYYY-MM-DD, by=day, format=csv)", "rules"),
        },
        "/v1/reports/journeys/{id}": {
            "parameters": _ID_PARAM,
            "get": _op(
                "Funnel of a journey, its nodes and split arms with lift (?from=&to=, by=day, format=csv)", "rules"
            ),
        },
        "/v1/reports/plans/{id}": {
            "parameters": _ID_PARAM,
            "get": _op("Funnel of a plan and its runs (?from=&to=, by=day, format=csv)", "rules"),
        },
        "/v1/plans": {"get": _op("List plans: version, state (active, paused, cancelled), next occurrence", "rules")},
        "/v1/plans:validate": {"post": _op("Validate a plan (and its references) without storing it", "rules")},
        "/v1/plans/{id}": {
            "parameters": _ID_PARAM,
            "get": _op("A plan's active (or ?version=N) document, kept versions, state, next occurrence", "rules"),
            "put": _op("Store a new version (see docs/audiences.md, Plans)", "rules"),
            "delete": _op("Delete a plan: running occurrences stop, runs and statistics are dropped", "rules"),
        },
        "/v1/plans/{id}/runs": {
            "parameters": _ID_PARAM,
            "get": _op("Occurrences, newest first: status, targeted, sent, entered, blocked by reason", "rules"),
        },
        "/v1/plans/{id}:pause": {
            "parameters": _ID_PARAM,
            "post": _op("Stop sending and opening occurrences until resumed", "rules"),
        },
        "/v1/plans/{id}:resume": {
            "parameters": _ID_PARAM,
            "post": _op("Make a paused or cancelled plan active again", "rules"),
        },
        "/v1/plans/{id}:cancel": {
            "parameters": _ID_PARAM,
            "post": _op("End the running occurrences (unsent users dropped); open no more until resumed", "rules"),
        },
        "/v1/plans/{id}:estimate": {
            "parameters": _ID_PARAM,
            "post": _op("Each branch's size now, less the earlier branches' members", "rules"),
        },
        "/v1/items/indexes": {"get": _op("Declared item indexes", "rules")},
        "/v1/items/indexes/{attr}": {
            "parameters": [{"name": "attr", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": _op("One item index", "rules"),
            "put": _op("Index events by an item attribute: {events, window}", "rules"),
            "delete": _op("Stop indexing an attribute", "rules"),
        },
        "/v1/items/events": {
            "post": _op("Fan an item's event out to the users an item index names (see docs/audiences.md)", "events")
        },
        "/v1/identities": {
            "post": _op(
                "Link aliases to a user; a user an alias named before is merged into it (see docs/audiences.md)",
                "events",
                "IdentitiesBody",
            )
        },
        "/v1/identities/{type}/{id}": {
            "parameters": [
                {"name": "type", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "get": _op("The user an alias names, and the user it was merged into in the end", "events"),
        },
        "/v1/users/{user_id}": {
            "parameters": _USER_PARAM,
            "get": _op("Profile, tags, aliases, live rule state and journey instances", "events"),
            "patch": _op("Set attributes and tags", "events", "ProfilePatch"),
        },
        "/v1/users/{user_id}/trace": {
            "parameters": _USER_PARAM,
            "get": {
                **_op("Every evaluation of rules and journeys for the user, newest first", "events"),
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}
                ],
            },
        },
        "/v1/actions": {
            "get": {
                **_op("Actions with delivery status, newest first", "events"),
                "parameters": [
                    {"name": "user_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "rule", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
            }
        },
        "/v1/ingest": {
            "get": {
                **_op("WebSocket ingest: frames {seq, events}, replies {ack, accepted, errors}", "events"),
                "description": "Binary frames are msgpack, text frames JSON; see docs/ingest.md.",
            }
        },
        "/v1/dead-letters": {"get": _op("Actions whose delivery gave up, newest first", "admin")},
        "/v1/dead-letters:replay": {
            "post": _op("Redeliver dead letters by id, or all (optionally one connector's)", "admin", "Replay")
        },
        "/metrics": {"get": _op("Prometheus metrics", None)},
        "/openapi.json": {"get": _op("This document", None)},
        "/docs": {"get": _op("This document as a page", None)},
        "/console": {"get": _op("The console (redirects to /console/)", None)},
        "/console/{path}": {
            "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": _op("The console's page (empty path) and its assets; data comes from the API with a key", None),
        },
        "/healthz": {"get": _op("Health", None)},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "path": {"type": ["string", "null"]},
                        },
                    }
                },
            },
            "Alias": {
                "type": "object",
                "required": ["type", "id"],
                "additionalProperties": False,
                "properties": {
                    "type": {"enum": ["openid", "unionid", "phone", "member_id"]},
                    "id": {"type": "string", "minLength": 1, "maxLength": 100},
                },
            },
            "IdentitiesBody": {
                "type": "object",
                "required": ["user_id", "aliases"],
                "additionalProperties": False,
                "properties": {
                    "user_id": {"type": "string", "minLength": 1, "maxLength": 128},
                    "aliases": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 32,
                        "items": {"$ref": "#/components/schemas/Alias"},
                    },
                },
            },
            "Event": {
                "type": "object",
                "required": ["type"],
                "description": "names its user by user_id or (ingest only) by alias, not both",
                "additionalProperties": False,
                "properties": {
                    "user_id": {"type": "string", "minLength": 1, "maxLength": 128},
                    "alias": {"$ref": "#/components/schemas/Alias"},
                    "type": {"type": "string", "pattern": "^[A-Za-z0-9_.:\\-]{1,64}$"},
                    "ts": {"type": "integer", "description": "event time, ms since the epoch"},
                    "event_id": {"type": "string", "minLength": 1, "maxLength": 128},
                    "attrs": {"type": "object"},
                },
            },
            "EventsBody": {
                "oneOf": [
                    {"$ref": "#/components/schemas/Event"},
                    {
                        "type": "object",
                        "required": ["events"],
                        "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}},
                    },
                ]
            },
            "Ruleset": {"type": "object", "description": "See README: the ruleset language"},
            "Journey": {"type": "object", "description": "See docs/journeys.md: the journey language"},
            "Segment": {
                "type": "object",
                "required": ["where"],
                "properties": {
                    "id": {"type": "string"},
                    "description": {"type": "string"},
                    "where": {"type": "object", "description": "See docs/audiences.md: the segment language"},
                },
            },
            "SegmentEstimateBody": {
                "type": "object",
                "additionalProperties": False,
                "description": "exactly one of where and segment",
                "properties": {
                    "where": {"type": "object", "description": "a segment condition"},
                    "segment": {"$ref": "#/components/schemas/Segment"},
                    "exact_limit": {"type": "integer", "minimum": 100, "maximum": 200000},
                },
            },
            "DryRunBody": {
                "type": "object",
                "required": ["events"],
                "properties": {
                    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                    "profiles": {"type": "object"},
                },
            },
            "BacktestBody": {
                "type": "object",
                "required": ["events"],
                "additionalProperties": False,
                "properties": {
                    "rulesets": {
                        "type": "array",
                        "items": {"oneOf": [{"type": "string"}, {"$ref": "#/components/schemas/Ruleset"}]},
                        "description": "stored ruleset ids (active version) or unsaved documents (required "
                        "unless journeys are given)",
                    },
                    "journeys": {
                        "type": "array",
                        "items": {"oneOf": [{"type": "string"}, {"$ref": "#/components/schemas/Journey"}]},
                        "description": "stored journey ids (active version) or unsaved documents",
                    },
                    "events": {"type": "array", "maxItems": 100000, "items": {"$ref": "#/components/schemas/Event"}},
                    "until": {"type": "integer", "description": "stop the simulated clock here (ms)"},
                },
            },
            "Replay": {
                "type": "object",
                "properties": {
                    "ids": {"type": "array", "items": {"type": "string"}},
                    "all": {"type": "boolean"},
                    "connector": {"type": "string"},
                    "limit": {"type": "integer"},
                },
            },
            "ProfilePatch": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "attrs": {"type": "object"},
                    "add_tags": {"type": "array", "items": {"type": "string"}},
                    "remove_tags": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
