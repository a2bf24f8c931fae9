"""Shared fixtures: a real Redis-compatible server for the session, a flushed client per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from beacon.redis_server import EmbeddedCluster, EmbeddedRedis
from beacon.services import connect
from beacon.settings import Settings


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One private server on a free loopback port; fails fast if it cannot start."""
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the session server."""
    return redis_server.url


@pytest.fixture
async def redis_client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    """A client on a freshly flushed database."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A 3-master Redis Cluster on loopback for the session (started on first use)."""
    cluster = EmbeddedCluster(Path(tmp_path_factory.mktemp("cluster")))
    cluster.start()
    yield cluster
    cluster.stop()


async def flushed_client(url: str) -> aioredis.Redis:
    """A client for `url` (single server or `redis+cluster://`) on emptied databases."""
    client = connect(Settings(redis_url=url))
    if url.startswith("redis+cluster://"):
        await client.flushall(target_nodes="primaries")  # type: ignore[call-arg]  # cluster-only keyword
    else:
        await client.flushall()
    return client
