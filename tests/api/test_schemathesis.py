"""schemathesis over the generated OpenAPI document, against the real app on a real socket and a real Redis:
positive and negative inputs for every operation, and not one may answer 5xx (`not_a_server_error`).

Bounded for CI: a fixed number of examples per operation, derandomized so a run is reproducible (a failure
prints the case as a curl command). The server's traffic is also held to the route table (`tests.wire_check`)
when the module's server stops.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from api.openapi import OPENAPI
from beacon.redis_server import EmbeddedRedis
from tests.harness import running_beacon, server_settings

pytestmark = pytest.mark.schemathesis

# Per operation and generation mode (the coverage phase adds each parameter's boundary values): about 5,000
# requests over ~80 operations, a minute or so per Python version.
EXAMPLES = 25


def _packable(value: Any) -> Any:
    """`value` with the integers msgpack cannot carry (beyond 64 bits) as floats: the nearest body it can send."""
    if isinstance(value, dict):
        return {key: _packable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_packable(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return float(value)
    return value


@schemathesis.serializer("application/msgpack")
def _msgpack(context: Any, value: Any) -> bytes:
    return bytes(msgpack.packb(_packable(value), use_bin_type=True))


@schemathesis.serializer("text/csv", "application/x-ndjson")
def _lines(context: Any, value: Any) -> bytes:
    # Negative cases send other JSON values where the document asks for text.
    return (value if isinstance(value, str) else json.dumps(value)).encode("utf-8", "surrogatepass")


def _schema(*, coverage: bool, examples: int = EXAMPLES) -> Any:
    loaded = schemathesis.openapi.from_dict(OPENAPI)
    loaded.config.generation.update(modes=list(GenerationMode), max_examples=examples, deterministic=True)
    if not coverage:
        loaded.config.phases.update(phases=["examples", "fuzzing"])
    # The WebSocket upgrade and the console's static files are not request/response operations to fuzz.
    return loaded.exclude(path_regex=r"^/(v1/ingest|console)")


# The document languages (PUT and :validate of rulesets, journeys, segments, plans) take large recursive
# schemas, whose coverage phase (every boundary of every keyword) runs to 7,500 cases and 35 s for one
# operation: they are fuzzed only, and the parsers have their own bad-input tests (tests/rules).
LANGUAGE_OPERATIONS = r"^/v1/(rulesets|journeys|segments|plans)(:validate|/\{id\})$"
schema = _schema(coverage=True).exclude(path_regex=LANGUAGE_OPERATIONS, method=["PUT", "POST"])
language_schema = _schema(coverage=False).include(path_regex=LANGUAGE_OPERATIONS, method=["PUT", "POST"])

# Random ids mostly meet a 404 before the handler reaches its real work: a third pass fixes the path to
# documents the fixture stores (a ruleset, journey, segment, audience and plan all named SEEDED, an item
# index, a user with an alias), so dry-runs, backfills, reports, plan verbs and members pages run for real.
SEEDED = "beacon-demo"
seeded_schema = (
    _schema(coverage=True, examples=EXAMPLES // 2)
    .include(path_regex=r"\{(id|attr|user_id)\}")
    .exclude(method=["DELETE", "PUT"])
)
seeded_schema.config.update(
    parameters={"path.id": SEEDED, "path.attr": "sku", "path.user_id": "u1", "path.type": "phone"}
)


@pytest.fixture(scope="module")
def base_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The app served from its own event loop in a thread: schemathesis calls it synchronously (requests)."""
    redis.Redis.from_url(redis_server.url).flushall()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="schemathesis-server", daemon=True)
    thread.start()
    served = running_beacon(server_settings(redis_server.url))
    try:
        beacon = asyncio.run_coroutine_threadsafe(served.__aenter__(), loop).result(60)
        yield beacon.url("").rstrip("/")
        asyncio.run_coroutine_threadsafe(served.__aexit__(None, None, None), loop).result(60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


BOUNDED = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))


@schema.parametrize()
@BOUNDED
def test_no_input_answers_a_server_error(case: schemathesis.Case, base_url: str) -> None:
    """Whatever the document allows (and some of what it refuses): a 2xx or a 4xx JSON error, never a 5xx."""
    case.call_and_validate(base_url=base_url, checks=[not_a_server_error], timeout=30)


@pytest.fixture(scope="module")
def seeded_url(base_url: str) -> str:
    """The module's server with one document of each kind named SEEDED, an item index and a user."""
    library = Path(__file__).resolve().parents[2] / "rules" / "library"
    ruleset = json.loads((library / "cart-recovery.json").read_text())
    journey = json.loads((library / "journeys" / "cart-recovery.json").read_text())
    segment = json.loads((library / "segments" / "new-fans-no-order.json").read_text())
    coupon = {"action": "coupon", "coupon_id": "C-1"}
    plan = {"audience": f"aud:{SEEDED}", "schedule": {"cron": "0 10 * * 1"}, "then": [coupon]}
    events = [{"user_id": f"u{n}", "type": "add_to_cart", "attrs": {"sku": "S-1"}} for n in range(5)]
    with requests.Session() as session:
        for method, path, body in (
            ("PUT", f"/v1/rulesets/{SEEDED}", {**ruleset, "id": SEEDED}),
            ("PUT", f"/v1/journeys/{SEEDED}", {**journey, "id": SEEDED}),
            ("PUT", f"/v1/segments/{SEEDED}", {**segment, "id": SEEDED}),
            ("PUT", f"/v1/audiences/{SEEDED}", {"ids": ["u1", "u2"]}),
            ("PUT", f"/v1/plans/{SEEDED}", plan),
            ("PUT", "/v1/items/indexes/sku", {"events": ["add_to_cart"], "window": "30d"}),
            ("POST", "/v1/events", {"events": events}),
            ("POST", "/v1/identities", {"user_id": "u1", "aliases": [{"type": "phone", "id": SEEDED}]}),
        ):
            reply = session.request(method, base_url + path, json=body, timeout=30)
            assert reply.status_code in (200, 202), (path, reply.text)
    return base_url


@seeded_schema.parametrize()
@BOUNDED
def test_no_input_on_stored_documents_answers_a_server_error(case: schemathesis.Case, seeded_url: str) -> None:
    """The same, with the path naming documents that exist: the handlers' work past the lookup is fuzzed too."""
    case.call_and_validate(base_url=seeded_url, checks=[not_a_server_error], timeout=30)


@language_schema.parametrize()
@BOUNDED
def test_no_document_answers_a_server_error(case: schemathesis.Case, base_url: str) -> None:
    """Rulesets, journeys, segments and plans, valid by their JSON Schemas or not: never a 5xx."""
    case.call_and_validate(base_url=base_url, checks=[not_a_server_error], timeout=30)
