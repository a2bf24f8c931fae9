"""Regressions for the inputs schemathesis found answering 5xx (tests/api/test_schemathesis.py): each is now a
4xx JSON error naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.harness import Beacon, running_beacon, server_settings


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    async with running_beacon(server_settings(redis_url)) as running:
        yield running


@pytest.mark.parametrize("entry_id", ["85330013011328964359-288791", "1-18446744073709551616", "١-٠"])
async def test_a_dead_letter_id_redis_cannot_read_is_a_422(beacon: Beacon, entry_id: str) -> None:
    """A stream id past 64 bits (or in non-ASCII digits) reached XRANGE, whose refusal answered 503 "retry"."""
    status, body = await beacon.call("POST", "/v1/dead-letters:replay", json={"ids": ["1-0", entry_id]})
    assert status == 422, body
    assert body["error"]["path"] == "ids"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"all": True, "connectors": "sms"}, "connectors"),
        ({"all": True, "limit": "5"}, "limit"),
        ({"ids": ["1-0"], "limit": 0}, "limit"),
        ({"ids": ["1-0"], "all": "yes"}, "all"),
        ({"ids": ["1-0"], "connector": 7}, "connector"),
    ],
)
async def test_a_replay_field_the_handler_would_ignore_is_a_422(beacon: Beacon, body: object, path: str) -> None:
    """A misspelt or mistyped replay field was ignored: `connectors` replayed every connector's dead letters."""
    status, reply = await beacon.call("POST", "/v1/dead-letters:replay", json=body)
    assert status == 422, reply
    assert reply["error"]["path"] == path


async def test_a_deeply_nested_replay_body_is_a_400(beacon: Beacon) -> None:
    """request.json() recursed once per level: a 10,000-deep array was a RecursionError and a 500."""
    deep = b"[" * 10_000 + b"]" * 10_000
    status, reply = await beacon.call(
        "POST", "/v1/dead-letters:replay", data=deep, headers={"Content-Type": "application/json"}
    )
    assert status == 400, reply
    assert reply["error"]["path"] == "body"
