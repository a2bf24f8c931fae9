"""Write-only webhook headers: rule documents and action records are read back with their values masked.

A webhook action's `headers` carry the credentials of the receiving service (`Authorization: Bearer ...`,
`X-Api-Key`), and any `rules` key could read another author's through `GET /v1/rulesets/{id}`, as any
`events` key could through the ledger. So every header value of a webhook is a secret: names stay visible,
values are returned as `SECRET_MARKER`. A document sent back with the marker keeps the stored value
(`restore_secrets`), so GET, edit, PUT works without knowing the secret, but only where the action still
targets the same `url`: otherwise a key that may replace a ruleset could point the action at its own server
and have the stored secret delivered there.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

from beacon.errors import ValidationError

SECRET_MARKER = "********"
WEBHOOK = "webhook"

# Where an action sits in a document: its keys and list positions from the root, except that a list item
# with a string `id` (a rule, a journey node) is named by that id, so reordering rules keeps the match.
Location = tuple[str | int | tuple[str, str], ...]
# Actions sit a few levels down (`rules[i].then[j]`, a journey's `nodes.<id>.do[j]`); deeper than this is
# not a valid document anyway, and walking it would risk Python's recursion limit before validation says so.
MAX_WALK_DEPTH = 16


def redact_document(document: Any) -> Any:
    """A copy of a rule document (ruleset or journey) with every webhook header value masked."""
    redacted = copy.deepcopy(document)
    for _, _, action in _webhook_actions(redacted, (), ""):
        headers = action.get("headers")
        if isinstance(headers, dict):
            action["headers"] = {name: SECRET_MARKER for name in headers}
    return redacted


def redact_action(record: Mapping[str, Any]) -> dict[str, Any]:
    """An action record (ledger, dry-run, backtest) with a webhook's rendered header values masked."""
    params = record.get("params")
    if record.get("type") != WEBHOOK or not isinstance(params, dict) or not isinstance(params.get("headers"), dict):
        return dict(record)
    return {**record, "params": {**params, "headers": {name: SECRET_MARKER for name in params["headers"]}}}


def has_marker(document: Any) -> bool:
    """Whether any webhook header of the document holds the marker (then it needs the stored document)."""
    return any(
        value == SECRET_MARKER
        for _, _, action in _webhook_actions(document, (), "")
        if isinstance(action.get("headers"), dict)
        for value in action["headers"].values()
    )


def restore_secrets(document: Any, stored: Any | None) -> Any:
    """`document` with each marker replaced by the stored value of the same header of the same action.

    The same action is the one at the same location (`Location`) with the same `url`; a marker with no such
    stored value is a `ValidationError` naming the header: the secret must be sent again.
    """
    if not has_marker(document):
        return document
    kept = {location: action for location, _, action in _webhook_actions(stored, (), "")}
    restored = copy.deepcopy(document)
    for location, path, action in _webhook_actions(restored, (), ""):
        headers = action.get("headers")
        if not isinstance(headers, dict):
            continue
        before = kept.get(location)
        before_headers = before.get("headers") if before is not None else None
        for name, value in headers.items():
            if value != SECRET_MARKER:
                continue
            if before is None or before.get("url") != action.get("url") or not isinstance(before_headers, dict):
                raise ValidationError(
                    f"is the masked value {SECRET_MARKER!r} but no stored action with this url holds it; "
                    "send the header's value (a secret follows its url)",
                    path=f"{path}.headers.{name}",
                )
            if name not in before_headers or before_headers[name] == SECRET_MARKER:
                raise ValidationError(
                    f"is the masked value {SECRET_MARKER!r} but the stored action has no such header; send its value",
                    path=f"{path}.headers.{name}",
                )
            headers[name] = before_headers[name]
    return restored


def _webhook_actions(value: Any, location: Location, path: str) -> Iterator[tuple[Location, str, dict[str, Any]]]:
    """Every webhook action object in a document, with its location and its path as errors name it."""
    if len(location) > MAX_WALK_DEPTH:
        return
    if isinstance(value, dict):
        if value.get("action") == WEBHOOK:
            yield location, path, value
            return
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                yield from _webhook_actions(item, (*location, str(key)), f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            named = isinstance(item, dict) and isinstance(item.get("id"), str)
            step: str | int | tuple[str, str] = ("id", item["id"]) if named else index
            yield from _webhook_actions(item, (*location, step), f"{path}[{index}]")
