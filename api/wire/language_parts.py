"""Building blocks of the document languages' JSON Schemas (`api.wire.languages`): closed objects, one-key
kinds, durations, predicates and conditions, matchers, actions, goals and fatigue, shared by the ruleset,
journey, segment and plan schemas and built from the parsers' own constants."""

from __future__ import annotations

from typing import Any

from rules import journey_schema as journeys
from rules import model
from rules import schema as rule_rules

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    """A reference to one of the schema's `$defs`."""
    return {"$ref": f"#/$defs/{name}"}


def closed_object(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    """A closed object: the parsers refuse a field they do not know."""
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def full_match(compiled: Any) -> str:
    """A compiled regex of the parsers as a JSON Schema pattern over the whole string (they `fullmatch`)."""
    return f"^(?:{compiled.pattern})$"


def bounded_int(low: int, high: int) -> Schema:
    """An integer from `low` to `high`, inclusive (as the parsers' bounds are)."""
    return {"type": "integer", "minimum": low, "maximum": high}


def bounded_list(items: Schema, maximum: int, minimum: int = 1) -> Schema:
    """A list of `minimum` to `maximum` items."""
    return {"type": "array", "items": items, "minItems": minimum, "maxItems": maximum}


def unique_names(maximum: int) -> Schema:
    """At most `maximum` distinct non-empty names (`key`, `correlate`)."""
    return {"type": "array", "items": ref("name"), "maxItems": maximum, "uniqueItems": True}


def keyed(name: str, body: Schema, **fields: Schema) -> Schema:
    """A one-key-names-the-kind object (`{"not": ...}`, `{"wait": "1d", "next": ...}`)."""
    return closed_object({name: body, **fields}, (name,))


SCALAR: Schema = {"type": ["string", "number", "boolean"]}


def compare(source: str) -> Schema:
    """`{"field"|"profile": name, "op", "value"}`, the value's kind checked by operator."""
    ops = model.COMPARE_OPS
    by_op: list[Schema] = [
        {"if": {"properties": {"op": {"enum": ["==", "!=", "contains"]}}}, "then": {"properties": {"value": SCALAR}}},
        {
            "if": {"properties": {"op": {"enum": [">", ">=", "<", "<="]}}},
            "then": {"properties": {"value": {"type": "number"}}},
        },
        {
            "if": {"properties": {"op": {"const": "prefix"}}},
            "then": {"properties": {"value": {"type": "string", "minLength": 1}}},
        },
        {
            "if": {"properties": {"op": {"enum": ["in", "not_in"]}}},
            "then": {"properties": {"value": bounded_list(SCALAR, rule_rules.MAX_IN_VALUES)}},
        },
        {"if": {"properties": {"op": {"const": "exists"}}}, "then": {"properties": {"value": {"const": True}}}},
        {"if": {"properties": {"op": {"not": {"const": "exists"}}}}, "then": {"required": ["value"]}},
    ]
    return {
        **closed_object({source: ref("name"), "op": {"enum": list(ops)}, "value": {}}, (source, "op")),
        "allOf": by_op,
    }


def combinators(inner: str) -> list[Schema]:
    """`all` / `any` over a list of `inner`, `not` over one."""
    return [
        keyed("all", {"type": "array", "items": ref(inner)}),
        keyed("any", {"type": "array", "items": ref(inner)}),
        keyed("not", ref(inner)),
    ]


def action(kind: str, fields: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    """One action kind: its own fields, `delay`, and `action` naming it."""
    delay = {"$ref": "#/$defs/duration", "description": "after the firing, up to 400 days"}
    staleness = {
        "$ref": "#/$defs/duration",
        "description": "how late past its due time the action may still be sent (at least 1s; default: the "
        "deployment's BEACON_CONNECTOR_MAX_STALENESS_MS); later it is skipped as `stale`",
    }
    return closed_object(
        {"action": {"const": kind}, **fields, "delay": delay, "max_staleness": staleness}, ("action", *required)
    )


def shared_defs() -> dict[str, Schema]:
    """What every language shares: ids, names, durations, predicates, matchers, actions, goals, fatigue."""
    params = {"type": "object"}
    names_list = {"type": "array", "items": ref("name"), "uniqueItems": True}
    return {
        "id": {"type": "string", "pattern": full_match(rule_rules.ID_PATTERN)},
        "name": {"type": "string", "minLength": 1},
        "eventType": {"type": "string", "pattern": full_match(rule_rules.EVENT_TYPE_PATTERN)},
        "duration": {
            "type": "string",
            "pattern": r"^\s*(?:\d+(?:ms|s|m|h|d|w))+\s*$",
            "description": 'like "500ms", "30m", "47h", "7d", "1d12h"; at most 400 days',
        },
        "positiveDuration": {"$ref": "#/$defs/duration", "not": {"pattern": r"^\s*(?:0+(?:ms|s|m|h|d|w))+\s*$"}},
        "predicate": {
            "oneOf": [
                compare("field"),
                compare("profile"),
                keyed("tag", ref("name")),
                *combinators("predicate"),
            ]
        },
        "matcherPredicate": {
            "description": "an event matcher's `where`: field conditions only (profile and tag belong in `if`)",
            "oneOf": [compare("field"), *combinators("matcherPredicate")],
        },
        "matcher": closed_object({"event": ref("eventType"), "where": ref("matcherPredicate")}, ("event",)),
        "action": {
            "oneOf": [
                action(
                    "coupon",
                    {"coupon_id": ref("name"), "quantity": {"type": "integer", "minimum": 1}, "params": params},
                    ("coupon_id",),
                ),
                action(
                    "points",
                    {
                        "amount": {
                            "oneOf": [
                                {"type": "integer", "not": {"const": 0}},
                                {"type": "string", "pattern": r"^\s*\{\{.*\}\}\s*$"},
                            ]
                        },
                        "reason": {"type": "string"},
                    },
                    ("amount",),
                ),
                {
                    **action("tag", {"add": names_list, "remove": names_list}),
                    "anyOf": [
                        {"required": ["add"], "properties": {"add": {"minItems": 1}}},
                        {"required": ["remove"], "properties": {"remove": {"minItems": 1}}},
                    ],
                },
                action(
                    "message",
                    {
                        "channel": {"enum": list(model.MESSAGE_CHANNELS)},
                        "template": ref("name"),
                        "params": params,
                        "url": {"type": "string"},
                        "page": {"type": "string"},
                        "miniprogram": {"type": "object"},
                        "transactional": {"type": "boolean"},
                    },
                    ("channel", "template"),
                ),
                action(
                    "webhook",
                    {
                        "url": {"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s/]"},
                        "body": {"type": "object"},
                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                    ("url",),
                ),
                action(
                    "notify_staff",
                    {"template": ref("name"), "params": params, "notify_superior": {"type": "boolean"}},
                    ("template",),
                ),
            ]
        },
        "actions": bounded_list(ref("action"), rule_rules.MAX_ACTIONS),
        "goal": closed_object(
            {
                "event": ref("eventType"),
                "where": ref("matcherPredicate"),
                "within": ref("positiveDuration"),
                "value": {**ref("name"), "description": "the event attribute holding the revenue"},
            },
            ("event", "within"),
        ),
        "fatigue": closed_object(
            {"max": bounded_int(1, rule_rules.MAX_FATIGUE), "per": ref("positiveDuration")}, ("max", "per")
        ),
        "reentry": {
            "oneOf": [
                closed_object({"policy": {"enum": ["once", "always"]}}, ("policy",)),
                closed_object(
                    {"policy": {"const": "once_per"}, "period": ref("positiveDuration")}, ("policy", "period")
                ),
            ]
        },
    }


def condition_defs() -> dict[str, Schema]:
    """Journey branch conditions: rule predicates plus behaviour (`did`, `did_not`, `sum`) over a window."""
    numeric = {"enum": list(journeys.NUMERIC_OPS)}
    behaviours = [
        closed_object(
            {
                "did": ref("matcher"),
                "within": ref("positiveDuration"),
                "count": closed_object({"op": numeric, "value": bounded_int(0, rule_rules.MAX_COUNT)}, ("op", "value")),
            },
            ("did", "within"),
        ),
        closed_object({"did_not": ref("matcher"), "within": ref("positiveDuration")}, ("did_not", "within")),
        closed_object(
            {
                "sum": ref("name"),
                "of": ref("matcher"),
                "within": ref("positiveDuration"),
                "op": numeric,
                "value": {"type": "number"},
            },
            ("sum", "of", "within", "op", "value"),
        ),
    ]
    return {
        "behaviour": {"oneOf": behaviours},
        "condition": {
            "oneOf": [
                compare("field"),
                compare("profile"),
                keyed("tag", ref("name")),
                ref("behaviour"),
                *combinators("condition"),
            ]
        },
        # A segment has no event of its own: no `field` leaves (behaviour matchers keep their `where`).
        "segmentCondition": {
            "oneOf": [
                compare("profile"),
                keyed("tag", ref("name")),
                ref("behaviour"),
                *combinators("segmentCondition"),
            ]
        },
    }
