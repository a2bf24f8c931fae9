"""JSON Schemas (draft 2020-12) of the document languages, built from the parsers' own constants: rulesets,
journeys, segments and plans, served at `GET /v1/schemas/{name}.json` for editors and referenced by the
OpenAPI document.

The parsers (`rules.schema`, `rules.journey_schema`, `rules.segments`, `rules.plans`) stay the judges: a
schema says the shape (fields, kinds, patterns, bounds); what JSON Schema cannot say is theirs alone: a
`next` naming an existing node, reachability and cycles, split weights adding up to 100, duplicate rule
ids, templates that render, cron expressions and IANA zones that exist, durations within their bounds.
"""

from __future__ import annotations

from typing import Any

from rules import audiences, model
from rules import journey_schema as journeys
from rules import plans as plan_rules
from rules import schema as rule_rules

Schema = dict[str, Any]
BASE = "https://beacon.invalid/v1/schemas/"  # an identifier (never fetched): editors resolve $defs inside
NAMES = ("ruleset", "journey", "segment", "plan")


def _ref(name: str) -> Schema:
    return {"$ref": f"#/$defs/{name}"}


def _object(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    """A closed object: the parsers refuse a field they do not know."""
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def _pattern(compiled: Any) -> str:
    return f"^(?:{compiled.pattern})$"


def _bounded_int(low: int, high: int) -> Schema:
    return {"type": "integer", "minimum": low, "maximum": high}


def _list(items: Schema, maximum: int, minimum: int = 1) -> Schema:
    return {"type": "array", "items": items, "minItems": minimum, "maxItems": maximum}


def _names(maximum: int) -> Schema:
    return {"type": "array", "items": _ref("name"), "maxItems": maximum, "uniqueItems": True}


def _kinds(name: str, body: Schema, **fields: Schema) -> Schema:
    """A one-key-names-the-kind object (`{"not": ...}`, `{"wait": "1d", "next": ...}`)."""
    return _object({name: body, **fields}, (name,))


SCALAR: Schema = {"type": ["string", "number", "boolean"]}


def _compare(source: str) -> Schema:
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
            "then": {"properties": {"value": _list(SCALAR, rule_rules.MAX_IN_VALUES)}},
        },
        {"if": {"properties": {"op": {"const": "exists"}}}, "then": {"properties": {"value": {"const": True}}}},
        {"if": {"properties": {"op": {"not": {"const": "exists"}}}}, "then": {"required": ["value"]}},
    ]
    return {
        **_object({source: _ref("name"), "op": {"enum": list(ops)}, "value": {}}, (source, "op")),
        "allOf": by_op,
    }


def _combinators(inner: str) -> list[Schema]:
    return [
        _kinds("all", {"type": "array", "items": _ref(inner)}),
        _kinds("any", {"type": "array", "items": _ref(inner)}),
        _kinds("not", _ref(inner)),
    ]


def _action(kind: str, fields: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    delay = {"$ref": "#/$defs/duration", "description": "after the firing, up to 400 days"}
    return _object({"action": {"const": kind}, **fields, "delay": delay}, ("action", *required))


def _shared_defs() -> dict[str, Schema]:
    """What every language shares: ids, names, durations, predicates, matchers, actions, goals, fatigue."""
    params = {"type": "object"}
    names_list = {"type": "array", "items": _ref("name"), "uniqueItems": True}
    return {
        "id": {"type": "string", "pattern": _pattern(rule_rules.ID_PATTERN)},
        "name": {"type": "string", "minLength": 1},
        "eventType": {"type": "string", "pattern": _pattern(rule_rules.EVENT_TYPE_PATTERN)},
        "duration": {
            "type": "string",
            "pattern": r"^\s*(?:\d+(?:ms|s|m|h|d|w))+\s*$",
            "description": 'like "500ms", "30m", "47h", "7d", "1d12h"; at most 400 days',
        },
        "positiveDuration": {"$ref": "#/$defs/duration", "not": {"pattern": r"^\s*(?:0+(?:ms|s|m|h|d|w))+\s*$"}},
        "predicate": {
            "oneOf": [
                _compare("field"),
                _compare("profile"),
                _kinds("tag", _ref("name")),
                *_combinators("predicate"),
            ]
        },
        "matcherPredicate": {
            "description": "an event matcher's `where`: field conditions only (profile and tag belong in `if`)",
            "oneOf": [_compare("field"), *_combinators("matcherPredicate")],
        },
        "matcher": _object({"event": _ref("eventType"), "where": _ref("matcherPredicate")}, ("event",)),
        "action": {
            "oneOf": [
                _action(
                    "coupon",
                    {"coupon_id": _ref("name"), "quantity": {"type": "integer", "minimum": 1}, "params": params},
                    ("coupon_id",),
                ),
                _action(
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
                    **_action("tag", {"add": names_list, "remove": names_list}),
                    "anyOf": [
                        {"required": ["add"], "properties": {"add": {"minItems": 1}}},
                        {"required": ["remove"], "properties": {"remove": {"minItems": 1}}},
                    ],
                },
                _action(
                    "message",
                    {
                        "channel": {"enum": list(model.MESSAGE_CHANNELS)},
                        "template": _ref("name"),
                        "params": params,
                        "url": {"type": "string"},
                        "page": {"type": "string"},
                        "miniprogram": {"type": "object"},
                        "transactional": {"type": "boolean"},
                    },
                    ("channel", "template"),
                ),
                _action(
                    "webhook",
                    {
                        "url": {"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s/]"},
                        "body": {"type": "object"},
                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                    ("url",),
                ),
                _action(
                    "notify_staff",
                    {"template": _ref("name"), "params": params, "notify_superior": {"type": "boolean"}},
                    ("template",),
                ),
            ]
        },
        "actions": _list(_ref("action"), rule_rules.MAX_ACTIONS),
        "goal": _object(
            {
                "event": _ref("eventType"),
                "where": _ref("matcherPredicate"),
                "within": _ref("positiveDuration"),
                "value": {**_ref("name"), "description": "the event attribute holding the revenue"},
            },
            ("event", "within"),
        ),
        "fatigue": _object(
            {"max": _bounded_int(1, rule_rules.MAX_FATIGUE), "per": _ref("positiveDuration")}, ("max", "per")
        ),
        "reentry": {
            "oneOf": [
                _object({"policy": {"enum": ["once", "always"]}}, ("policy",)),
                _object({"policy": {"const": "once_per"}, "period": _ref("positiveDuration")}, ("policy", "period")),
            ]
        },
    }


def _pair(second: str) -> Schema:
    return _object(
        {
            "first": _ref("matcher"),
            second: _ref("matcher"),
            "within": _ref("positiveDuration"),
            "correlate": _names(rule_rules.MAX_CORRELATE),
        },
        ("first", second, "within"),
    )


def _threshold() -> Schema:
    common = {
        "match": _ref("matcher"),
        "window": _ref("positiveDuration"),
        "correlate": _names(rule_rules.MAX_CORRELATE),
    }
    return {
        "oneOf": [
            _object({**common, "count": _bounded_int(1, rule_rules.MAX_COUNT)}, ("match", "window", "count")),
            _object(
                {**common, "sum": _ref("name"), "at_least": {"type": "number"}}, ("match", "window", "sum", "at_least")
            ),
        ]
    }


def _document(title: str, description: str, properties: dict[str, Schema], required: tuple[str, ...]) -> Schema:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{BASE}{title.lower()}.json",
        "title": title,
        "description": description,
        **_object(properties, required),
    }


def ruleset_schema() -> Schema:
    """A ruleset: rules, each a pattern (`when`), a condition (`if`) and actions (`then`)."""
    rule = _object(
        {
            "id": _ref("id"),
            "description": {"type": "string"},
            "when": _ref("when"),
            "if": _ref("predicate"),
            "then": _ref("actions"),
            "reentry": _ref("reentry"),
            "priority": {"type": "integer"},
            "lateness": _ref("duration"),
            "goal": _ref("goal"),
        },
        ("id", "when", "then"),
    )
    when = {
        "oneOf": [
            _ref("matcher"),
            _kinds("sequence", _pair("then")),
            _kinds("absence", _pair("missing")),
            _kinds("threshold", _threshold()),
            _kinds("first", _ref("matcher")),
        ]
    }
    schema = _document(
        "Ruleset",
        "Beacon's ruleset language (README: the ruleset language). `id` may be left out on PUT: the URL gives it.",
        {
            "id": _ref("id"),
            "description": {"type": "string"},
            "rules": _list(_ref("rule"), rule_rules.MAX_RULES),
            "fatigue": _ref("fatigue"),
        },
        ("rules",),
    )
    schema["$defs"] = {**_shared_defs(), "rule": rule, "when": when}
    return schema


def _condition_defs() -> dict[str, Schema]:
    """Journey branch conditions: rule predicates plus behaviour (`did`, `did_not`, `sum`) over a window."""
    numeric = {"enum": list(journeys.NUMERIC_OPS)}
    behaviours = [
        _object(
            {
                "did": _ref("matcher"),
                "within": _ref("positiveDuration"),
                "count": _object({"op": numeric, "value": _bounded_int(0, rule_rules.MAX_COUNT)}, ("op", "value")),
            },
            ("did", "within"),
        ),
        _object({"did_not": _ref("matcher"), "within": _ref("positiveDuration")}, ("did_not", "within")),
        _object(
            {
                "sum": _ref("name"),
                "of": _ref("matcher"),
                "within": _ref("positiveDuration"),
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
                _compare("field"),
                _compare("profile"),
                _kinds("tag", _ref("name")),
                _ref("behaviour"),
                *_combinators("condition"),
            ]
        },
        # A segment has no event of its own: no `field` leaves (behaviour matchers keep their `where`).
        "segmentCondition": {
            "oneOf": [
                _compare("profile"),
                _kinds("tag", _ref("name")),
                _ref("behaviour"),
                *_combinators("segmentCondition"),
            ]
        },
    }


def _node() -> Schema:
    label = {"label": {"type": "string"}}
    next_node = {"next": _ref("nodeRef")}
    tz = {"tz": _ref("timeZone")}
    wait_arm = _object(
        {
            "event": _ref("eventType"),
            "where": _ref("matcherPredicate"),
            "correlate": _names(rule_rules.MAX_CORRELATE),
            **next_node,
        },
        ("event",),
    )
    branch_arm = _object({"if": _ref("condition"), **next_node}, ("if",))
    split_arm = _object(
        {"weight": {"type": "number", "exclusiveMinimum": 0}, **next_node, "holdout": {"type": "boolean"}},
        ("weight",),
        description="weights add up to 100; a holdout arm takes no next",
    )
    return {
        "oneOf": [
            _kinds("do", _ref("actions"), **next_node, **label),
            _kinds("wait", _ref("positiveDuration"), **next_node, **label),
            _kinds("until", {"type": "string", "pattern": r"^(?:[01]?\d|2[0-3]):[0-5]\d$"}, **tz, **next_node, **label),
            _kinds("until_profile", _ref("name"), **tz, **next_node, **label),
            {
                **_kinds(
                    "wait_for",
                    _list(wait_arm, journeys.MAX_ARMS),
                    timeout=_ref("positiveDuration"),
                    on_timeout=_ref("nodeRef"),
                    **label,
                ),
                "required": ["wait_for", "timeout"],
            },
            _kinds("branch", _list(branch_arm, journeys.MAX_ARMS), **{"else": _ref("nodeRef")}, **label),
            _kinds("split", _list(split_arm, journeys.MAX_ARMS), salt={"type": "string"}, **label),
            _kinds("exit", {"const": True}, **label),
        ]
    }


def journey_schema() -> Schema:
    """A journey: an entry, a graph of nodes from `start`, exits and a goal."""
    exit_matcher = _object(
        {"event": _ref("eventType"), "where": _ref("matcherPredicate"), "correlate": _names(rule_rules.MAX_CORRELATE)},
        ("event",),
    )
    reentry = {
        "oneOf": [
            _ref("reentry"),
            _object({"max": _bounded_int(1, journeys.MAX_ENTRIES), "per": _ref("positiveDuration")}, ("max",)),
        ]
    }
    schema = _document(
        "Journey",
        "Beacon's journey language (docs/journeys.md). `id` may be left out on PUT: the URL gives it.",
        {
            "id": _ref("id"),
            "description": {"type": "string"},
            "entry": {"oneOf": [_ref("matcher"), _object({"segment": _ref("id")}, ("segment",))]},
            "key": _names(journeys.MAX_KEY),
            "reentry": reentry,
            "exit": _list(exit_matcher, journeys.MAX_EXITS),
            "goal": _ref("goal"),
            "tz": _ref("timeZone"),
            "lateness": _ref("duration"),
            "fatigue": _ref("fatigue"),
            "start": _ref("nodeRef"),
            "nodes": {
                "type": "object",
                "propertyNames": {"pattern": _pattern(journeys.NODE_ID_PATTERN)},
                "additionalProperties": _ref("node"),
                "minProperties": 1,
                "maxProperties": journeys.MAX_NODES,
            },
        },
        ("entry", "start", "nodes"),
    )
    schema["$defs"] = {
        **_shared_defs(),
        **_condition_defs(),
        "timeZone": {"type": "string", "minLength": 1, "description": 'an IANA time zone, like "Asia/Shanghai"'},
        "nodeRef": {"type": "string", "description": "the id of one of the journey's nodes"},
        "node": _node(),
    }
    return schema


def segment_schema() -> Schema:
    """A segment: a named condition over profiles, tags and behaviour."""
    schema = _document(
        "Segment",
        "Beacon's segment language (docs/audiences.md). `id` may be left out on PUT: the URL gives it.",
        {"id": _ref("id"), "description": {"type": "string"}, "where": _ref("segmentCondition")},
        ("where",),
    )
    schema["$defs"] = {**_shared_defs(), **_condition_defs()}
    return schema


def _expression() -> Schema:
    operands = {"type": "array", "items": _ref("audience"), "minItems": 1, "maxItems": audiences.MAX_OPERANDS}
    return {
        "description": 'a reference ("seg:<id>", "aud:<id>") or one set operation over expressions',
        "oneOf": [
            {"type": "string", "pattern": f"^(?:seg|aud):(?:{audiences.ID_PATTERN})$"},
            _kinds("union", operands),
            _kinds("intersect", operands),
            _kinds(
                "exclude",
                _object({"from": _ref("audience"), "minus": {**operands, "minItems": 0}}, ("from", "minus")),
            ),
            _kinds(
                "sample",
                _object(
                    {"of": _ref("audience"), "percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100}},
                    ("of", "percent"),
                ),
            ),
        ],
    }


def plan_schema() -> Schema:
    """A plan: an audience (or branches of them) sent actions or entered into a journey on a schedule."""
    target = {"oneOf": [_ref("actions"), _object({"journey": _ref("id")}, ("journey",))]}
    schedule = {
        **_object(
            {
                "at": {"type": "string", "description": "an ISO date-time (with an offset, a tz, or local)"},
                "cron": {"type": "string", "description": "a cron expression"},
                "tz": _ref("timeZone"),
                "local": {"type": "boolean"},
                "tz_attr": _ref("name"),
            }
        ),
        "oneOf": [
            {"required": ["at"], "not": {"required": ["cron"]}},
            {"required": ["cron"], "not": {"required": ["at"]}},
        ],
        "dependentSchemas": {"tz_attr": {"required": ["local"], "properties": {"local": {"const": True}}}},
    }
    attr_value = {"oneOf": [{"type": "string", "maxLength": 1024}, {"type": "number"}]}
    schema = _document(
        "Plan",
        "Beacon's plan language (docs/audiences.md, Plans). `id` may be left out on PUT: the URL gives it.",
        {
            "id": _ref("id"),
            "description": {"type": "string"},
            "audience": _ref("audience"),
            "then": target,
            "branches": _list(
                _object({"audience": _ref("audience"), "then": target}, ("audience", "then")),
                plan_rules.MAX_BRANCHES,
            ),
            "schedule": schedule,
            "rate": _bounded_int(1, plan_rules.MAX_RATE),
            "limit": _object(
                {"per_user": _bounded_int(1, 10_000), "per": _ref("positiveDuration")}, ("per_user", "per")
            ),
            "fatigue": _ref("fatigue"),
            "attrs": {
                "type": "object",
                "maxProperties": plan_rules.MAX_ATTRS,
                "propertyNames": {"not": {"enum": ["plan", "occurrence", "branch", "local"]}},
                "additionalProperties": attr_value,
            },
            "late_after": _ref("positiveDuration"),
            "goal": _ref("goal"),
        },
        ("schedule",),
    )
    schema["oneOf"] = [
        {"required": ["audience", "then"], "not": {"required": ["branches"]}},
        {"required": ["branches"], "not": {"anyOf": [{"required": ["audience"]}, {"required": ["then"]}]}},
    ]
    schema["$defs"] = {
        **_shared_defs(),
        "audience": _expression(),
        "timeZone": {"type": "string", "minLength": 1, "description": 'an IANA time zone, like "Asia/Shanghai"'},
    }
    return schema


def language_schemas() -> dict[str, Schema]:
    """Every language's schema by name (`ruleset`, `journey`, `segment`, `plan`)."""
    return {
        "ruleset": ruleset_schema(),
        "journey": journey_schema(),
        "segment": segment_schema(),
        "plan": plan_schema(),
    }
