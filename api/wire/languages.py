"""JSON Schemas (draft 2020-12) of the document languages, built from the parsers' own constants: rulesets,
journeys, segments and plans, served at `GET /v1/schemas/{name}.json` for editors and referenced by the
OpenAPI document.

The parsers (`rules.schema`, `rules.journey_schema`, `rules.segments`, `rules.plans`) stay the judges: a
schema says the shape (fields, kinds, patterns, bounds); what JSON Schema cannot say is theirs alone: a
`next` naming an existing node, reachability and cycles, split weights adding up to 100, duplicate rule
ids, templates that render, cron expressions and IANA zones that exist, durations within their bounds.
"""

from __future__ import annotations

from api.wire.language_parts import (
    Schema,
    bounded_int,
    bounded_list,
    closed_object,
    condition_defs,
    full_match,
    keyed,
    ref,
    shared_defs,
    unique_names,
)
from rules import audiences
from rules import journey_schema as journeys
from rules import plans as plan_rules
from rules import schema as rule_rules

BASE = "https://beacon.invalid/v1/schemas/"  # an identifier (never fetched): editors resolve $defs inside
NAMES = ("ruleset", "journey", "segment", "plan")


def _pair(second: str) -> Schema:
    return closed_object(
        {
            "first": ref("matcher"),
            second: ref("matcher"),
            "within": ref("positiveDuration"),
            "correlate": unique_names(rule_rules.MAX_CORRELATE),
        },
        ("first", second, "within"),
    )


def _threshold() -> Schema:
    common = {
        "match": ref("matcher"),
        "window": ref("positiveDuration"),
        "correlate": unique_names(rule_rules.MAX_CORRELATE),
    }
    return {
        "oneOf": [
            closed_object({**common, "count": bounded_int(1, rule_rules.MAX_COUNT)}, ("match", "window", "count")),
            closed_object(
                {**common, "sum": ref("name"), "at_least": {"type": "number"}}, ("match", "window", "sum", "at_least")
            ),
        ]
    }


def _document(title: str, description: str, properties: dict[str, Schema], required: tuple[str, ...]) -> Schema:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{BASE}{title.lower()}.json",
        "title": title,
        "description": description,
        **closed_object(properties, required),
    }


def ruleset_schema() -> Schema:
    """A ruleset: rules, each a pattern (`when`), a condition (`if`) and actions (`then`)."""
    rule = closed_object(
        {
            "id": ref("id"),
            "description": {"type": "string"},
            "when": ref("when"),
            "if": ref("predicate"),
            "then": ref("actions"),
            "reentry": ref("reentry"),
            "priority": {"type": "integer"},
            "lateness": ref("duration"),
            "goal": ref("goal"),
        },
        ("id", "when", "then"),
    )
    when = {
        "oneOf": [
            ref("matcher"),
            keyed("sequence", _pair("then")),
            keyed("absence", _pair("missing")),
            keyed("threshold", _threshold()),
            keyed("first", ref("matcher")),
        ]
    }
    schema = _document(
        "Ruleset",
        "Beacon's ruleset language (README: the ruleset language). `id` may be left out on PUT: the URL gives it.",
        {
            "id": ref("id"),
            "description": {"type": "string"},
            "rules": bounded_list(ref("rule"), rule_rules.MAX_RULES),
            "fatigue": ref("fatigue"),
        },
        ("rules",),
    )
    schema["$defs"] = {**shared_defs(), "rule": rule, "when": when}
    return schema


def _node() -> Schema:
    label = {"label": {"type": "string"}}
    next_node = {"next": ref("nodeRef")}
    tz = {"tz": ref("timeZone")}
    wait_arm = closed_object(
        {
            "event": ref("eventType"),
            "where": ref("matcherPredicate"),
            "correlate": unique_names(rule_rules.MAX_CORRELATE),
            **next_node,
        },
        ("event",),
    )
    branch_arm = closed_object({"if": ref("condition"), **next_node}, ("if",))
    split_arm = closed_object(
        {"weight": {"type": "number", "exclusiveMinimum": 0}, **next_node, "holdout": {"type": "boolean"}},
        ("weight",),
        description="weights add up to 100; a holdout arm takes no next",
    )
    return {
        "oneOf": [
            keyed("do", ref("actions"), **next_node, **label),
            keyed("wait", ref("positiveDuration"), **next_node, **label),
            keyed("until", {"type": "string", "pattern": r"^(?:[01]?\d|2[0-3]):[0-5]\d$"}, **tz, **next_node, **label),
            keyed("until_profile", ref("name"), **tz, **next_node, **label),
            {
                **keyed(
                    "wait_for",
                    bounded_list(wait_arm, journeys.MAX_ARMS),
                    timeout=ref("positiveDuration"),
                    on_timeout=ref("nodeRef"),
                    **label,
                ),
                "required": ["wait_for", "timeout"],
            },
            keyed("branch", bounded_list(branch_arm, journeys.MAX_ARMS), **{"else": ref("nodeRef")}, **label),
            keyed("split", bounded_list(split_arm, journeys.MAX_ARMS), salt={"type": "string"}, **label),
            keyed("exit", {"const": True}, **label),
        ]
    }


def journey_schema() -> Schema:
    """A journey: an entry, a graph of nodes from `start`, exits and a goal."""
    exit_matcher = closed_object(
        {
            "event": ref("eventType"),
            "where": ref("matcherPredicate"),
            "correlate": unique_names(rule_rules.MAX_CORRELATE),
        },
        ("event",),
    )
    reentry = {
        "oneOf": [
            ref("reentry"),
            closed_object({"max": bounded_int(1, journeys.MAX_ENTRIES), "per": ref("positiveDuration")}, ("max",)),
        ]
    }
    schema = _document(
        "Journey",
        "Beacon's journey language (docs/journeys.md). `id` may be left out on PUT: the URL gives it.",
        {
            "id": ref("id"),
            "description": {"type": "string"},
            "entry": {"oneOf": [ref("matcher"), closed_object({"segment": ref("id")}, ("segment",))]},
            "key": unique_names(journeys.MAX_KEY),
            "reentry": reentry,
            "exit": bounded_list(exit_matcher, journeys.MAX_EXITS),
            "goal": ref("goal"),
            "tz": ref("timeZone"),
            "lateness": ref("duration"),
            "fatigue": ref("fatigue"),
            "start": ref("nodeRef"),
            "nodes": {
                "type": "object",
                "propertyNames": {"pattern": full_match(journeys.NODE_ID_PATTERN)},
                "additionalProperties": ref("node"),
                "minProperties": 1,
                "maxProperties": journeys.MAX_NODES,
            },
        },
        ("entry", "start", "nodes"),
    )
    schema["$defs"] = {
        **shared_defs(),
        **condition_defs(),
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
        {"id": ref("id"), "description": {"type": "string"}, "where": ref("segmentCondition")},
        ("where",),
    )
    schema["$defs"] = {**shared_defs(), **condition_defs()}
    return schema


def _expression() -> Schema:
    operands = {"type": "array", "items": ref("audience"), "minItems": 1, "maxItems": audiences.MAX_OPERANDS}
    return {
        "description": 'a reference ("seg:<id>", "aud:<id>") or one set operation over expressions',
        "oneOf": [
            {"type": "string", "pattern": f"^(?:seg|aud):(?:{audiences.ID_PATTERN})$"},
            keyed("union", operands),
            keyed("intersect", operands),
            keyed(
                "exclude",
                closed_object({"from": ref("audience"), "minus": {**operands, "minItems": 0}}, ("from", "minus")),
            ),
            keyed(
                "sample",
                closed_object(
                    {"of": ref("audience"), "percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100}},
                    ("of", "percent"),
                ),
            ),
        ],
    }


def plan_schema() -> Schema:
    """A plan: an audience (or branches of them) sent actions or entered into a journey on a schedule."""
    target = {"oneOf": [ref("actions"), closed_object({"journey": ref("id")}, ("journey",))]}
    schedule = {
        **closed_object(
            {
                "at": {"type": "string", "description": "an ISO date-time (with an offset, a tz, or local)"},
                "cron": {"type": "string", "description": "a cron expression"},
                "tz": ref("timeZone"),
                "local": {"type": "boolean"},
                "tz_attr": ref("name"),
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
            "id": ref("id"),
            "description": {"type": "string"},
            "audience": ref("audience"),
            "then": target,
            "branches": bounded_list(
                closed_object({"audience": ref("audience"), "then": target}, ("audience", "then")),
                plan_rules.MAX_BRANCHES,
            ),
            "schedule": schedule,
            "rate": bounded_int(1, plan_rules.MAX_RATE),
            "limit": closed_object(
                {"per_user": bounded_int(1, 10_000), "per": ref("positiveDuration")}, ("per_user", "per")
            ),
            "fatigue": ref("fatigue"),
            "attrs": {
                "type": "object",
                "maxProperties": plan_rules.MAX_ATTRS,
                "propertyNames": {"not": {"enum": ["plan", "occurrence", "branch", "local"]}},
                "additionalProperties": attr_value,
            },
            "late_after": ref("positiveDuration"),
            "goal": ref("goal"),
        },
        ("schedule",),
    )
    schema["oneOf"] = [
        {"required": ["audience", "then"], "not": {"required": ["branches"]}},
        {"required": ["branches"], "not": {"anyOf": [{"required": ["audience"]}, {"required": ["then"]}]}},
    ]
    schema["$defs"] = {
        **shared_defs(),
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
