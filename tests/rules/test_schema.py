"""Ruleset validation: documents into model dataclasses, and every problem named by its JSON path."""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beacon.errors import ValidationError
from rules.model import (
    Absence,
    Action,
    AllOf,
    AnyOf,
    Compare,
    Fatigue,
    First,
    HasTag,
    Matcher,
    Not,
    Reentry,
    Rule,
    Ruleset,
    Sequence,
    Single,
    Threshold,
)
from rules.schema import RulesetInvalid, parse_ruleset

DESIGN_EXAMPLE = json.loads(
    """
{
  "id": "cart-recovery",
  "description": "Remind shoppers who carted but did not pay",
  "rules": [{
    "id": "cart-no-pay-30m",
    "when": {"absence": {
      "first":   {"event": "add_to_cart", "where": {"all": [{"field": "price", "op": ">=", "value": 50}]}},
      "missing": {"event": "pay"},
      "correlate": ["sku"],
      "within": "30m"}},
    "if": {"all": [{"tag": "vip"}, {"profile": "region", "op": "in", "value": ["SH", "BJ"]}]},
    "then": [
      {"action": "message", "channel": "sms", "template": "cart_reminder", "params": {"sku": "{{event.sku}}"}},
      {"action": "tag", "add": ["cart_abandoner"]},
      {"action": "coupon", "coupon_id": "C-10OFF", "delay": "5s"}],
    "reentry": {"policy": "once_per", "period": "1d"},
    "priority": 10
  }]
}
"""
)

PAY = {"event": "pay"}
COUPON = {"action": "coupon", "coupon_id": "C1"}

EXPECTED_TEMPLATES = '(expected event.<name>, profile.<name>, user_id, rule_id, ruleset_id or link "https://...")'


def doc_with(**rule: Any) -> dict[str, Any]:
    """A one-rule document; `rule` fields override a minimal valid rule."""
    base: dict[str, Any] = {"id": "r1", "when": PAY, "then": [COUPON]}
    base.update(rule)
    return {"id": "rs", "rules": [base]}


def only_rule(**rule: Any) -> Rule:
    return parse_ruleset(doc_with(**rule)).rules[0]


def problems(doc: object, **kwargs: Any) -> list[tuple[str | None, str]]:
    """Every (path, message) the validator reports for `doc`."""
    with pytest.raises(RulesetInvalid) as caught:
        parse_ruleset(doc, **kwargs)
    return [(error.path, error.message) for error in caught.value.errors]


def problem(doc: object, **kwargs: Any) -> tuple[str | None, str]:
    """The single problem reported for `doc`."""
    found = problems(doc, **kwargs)
    assert len(found) == 1, found
    return found[0]


# -- valid documents -----------------------------------------------------------------------------


def test_design_example_parses_to_the_expected_model() -> None:
    expected = Ruleset(
        id="cart-recovery",
        description="Remind shoppers who carted but did not pay",
        version=0,
        rules=(
            Rule(
                id="cart-no-pay-30m",
                when=Absence(
                    first=Matcher("add_to_cart", AllOf((Compare("field", "price", ">=", 50),))),
                    missing=Matcher("pay"),
                    within_ms=30 * 60_000,
                    correlate=("sku",),
                ),
                condition=AllOf((HasTag("vip"), Compare("profile", "region", "in", ("SH", "BJ")))),
                actions=(
                    Action(
                        "message", {"channel": "sms", "template": "cart_reminder", "params": {"sku": "{{event.sku}}"}}
                    ),
                    Action("tag", {"add": ["cart_abandoner"]}),
                    Action("coupon", {"coupon_id": "C-10OFF"}, delay_ms=5_000),
                ),
                reentry=Reentry("once_per", 86_400_000),
                priority=10,
                lateness_ms=2_000,
            ),
        ),
    )
    assert parse_ruleset(DESIGN_EXAMPLE) == expected


def test_parsing_does_not_alias_the_document() -> None:
    doc = copy.deepcopy(DESIGN_EXAMPLE)
    ruleset = parse_ruleset(doc)
    doc["rules"][0]["then"][0]["params"]["sku"] = "changed"
    assert ruleset.rules[0].actions[0].params["params"] == {"sku": "{{event.sku}}"}


def test_each_pattern_kind() -> None:
    assert only_rule(when={"event": "pay", "where": {"field": "amount", "op": ">=", "value": 1000}}).when == Single(
        Matcher("pay", Compare("field", "amount", ">=", 1000))
    )
    assert only_rule(
        when={"sequence": {"first": {"event": "view"}, "then": PAY, "within": "10m", "correlate": ["sku", "shop"]}}
    ).when == Sequence(Matcher("view"), Matcher("pay"), 600_000, ("sku", "shop"))
    assert only_rule(when={"threshold": {"match": PAY, "count": 3, "window": "7d"}}).when == Threshold(
        Matcher("pay"), 7 * 86_400_000, at_least=3, sum_field=None
    )
    assert only_rule(when={"threshold": {"match": PAY, "sum": "amount", "at_least": 99.5, "window": "1h"}}).when == (
        Threshold(Matcher("pay"), 3_600_000, at_least=99.5, sum_field="amount")
    )
    assert only_rule(when={"first": {"event": "signup", "where": {"field": "src", "op": "exists"}}}).when == First(
        Matcher("signup", Compare("field", "src", "exists", None))
    )


@pytest.mark.parametrize(
    ("when", "reentry"),
    [
        (PAY, Reentry("always")),
        ({"sequence": {"first": PAY, "then": PAY, "within": "10m"}}, Reentry("once_per", 600_000)),
        ({"absence": {"first": PAY, "missing": PAY, "within": "30m"}}, Reentry("once_per", 1_800_000)),
        ({"threshold": {"match": PAY, "count": 2, "window": "1d"}}, Reentry("once_per", 86_400_000)),
        ({"first": PAY}, Reentry("once")),
    ],
)
def test_default_reentry_follows_the_pattern(when: dict[str, Any], reentry: Reentry) -> None:
    assert only_rule(when=when).reentry == reentry


def test_explicit_reentry_policies() -> None:
    assert only_rule(reentry={"policy": "once"}).reentry == Reentry("once", 0)
    assert only_rule(reentry={"policy": "always"}).reentry == Reentry("always", 0)
    assert only_rule(reentry={"policy": "once_per", "period": "2h"}).reentry == Reentry("once_per", 7_200_000)


def test_rule_defaults_and_lateness() -> None:
    rule = only_rule()
    assert (rule.priority, rule.lateness_ms, rule.description, rule.condition) == (0, 2_000, "", None)
    assert parse_ruleset(doc_with(), default_lateness_ms=5_000).rules[0].lateness_ms == 5_000
    assert only_rule(lateness="0s").lateness_ms == 0
    assert only_rule(lateness="1m", priority=-3, description="d").lateness_ms == 60_000


def test_ruleset_id_from_the_url() -> None:
    doc = doc_with()
    del doc["id"]
    assert parse_ruleset(doc, ruleset_id="from-url").id == "from-url"
    assert parse_ruleset(doc_with(), ruleset_id="rs").id == "rs"


def test_predicates_of_every_shape_in_if() -> None:
    condition = {
        "any": [
            {"not": {"tag": "blocked"}},
            {"field": "sku", "op": "prefix", "value": "A-"},
            {"profile": "level", "op": "<", "value": 3},
            {"profile": "nick", "op": "exists", "value": True},
            {"field": "tags", "op": "contains", "value": "red"},
            {"field": "city", "op": "not_in", "value": ["SH", 1, True]},
            {"field": "ok", "op": "!=", "value": False},
            {"all": []},
        ]
    }
    assert only_rule(**{"if": condition}).condition == AnyOf(
        (
            Not(HasTag("blocked")),
            Compare("field", "sku", "prefix", "A-"),
            Compare("profile", "level", "<", 3),
            Compare("profile", "nick", "exists", None),
            Compare("field", "tags", "contains", "red"),
            Compare("field", "city", "not_in", ("SH", 1, True)),
            Compare("field", "ok", "!=", False),
            AllOf(()),
        )
    )


def test_every_action_type_keeps_its_fields_as_params() -> None:
    then = [
        {"action": "coupon", "coupon_id": "C1", "quantity": 2, "params": {"k": 1}},
        {"action": "points", "amount": -50, "reason": "refund"},
        {"action": "points", "amount": "{{event.points}}"},
        {"action": "tag", "remove": ["new"], "delay": "47h"},
        {
            "action": "message",
            "channel": "miniprogram_subscribe",
            "template": "t1",
            "params": {"name": "{{ profile.name }}"},
            "url": "https://x.example/{{user_id}}",
            "page": "pages/index",
            "miniprogram": {"appid": "wx1"},
        },
        {"action": "webhook", "url": "https://hooks.example/x", "body": {"u": "{{user_id}}"}, "headers": {"X-K": "v"}},
        {"action": "notify_staff", "template": "call_back", "params": {}, "notify_superior": True},
    ]
    actions = only_rule(then=then).actions
    assert [(action.type, action.delay_ms) for action in actions] == [
        ("coupon", 0),
        ("points", 0),
        ("points", 0),
        ("tag", 47 * 3_600_000),
        ("message", 0),
        ("webhook", 0),
        ("notify_staff", 0),
    ]
    assert actions[0].params == {"coupon_id": "C1", "quantity": 2, "params": {"k": 1}}
    assert actions[2].params == {"amount": "{{event.points}}"}
    assert actions[3].params == {"remove": ["new"]}
    assert actions[5].params["headers"] == {"X-K": "v"}


def test_limits_are_inclusive() -> None:
    rules = [{"id": f"r{index}", "when": PAY, "then": [COUPON] * 20} for index in range(500)]
    assert len(parse_ruleset({"id": "big", "rules": rules}).rules) == 500
    only_rule(when={"sequence": {"first": PAY, "then": PAY, "within": "1s", "correlate": [f"c{i}" for i in range(8)]}})
    only_rule(**{"if": {"field": "x", "op": "in", "value": list(range(1000))}})
    only_rule(then=[{**COUPON, "delay": "400d"}])
    only_rule(then=[{**COUPON, "max_staleness": "1s"}, {**COUPON, "max_staleness": "400d"}])
    only_rule(when={"threshold": {"match": PAY, "count": 10_000, "window": "1d"}})
    only_rule(id="a" * 64)


def nested(depth: int) -> dict[str, Any]:
    """A predicate `depth` levels deep: depth-1 `not`s around a tag."""
    predicate: dict[str, Any] = {"tag": "vip"}
    for _ in range(depth - 1):
        predicate = {"not": predicate}
    return predicate


def test_nesting_depth_limit() -> None:
    only_rule(**{"if": nested(16)})
    path = "rules[0].if" + ".not" * 16
    assert problem(doc_with(**{"if": nested(17)})) == (path, "nests deeper than 16 levels")


# -- errors: paths and messages ------------------------------------------------------------------


def test_design_error_example() -> None:
    doc = copy.deepcopy(DESIGN_EXAMPLE)
    doc["rules"][0]["when"]["absence"]["within"] = "30x"
    assert problem(doc) == ("rules[0].when.absence.within", '"30x" is not a duration')


@pytest.mark.parametrize("within", ["99999999999999999999999d", "401d", "58w"])
def test_durations_are_bounded_to_400_days(within: str) -> None:
    # An unbounded window validated, then failed every encode of its state (issue 15, finding 4).
    doc = copy.deepcopy(DESIGN_EXAMPLE)
    doc["rules"][0]["when"]["absence"]["within"] = within
    assert problem(doc) == ("rules[0].when.absence.within", "must be at most 400d")


def test_errors_are_collected_in_document_order() -> None:
    doc = {
        "id": "rs",
        "rules": [
            {
                "id": "a",
                "when": {"event": "pay", "wher": {}},
                "then": [{"action": "coupon"}, {"action": "points", "amount": True}],
                "priority": "high",
            },
            {"id": "a", "when": {"first": {"event": "x"}}, "then": [{"action": "tag", "add": ["t"], "delay": "-1s"}]},
        ],
    }
    assert problems(doc) == [
        ("rules[0].when.wher", 'unknown field "wher" (expected one of: event, where)'),
        ("rules[0].then[0].coupon_id", "is required"),
        ("rules[0].then[1].amount", 'must be a non-zero integer or one template like "{{event.points}}"'),
        ("rules[0].priority", "must be an integer"),
        ("rules[1].id", 'duplicate rule id "a"'),
        ("rules[1].then[0].delay", '"-1s" is not a duration'),
    ]


def test_ruleset_invalid_carries_the_first_error_and_serialises_all() -> None:
    with pytest.raises(RulesetInvalid) as caught:
        parse_ruleset({"id": "bad id", "rules": []})
    error = caught.value
    assert isinstance(error, ValidationError)
    assert (error.path, error.status, error.code) == ("id", 422, "invalid")
    assert error.message.startswith('"bad id" is not a valid id')
    assert error.to_json() == {
        "error": {
            "code": "invalid",
            "message": error.message,
            "path": "id",
            "errors": [
                {"path": "id", "message": error.message},
                {"path": "rules", "message": "must be a non-empty list"},
            ],
        }
    }
    assert str(error) == f"id: {error.message} (and 1 more)"


@pytest.mark.parametrize(
    ("doc", "path", "message"),
    [
        ([], None, "must be an object"),
        ({"rules": [{"id": "r", "when": PAY, "then": [COUPON]}]}, "id", "is required"),
        ({"id": "rs"}, "rules", "is required"),
        ({"id": "rs", "rules": {}}, "rules", "must be a non-empty list"),
        (
            {"id": "rs", "rules": [{"id": "r", "when": PAY, "then": [COUPON]}], "name": "x"},
            "name",
            'unknown field "name" (expected one of: id, description, rules, fatigue)',
        ),
        (
            {"id": "rs", "description": 5, "rules": [{"id": "r", "when": PAY, "then": [COUPON]}]},
            "description",
            "must be a string",
        ),
        (
            {"id": "_rs", "rules": [{"id": "r", "when": PAY, "then": [COUPON]}]},
            "id",
            '"_rs" is not a valid id (1-64 letters, digits, "_", "." or "-"; starts with a letter or digit)',
        ),
        ({"id": "rs", "rules": ["r"]}, "rules[0]", "must be an object"),
    ],
)
def test_top_level_errors(doc: object, path: str | None, message: str) -> None:
    assert problem(doc) == (path, message)


def test_too_many_rules() -> None:
    rules = [{"id": f"r{index}", "when": PAY, "then": [COUPON]} for index in range(501)]
    assert problem({"id": "rs", "rules": rules}) == ("rules", "must have at most 500 rules")


def test_ruleset_id_mismatch_with_the_url() -> None:
    assert problem(doc_with(), ruleset_id="other") == ("id", '"rs" does not match the id in the URL "other"')
    doc = doc_with()
    del doc["id"]
    assert problem(doc, ruleset_id="bad/id")[0] == "id"


@pytest.mark.parametrize(
    ("rule", "path", "message"),
    [
        ({"when": None}, "rules[0].when", "must be an object"),
        (
            {"when": {"evnt": "pay"}},
            "rules[0].when",
            'must be an event matcher {"event": ...} or one of: sequence, absence, threshold, first',
        ),
        (
            {"when": {"event": ""}},
            "rules[0].when.event",
            '"" is not an event type (1-64 letters, digits, "_", ".", ":" or "-")',
        ),
        (
            {"when": {"event": 5}},
            "rules[0].when.event",
            '5 is not an event type (1-64 letters, digits, "_", ".", ":" or "-")',
        ),
        (
            {"when": {"first": PAY, "sequence": {}}},
            "rules[0].when",
            "takes exactly one of: sequence, absence, threshold, first (found: first, sequence)",
        ),
        (
            {"when": {"first": PAY, "within": "1m"}},
            "rules[0].when.within",
            'unknown field "within" (expected one of: first)',
        ),
        ({"when": {"sequence": {"first": PAY, "then": PAY}}}, "rules[0].when.sequence.within", "is required"),
        (
            {"when": {"sequence": {"first": PAY, "then": PAY, "within": "0s"}}},
            "rules[0].when.sequence.within",
            "must be longer than 0",
        ),
        (
            {"when": {"sequence": {"first": PAY, "then": PAY, "within": 60}}},
            "rules[0].when.sequence.within",
            'must be a duration string like "30m"',
        ),
        (
            {"when": {"absence": {"first": PAY, "missing": PAY, "within": "1m", "correlate": "sku"}}},
            "rules[0].when.absence.correlate",
            "must be a list",
        ),
        (
            {"when": {"absence": {"first": PAY, "missing": PAY, "within": "1m", "correlate": ["a", ""]}}},
            "rules[0].when.absence.correlate[1]",
            "must be a non-empty string",
        ),
        (
            {"when": {"absence": {"first": PAY, "missing": PAY, "within": "1m", "correlate": ["a", "a"]}}},
            "rules[0].when.absence.correlate[1]",
            'duplicate "a"',
        ),
        (
            {"when": {"absence": {"first": PAY, "missing": PAY, "within": "1m", "correlate": list("abcdefghi")}}},
            "rules[0].when.absence.correlate",
            "must have at most 8 items",
        ),
        ({"when": {"threshold": {"match": PAY, "window": "1d"}}}, "rules[0].when.threshold", 'needs "count" or "sum"'),
        (
            {"when": {"threshold": {"match": PAY, "count": 2, "sum": "x", "at_least": 1, "window": "1d"}}},
            "rules[0].when.threshold",
            'takes "count" or "sum", not both',
        ),
        (
            {"when": {"threshold": {"match": PAY, "count": 2, "at_least": 5, "window": "1d"}}},
            "rules[0].when.threshold.at_least",
            'not allowed with "count" (the count is the threshold)',
        ),
        (
            {"when": {"threshold": {"match": PAY, "sum": "amount", "window": "1d"}}},
            "rules[0].when.threshold.at_least",
            'is required with "sum"',
        ),
        (
            {"when": {"threshold": {"match": PAY, "count": 0, "window": "1d"}}},
            "rules[0].when.threshold.count",
            "must be an integer >= 1",
        ),
        (
            {"when": {"threshold": {"match": PAY, "count": 2.0, "window": "1d"}}},
            "rules[0].when.threshold.count",
            "must be an integer >= 1",
        ),
        (
            {"when": {"threshold": {"match": PAY, "count": True, "window": "1d"}}},
            "rules[0].when.threshold.count",
            "must be an integer >= 1",
        ),
        (
            {"when": {"threshold": {"match": PAY, "count": 10_001, "window": "1d"}}},
            "rules[0].when.threshold.count",
            "must be at most 10000",
        ),
        (
            {"when": {"threshold": {"match": PAY, "sum": "x", "at_least": "5", "window": "1d"}}},
            "rules[0].when.threshold.at_least",
            "must be a number",
        ),
        (
            {"when": {"threshold": {"match": PAY, "sum": "x", "at_least": float("inf"), "window": "1d"}}},
            "rules[0].when.threshold.at_least",
            "must be a finite number",
        ),
        (
            {"when": {"threshold": {"match": PAY, "count": 1, "window": "0ms"}}},
            "rules[0].when.threshold.window",
            "must be longer than 0",
        ),
        ({"when": {"first": {"event": "x", "where": []}}}, "rules[0].when.first.where", "must be an object"),
    ],
)
def test_when_errors(rule: dict[str, Any], path: str, message: str) -> None:
    assert problem(doc_with(**rule)) == (path, message)


@pytest.mark.parametrize(
    ("rule", "path", "message"),
    [
        (
            {"id": None},
            "rules[0].id",
            'null is not a valid id (1-64 letters, digits, "_", "." or "-"; starts with a letter or digit)',
        ),
        (
            {"id": "a" * 65},
            "rules[0].id",
            f'"{"a" * 65}" is not a valid id (1-64 letters, digits, "_", "." or "-"; starts with a letter or digit)',
        ),
        (
            {"wen": PAY},
            "rules[0].wen",
            'unknown field "wen" (expected one of: id, description, when, if, then, reentry, priority, lateness, goal)',
        ),
        ({"then": []}, "rules[0].then", "must be a non-empty list"),
        ({"then": [COUPON] * 21}, "rules[0].then", "must have at most 20 actions"),
        ({"priority": 1.5}, "rules[0].priority", "must be an integer"),
        ({"priority": True}, "rules[0].priority", "must be an integer"),
        ({"lateness": "2"}, "rules[0].lateness", '"2" is not a duration'),
        (
            {"reentry": {"policy": "sometimes"}},
            "rules[0].reentry.policy",
            '"sometimes" is not a policy (expected one of: once, once_per, always)',
        ),
        ({"reentry": {"policy": "once_per"}}, "rules[0].reentry.period", 'is required with "once_per"'),
        ({"reentry": {"policy": "once", "period": "1d"}}, "rules[0].reentry.period", 'not allowed with "once"'),
        ({"reentry": {"policy": "once_per", "period": "0s"}}, "rules[0].reentry.period", "must be longer than 0"),
        ({"reentry": {}}, "rules[0].reentry.policy", "is required"),
        ({"reentry": "once"}, "rules[0].reentry", "must be an object"),
    ],
)
def test_rule_errors(rule: dict[str, Any], path: str, message: str) -> None:
    assert problem(doc_with(**rule)) == (path, message)


OPS = "==, !=, >, >=, <, <=, in, not_in, contains, exists, prefix"


@pytest.mark.parametrize(
    ("condition", "path", "message"),
    [
        ({"field": "x", "op": "~=", "value": 1}, "rules[0].if.op", f'"~=" is not an operator (expected one of: {OPS})'),
        ({"field": "x", "value": 1}, "rules[0].if.op", "is required"),
        ({"field": "", "op": "==", "value": 1}, "rules[0].if.field", "must be a non-empty string"),
        ({"field": "x", "op": "=="}, "rules[0].if.value", "is required"),
        ({"field": "x", "op": "==", "value": None}, "rules[0].if.value", "must be a string, number or boolean"),
        ({"field": "x", "op": "==", "value": [1]}, "rules[0].if.value", "must be a string, number or boolean"),
        ({"field": "x", "op": "!=", "value": float("nan")}, "rules[0].if.value", "must be a finite number"),
        ({"field": "x", "op": ">", "value": "5"}, "rules[0].if.value", "must be a number"),
        ({"field": "x", "op": "<=", "value": True}, "rules[0].if.value", "must be a number"),
        ({"field": "x", "op": "in", "value": []}, "rules[0].if.value", "must be a non-empty list"),
        ({"field": "x", "op": "not_in", "value": "SH"}, "rules[0].if.value", "must be a non-empty list"),
        (
            {"field": "x", "op": "in", "value": ["a", {"b": 1}]},
            "rules[0].if.value[1]",
            "must be a string, number or boolean",
        ),
        ({"field": "x", "op": "in", "value": list(range(1001))}, "rules[0].if.value", "must have at most 1000 items"),
        ({"field": "x", "op": "contains", "value": {}}, "rules[0].if.value", "must be a string, number or boolean"),
        ({"field": "x", "op": "prefix", "value": ""}, "rules[0].if.value", "must be a non-empty string"),
        ({"field": "x", "op": "prefix", "value": 5}, "rules[0].if.value", "must be a non-empty string"),
        ({"field": "x", "op": "exists", "value": False}, "rules[0].if.value", '"exists" takes no value (or true)'),
        ({"profile": "x", "op": "exists", "value": 1}, "rules[0].if.value", '"exists" takes no value (or true)'),
        ({"tag": ""}, "rules[0].if.tag", "must be a non-empty string"),
        ({"tag": "vip", "op": "=="}, "rules[0].if.op", 'unknown field "op" (expected one of: tag)'),
        ({"all": {}}, "rules[0].if.all", "must be a list"),
        ({"any": [{"tag": "a"}, 3]}, "rules[0].if.any[1]", "must be an object"),
        ({"not": [{"tag": "a"}]}, "rules[0].if.not", "must be an object"),
        ({}, "rules[0].if", "takes exactly one of: field, profile, tag, all, any, not"),
        (
            {"field": "x", "profile": "y", "op": "exists"},
            "rules[0].if",
            "takes exactly one of: field, profile, tag, all, any, not (found: field, profile)",
        ),
        (
            {"all": [{"any": [{"field": "a", "op": "in", "value": 1}]}]},
            "rules[0].if.all[0].any[0].value",
            "must be a non-empty list",
        ),
    ],
)
def test_predicate_errors(condition: dict[str, Any], path: str, message: str) -> None:
    assert problem(doc_with(**{"if": condition})) == (path, message)


def test_a_misspelt_field_is_reported_with_the_field_it_leaves_missing() -> None:
    when = {"absence": {"first": PAY, "then": PAY, "within": "1m"}}
    assert problems(doc_with(when=when)) == [
        ("rules[0].when.absence.then", 'unknown field "then" (expected one of: first, missing, within, correlate)'),
        ("rules[0].when.absence.missing", "is required"),
    ]
    assert problems(doc_with(**{"if": {"field": "x", "op": "==", "valu": 1}})) == [
        ("rules[0].if.valu", 'unknown field "valu" (expected one of: field, op, value)'),
        ("rules[0].if.value", "is required"),
    ]


def test_profile_and_tag_leaves_are_not_allowed_in_a_matcher() -> None:
    when = {
        "sequence": {
            "first": {
                "event": "a",
                "where": {"all": [{"field": "x", "op": "exists"}, {"profile": "r", "op": "==", "value": 1}]},
            },
            "then": {"event": "b", "where": {"not": {"tag": "vip"}}},
            "within": "1m",
        }
    }
    assert problems(doc_with(when=when)) == [
        ("rules[0].when.sequence.first.where.all[1]", 'profile conditions belong in the rule\'s "if"'),
        ("rules[0].when.sequence.then.where.not", 'tag conditions belong in the rule\'s "if"'),
    ]


def test_field_leaves_are_allowed_in_if() -> None:
    assert only_rule(**{"if": {"field": "amount", "op": ">", "value": 0}}).condition == Compare(
        "field", "amount", ">", 0
    )


@pytest.mark.parametrize(
    ("action", "path", "message"),
    [
        ({}, "rules[0].then[0].action", "is required"),
        (
            {"action": "sms"},
            "rules[0].then[0].action",
            '"sms" is not an action (expected one of: coupon, points, tag, message, webhook, notify_staff)',
        ),
        (
            {"action": "coupon", "coupon_id": "C", "amount": 5},
            "rules[0].then[0].amount",
            'unknown field "amount" (expected one of: action, coupon_id, quantity, params, delay, max_staleness)',
        ),
        ({"action": "coupon", "coupon_id": ""}, "rules[0].then[0].coupon_id", "must be a non-empty string"),
        ({"action": "coupon", "coupon_id": "C", "quantity": 0}, "rules[0].then[0].quantity", "must be an integer >= 1"),
        ({"action": "coupon", "coupon_id": "C", "params": []}, "rules[0].then[0].params", "must be an object"),
        ({"action": "coupon", "coupon_id": "C", "delay": "401d"}, "rules[0].then[0].delay", "must be at most 400d"),
        (
            {"action": "coupon", "coupon_id": "C", "max_staleness": "500ms"},
            "rules[0].then[0].max_staleness",
            "must be at least 1s",
        ),
        (
            {"action": "coupon", "coupon_id": "C", "max_staleness": "401d"},
            "rules[0].then[0].max_staleness",
            "must be at most 400d",
        ),
        (
            {"action": "coupon", "coupon_id": "C", "delay": 5},
            "rules[0].then[0].delay",
            'must be a duration string like "30m"',
        ),
        ({"action": "points"}, "rules[0].then[0].amount", "is required"),
        (
            {"action": "points", "amount": 0},
            "rules[0].then[0].amount",
            'must be a non-zero integer or one template like "{{event.points}}"',
        ),
        (
            {"action": "points", "amount": "10 {{event.x}}"},
            "rules[0].then[0].amount",
            'must be a non-zero integer or one template like "{{event.points}}"',
        ),
        (
            {"action": "points", "amount": "{{evnt.x}}"},
            "rules[0].then[0].amount",
            '"{{evnt.x}}" is not a template ' + EXPECTED_TEMPLATES,
        ),
        ({"action": "points", "amount": 5, "reason": 5}, "rules[0].then[0].reason", "must be a string"),
        ({"action": "tag"}, "rules[0].then[0]", 'needs a non-empty "add" or "remove"'),
        ({"action": "tag", "add": [], "remove": []}, "rules[0].then[0]", 'needs a non-empty "add" or "remove"'),
        ({"action": "tag", "add": ["a", 1]}, "rules[0].then[0].add[1]", "must be a non-empty string"),
        ({"action": "tag", "add": "vip"}, "rules[0].then[0].add", "must be a list"),
        ({"action": "message", "template": "t"}, "rules[0].then[0].channel", "is required"),
        (
            {"action": "message", "channel": "fax", "template": "t"},
            "rules[0].then[0].channel",
            '"fax" is not a channel (expected one of: sms, wechat_template, wechat_cs, miniprogram_subscribe, wecom)',
        ),
        (
            {"action": "message", "channel": "sms", "template": "t", "miniprogram": "x"},
            "rules[0].then[0].miniprogram",
            "must be an object",
        ),
        (
            {"action": "message", "channel": "sms", "template": "t", "params": {"a": ["ok", "{{ x }}"]}},
            "rules[0].then[0].params.a[1]",
            '"{{ x }}" is not a template ' + EXPECTED_TEMPLATES,
        ),
        (
            {"action": "message", "channel": "sms", "template": "t", "page": "p/{{event.x"},
            "rules[0].then[0].page",
            'malformed template: "{{" without a matching "}}"',
        ),
        (
            {"action": "message", "channel": "sms", "template": "t", "params": {"a": float("nan")}},
            "rules[0].then[0].params.a",
            "must be a finite number",
        ),
        ({"action": "webhook", "url": "ftp://x"}, "rules[0].then[0].url", "must be an http:// or https:// URL"),
        ({"action": "webhook", "url": "https://"}, "rules[0].then[0].url", "must be an http:// or https:// URL"),
        (
            {"action": "webhook", "url": "https://x", "headers": {"A": 1}},
            "rules[0].then[0].headers.A",
            "must be a string",
        ),
        (
            {"action": "webhook", "url": "https://x", "body": {"q": "{{profile}}"}},
            "rules[0].then[0].body.q",
            '"{{profile}}" is not a template ' + EXPECTED_TEMPLATES,
        ),
        (
            {"action": "notify_staff", "template": "t", "notify_superior": "yes"},
            "rules[0].then[0].notify_superior",
            "must be a boolean",
        ),
        ({"action": "notify_staff"}, "rules[0].then[0].template", "is required"),
        ("coupon", "rules[0].then[0]", "must be an object"),
    ],
)
def test_action_errors(action: object, path: str, message: str) -> None:
    assert problem(doc_with(then=[action])) == (path, message)


def test_every_template_error_in_one_string_is_reported() -> None:
    action = {"action": "message", "channel": "sms", "template": "t", "url": "https://x/{{a}}/{{b}}"}
    assert [path for path, _ in problems(doc_with(then=[action]))] == ["rules[0].then[0].url"] * 2


def test_templates_are_only_checked_in_actions() -> None:
    # Outside action params `{{` is plain text: an event type or description may not be templated.
    assert only_rule(description="uses {{foo}} literally").description == "uses {{foo}} literally"


def test_action_params_must_be_shallow_json() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(15):
        deep = {"k": deep}
    only_rule(then=[{"action": "webhook", "url": "https://x", "body": deep}])  # 16 levels of objects
    action = {"action": "webhook", "url": "https://x", "body": {"k": deep}}
    assert problem(doc_with(then=[action])) == ("rules[0].then[0].body" + ".k" * 16, "nests deeper than 16 levels")
    action = {"action": "webhook", "url": "https://x", "body": {"when": datetime.date(2024, 1, 1)}}
    assert problem(doc_with(then=[action])) == ("rules[0].then[0].body.when", "must be a JSON value")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
SLOTS = [
    ("id",),
    ("rules", 0, "when"),
    ("rules", 0, "when", "absence", "within"),
    ("rules", 0, "when", "absence", "first", "where"),
    ("rules", 0, "if"),
    ("rules", 0, "if", "all", 1, "value"),
    ("rules", 0, "then", 0),
    ("rules", 0, "then", 0, "params"),
    ("rules", 0, "then", 2, "delay"),
    ("rules", 0, "reentry"),
]


@settings(max_examples=300, deadline=None)
@given(slot=st.sampled_from(SLOTS), value=JSON)
def test_any_json_anywhere_gives_a_ruleset_or_named_errors(slot: tuple[str | int, ...], value: object) -> None:
    doc = copy.deepcopy(DESIGN_EXAMPLE)
    parent = doc
    for step in slot[:-1]:
        parent = parent[step]
    parent[slot[-1]] = value
    try:
        parse_ruleset(doc)
    except RulesetInvalid as invalid:
        assert invalid.errors
        assert all(error.message and (error.path or "").startswith(str(slot[0])) for error in invalid.errors)


def test_a_message_may_be_marked_transactional_with_a_boolean() -> None:
    """`transactional` exempts a message from the marketing fatigue cap: only true or false."""
    base = {"id": "r", "rules": [{"id": "a", "when": {"event": "pay"}, "then": []}]}
    message = {"action": "message", "channel": "sms", "template": "shipped"}
    base["rules"][0]["then"] = [{**message, "transactional": True}]
    assert parse_ruleset(base).rules[0].actions[0].params["transactional"] is True
    base["rules"][0]["then"] = [{**message, "transactional": "yes"}]
    with pytest.raises(RulesetInvalid) as refused:
        parse_ruleset(base)
    assert (refused.value.path, refused.value.message) == ("rules[0].then[0].transactional", "must be a boolean")


def test_a_ruleset_may_cap_its_marketing_messages_per_user() -> None:
    base = {"id": "r", "rules": [{"id": "a", "when": {"event": "pay"}, "then": [{"action": "tag", "add": ["x"]}]}]}
    assert parse_ruleset({**base, "fatigue": {"max": 3, "per": "7d"}}).fatigue == Fatigue(3, 7 * 86_400_000)
    with pytest.raises(RulesetInvalid) as refused:
        parse_ruleset({**base, "fatigue": {"max": 0, "per": "7d", "extra": 1}})
    assert [(e.path, e.message) for e in refused.value.errors] == [
        ("fatigue.max", "must be an integer from 1 to 1000"),
        ("fatigue.extra", 'unknown field "extra" (expected one of: max, per)'),
    ]
