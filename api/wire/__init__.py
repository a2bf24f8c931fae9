"""The API's typed wire models (msgspec Structs): request bodies, queries and replies of every route, the route
table that names them (`api.wire.routes`), and the document languages' JSON Schemas (`api.wire.languages`).

The hand-written parsers (`rules.schema`, `api.event_wire`, ...) stay the validators: their 422s name exact
JSON paths. These models describe the same shapes for the OpenAPI document (`api.openapi`) and are held to
them by the check every server the tests start runs (`tests/wire_check.py`).
"""
