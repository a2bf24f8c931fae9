"""Scenario tests run twice: against a single Redis and against a 3-master Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.conftest import flushed_client


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """The server URL for this run of the scenario: `redis://` or `redis+cluster://`."""
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("redis_server").url)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the scenario's backend, on emptied databases."""
    client = await flushed_client(redis_url)
    yield client
    await client.aclose()
