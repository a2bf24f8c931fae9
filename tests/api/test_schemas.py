"""The document languages' JSON Schemas (`api.wire.languages`): served at /v1/schemas/*.json, every library
document fits its schema, and the invalid documents of the parsers' own tests are refused by the schema too,
except for the few reasons JSON Schema cannot say (each listed here with why)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis.asyncio as aioredis

from api.wire.languages import NAMES, language_schemas
from rules.journey_schema import parse_journey
from rules.plans import parse_plan
from rules.schema import RulesetInvalid, parse_ruleset
from rules.segments import parse_segment
from tests.harness import Beacon, running_beacon, server_settings
from tests.rules import test_journey_schema as journey_cases
from tests.rules import test_plans as plan_cases
from tests.rules import test_schema as ruleset_cases

LIBRARY = Path(__file__).resolve().parents[2] / "rules" / "library"
SCHEMAS = language_schemas()
VALIDATORS = {name: jsonschema.Draft202012Validator(schema) for name, schema in SCHEMAS.items()}
PARSERS: dict[str, Callable[[Any], object]] = {
    "ruleset": parse_ruleset,
    "journey": parse_journey,
    "segment": parse_segment,
    "plan": parse_plan,
}

# Refusals only the parsers can make. JSON Schema's `integer` takes 2.0; NaN and Infinity are not JSON (the
# parser sees them from Python callers); templates need the template parser; a duration's bound needs its
# value; cron expressions and IANA zones need their libraries; a document's `id` is required only when no URL
# names it, and the published schema serves both.
PARSER_ONLY = (
    "must be an integer >= 1",
    "must be a finite number",
    "is not a template",
    "malformed template",
    "must be at most 400d",
    "must be at least 1s",
    "is not a cron expression",
    "is not a time zone",
    "a plan at each user's local time sends actions",
)


def parser_only(path: str | None, message: str) -> bool:
    """Whether JSON Schema cannot express the refusal (`path`, `message`) of a parser."""
    return any(reason in message for reason in PARSER_ONLY) or (path == "id" and message == "is required")


def cases_of(test: Callable[..., None]) -> list[Any]:
    """The parameter rows of a parser test: its invalid documents, as that test states them."""
    return list(test.pytestmark[0].args[1])  # type: ignore[attr-defined]  # set by @pytest.mark.parametrize


def invalid_rulesets() -> list[Any]:
    documents = [row[0] for row in cases_of(ruleset_cases.test_top_level_errors)]
    documents += [ruleset_cases.doc_with(**row[0]) for row in cases_of(ruleset_cases.test_when_errors)]
    documents += [ruleset_cases.doc_with(**row[0]) for row in cases_of(ruleset_cases.test_rule_errors)]
    documents += [ruleset_cases.doc_with(**{"if": row[0]}) for row in cases_of(ruleset_cases.test_predicate_errors)]
    documents += [ruleset_cases.doc_with(then=[row[0]]) for row in cases_of(ruleset_cases.test_action_errors)]
    return documents


def invalid_journeys() -> list[Any]:
    """From tests/rules/test_journey_schema.py (its cases are asserted inline, so they are restated here)."""
    doc_with, end = journey_cases.doc_with, journey_cases.END
    wait_for = {"wait_for": [{"event": "click", "next": "end"}], "timeout": "1x"}
    return [
        doc_with(entry={"event": "pay", "on": 1}),
        doc_with(exit=[]),
        doc_with(exit=[{"event": "x"}] * 21),
        doc_with(goal={"event": "pay"}),
        doc_with(key=["sku", "sku"]),
        doc_with(key=[f"k{index}" for index in range(9)]),
        doc_with(reentry={"max": 0}),
        doc_with(reentry={"max": 10_001}),
        doc_with(reentry={"policy": "once_per"}),
        doc_with(reentry={"policy": "sometimes"}),
        doc_with({"a": {"until": "10:00", "tz": 8, "next": "end"}, "end": end}),
        doc_with({"a": wait_for, "end": end}),
        doc_with({"a": {"wait": "0s", "next": "end"}, "end": end}),
        doc_with({"a": {"wait_for": [{"event": "click", "next": "end"}]}, "end": end}),
        *(doc_with({"a": {"until": bad, "next": "end"}, "end": end}) for bad in ("24:00", "10:60", "10", "ten")),
        doc_with(lateness="soon"),
        doc_with({"a": {"next": "end"}, "end": end}),
        doc_with({"a": {"do": [journey_cases.COUPON], "wait": "1d"}, "end": end}),
        doc_with({"a": {"do": [journey_cases.COUPON], "next": "end"}, "end": {"exit": False}}),
        doc_with({"a": {"do": [{"action": "fax"}], "next": "end"}, "end": end}),
        doc_with({"a": {"do": [journey_cases.COUPON] * 21}}),
        doc_with({"a": "end"}),
        doc_with({"a": {"do": [journey_cases.COUPON], "next": "b c"}, "b c": end}),
        doc_with({}),
        [],
    ]


def invalid_segments() -> list[Any]:
    """Segments the parser refuses: a `field` leaf (a segment has no event), no `where`, a bad combinator."""
    return [
        {"id": "s", "where": {"field": "x", "op": "==", "value": 1}},
        {"id": "s", "where": {"all": [{"tag": "vip"}, {"not": {"field": "x", "op": "exists"}}]}},
        {"id": "s"},
        {"id": "s", "where": {"tag": ""}},
        {"id": "s", "where": {"did": {"event": "pay"}}},
        {"id": "s", "where": {"did_not": {"event": "pay"}, "within": "1x"}},
        {"id": "s", "where": {"sum": "amount", "of": {"event": "pay"}, "within": "30d", "op": "~", "value": 1}},
        {"id": "s", "where": {"tag": "vip"}, "name": "x"},
    ]


def invalid_plans() -> list[Any]:
    return [{"id": "p", **row[0]} for row in cases_of(plan_cases.test_bad_plans_name_their_paths)]


INVALID = {
    "ruleset": invalid_rulesets(),
    "journey": invalid_journeys(),
    "segment": invalid_segments(),
    "plan": invalid_plans(),
}


def library(kind: str) -> list[Path]:
    folder = {"ruleset": LIBRARY, "journey": LIBRARY / "journeys", "segment": LIBRARY / "segments"}[kind]
    return sorted(folder.glob("*.json"))


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    async with running_beacon(server_settings(redis_url)) as running:
        yield running


@pytest.mark.parametrize("name", NAMES)
async def test_each_schema_is_served_open_for_editors(beacon: Beacon, name: str) -> None:
    async with beacon.session.get(beacon.url(f"/v1/schemas/{name}.json")) as response:
        assert response.status == 200
        assert response.content_type == "application/schema+json"
        served = json.loads(await response.read())
    assert served == SCHEMAS[name]
    jsonschema.Draft202012Validator.check_schema(served)


async def test_an_unknown_schema_is_a_404_naming_the_ones_there_are(beacon: Beacon) -> None:
    status, body = await beacon.call("GET", "/v1/schemas/rules.json")
    assert status == 404 and body["error"]["path"] == "name"
    assert "ruleset.json" in body["error"]["message"]


@pytest.mark.parametrize("kind", ["ruleset", "journey", "segment"])
def test_every_library_document_fits_its_schema(kind: str) -> None:
    paths = library(kind)
    assert paths, f"no {kind} in the library"
    for path in paths:
        document = json.loads(path.read_text())
        PARSERS[kind](document)  # the parser takes it: the schema must too
        errors = [f"{error.json_path}: {error.message}" for error in VALIDATORS[kind].iter_errors(document)]
        assert not errors, f"{path.name}: {errors[:3]}"


@pytest.mark.parametrize("kind", NAMES)
def test_the_documents_the_parsers_refuse_the_schema_refuses(kind: str) -> None:
    """Each invalid document of the parsers' tests: refused by its parser, and by the schema unless every
    reason the parser gives is one JSON Schema cannot express."""
    documents = INVALID[kind]
    assert len(documents) >= 8
    slipped = []
    for document in documents:
        with pytest.raises(RulesetInvalid) as refused:
            PARSERS[kind](document)
        reasons = [(error.path, error.message) for error in refused.value.errors]
        if VALIDATORS[kind].is_valid(document) and not all(parser_only(*reason) for reason in reasons):
            slipped.append((json.dumps(document)[:200], reasons))
    assert not slipped, f"the {kind} schema takes documents its parser refuses: {slipped}"


def test_the_schemas_refuse_most_of_what_the_parsers_refuse() -> None:
    """The exemptions stay exemptions: nearly every invalid document is caught by the schema alone."""
    for kind, documents in INVALID.items():
        caught = sum(not VALIDATORS[kind].is_valid(document) for document in documents)
        assert caught >= 0.6 * len(documents), (kind, caught, len(documents))
