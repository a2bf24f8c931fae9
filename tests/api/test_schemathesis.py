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
from typing import Any

import msgpack
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from api.openapi import OPENAPI
from beacon.redis_server import EmbeddedRedis
from tests.harness import running_beacon, server_settings

pytestmark = pytest.mark.schemathesis

# Per operation and generation mode. ~60 operations: a few thousand requests, about a minute per Python.
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


def _schema(*, coverage: bool) -> Any:
    loaded = schemathesis.openapi.from_dict(OPENAPI)
    loaded.config.generation.update(modes=list(GenerationMode), max_examples=EXAMPLES, deterministic=True)
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


@language_schema.parametrize()
@BOUNDED
def test_no_document_answers_a_server_error(case: schemathesis.Case, base_url: str) -> None:
    """Rulesets, journeys, segments and plans, valid by their JSON Schemas or not: never a 5xx."""
    case.call_and_validate(base_url=base_url, checks=[not_a_server_error], timeout=30)
