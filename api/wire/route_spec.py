"""The shape of a route table entry (`Route`) and the media types the table names."""

from __future__ import annotations

from dataclasses import dataclass, field

from api.wire import common

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


DOC_ERRORS = (404, 503)  # a route reading a stored document
STORE_ERRORS = (503,)  # any route reading Redis
