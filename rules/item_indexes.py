"""Item indexes: which users did which event on which item, kept by the partition owner for item events.

`PUT /v1/items/indexes/{attr}` with `{"events": ["add_to_cart", "pay"], "window": "30d"}` declares that,
for every event of those types carrying the attribute `attr` (a product's `sku`), the owner remembers
the user under (attr, event type, value) with the event's time, for `window`. `POST /v1/items/events`
then names users by item ("carted SKU-X in the last 30 days and did not pay for it") and fans an event
out to them (`api/routes_items.py`, `cep/item_index.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from beacon.errors import ValidationError
from rules.schema import MAX_DURATION_MS, Parse, RulesetInvalid, _Parser

MAX_INDEX_EVENTS = 20


@dataclass(frozen=True, slots=True)
class ItemIndex:
    """A validated item index. `attr` is its id (the item attribute); `version` is 0 until stored."""

    attr: str
    events: tuple[str, ...]
    window_ms: int
    version: int = 0


def parse_item_index(doc: object, *, attr: str, version: int = 0) -> ItemIndex:
    """The validated index in `doc` for attribute `attr`; raises RulesetInvalid naming every problem."""
    parser = _Parser(2_000)
    parser.identifier(attr, "attr")
    spec: dict[str, Parse] = {
        "attr": parser.identifier,
        "events": lambda value, path: parser.listed(value, path, parser.event_type, "events", MAX_INDEX_EVENTS),
        "window": lambda value, path: parser.duration(value, path, 1, MAX_DURATION_MS),
    }
    parsed = parser.fields(doc, "", spec, ("events", "window"))
    if parsed is not None and parsed.get("attr") not in (None, attr):
        parser.reject("attr", f"{parsed['attr']!r} does not match the attribute in the URL {attr!r}")
    listed = doc.get("events") if isinstance(doc, dict) else None
    if isinstance(listed, list) and len({str(item) for item in listed}) != len(listed):
        parser.reject("events", "lists an event type twice")
    if parser.errors or parsed is None:
        raise RulesetInvalid(parser.errors or [ValidationError("invalid item index")])
    return ItemIndex(attr, tuple(parsed["events"]), parsed["window"], version)
