"""Scenario tests run twice: against a single Redis and against a 3-master Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from tests.conftest import flushed_client
from tests.harness import Beacon, running_beacon, server_settings


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


# Scenario servers start their manual clock at T0 and run 2 partitions (test_seed_scenarios.T0, PARTITIONS).
LIVE_T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
LIVE_PARTITIONS = 2


@pytest.fixture
def clock() -> ManualClock:
    """The scenario's server clock, at T0 until the test moves it."""
    return ManualClock(LIVE_T0)


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis, clock: ManualClock) -> AsyncIterator[Beacon]:
    """The real app on a real socket, on the scenario's backend and clock."""
    async with running_beacon(server_settings(redis_url, partitions=LIVE_PARTITIONS), clock=clock) as running:
        yield running


@dataclass
class Live:
    """A running server, its Redis and the clock it reads."""

    beacon: Beacon
    redis: aioredis.Redis
    clock: ManualClock


@pytest.fixture
async def live(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Live]:
    """One server per test function; cases are isolated by fresh ruleset / journey, user and event ids."""
    clock = ManualClock(LIVE_T0)
    async with running_beacon(server_settings(redis_url, partitions=LIVE_PARTITIONS), clock=clock) as beacon:
        yield Live(beacon, redis_client, clock)
