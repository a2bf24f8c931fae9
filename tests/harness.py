"""A running Beacon (real app on a real socket, real Redis) and the HTTP calls tests make on it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import msgpack
import msgspec
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from api.app import build_app
from api.ingest_ws import HUB, IngestHub
from beacon.clock import Clock
from beacon.settings import Settings
from cep import streams
from cep.events import decode_batch
from tests.wire_check import watch

T = TypeVar("T")


def server_settings(redis_url: str, **overrides: Any) -> Settings:
    """Settings for a test server: fast polling, two partitions, no delivery (actions stay pending)."""
    base = Settings(redis_url=redis_url, partitions=2, worker_block_ms=20, lateness_ms=2000, run_connectors=False)
    # No event archive unless a test asks for one (with a data_dir of its own): the default is the working directory.
    base = msgspec.structs.replace(base, archive=False)
    # Scenario traces stamp events days ahead of the manual clock they then advance: a year of leeway.
    base = msgspec.structs.replace(base, max_future_ms=365 * 86_400_000)
    return msgspec.structs.replace(base, **overrides)


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout_s: float = 5.0) -> T:
    """Poll `probe` until `done(result)` or the deadline; returns the last result either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if done(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.01)


@dataclasses.dataclass
class Beacon:
    """A test client bound to one running server."""

    server: TestServer
    session: aiohttp.ClientSession
    headers: dict[str, str]

    def url(self, path: str) -> str:
        """Absolute URL of an API path."""
        return str(self.server.make_url(path))

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """Status and decoded JSON body of one request."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        async with self.session.request(method, self.url(path), headers=headers, **kwargs) as response:
            body = (
                await response.json(content_type=None)
                if response.content_type != "text/plain"
                else await response.text()
            )
            return response.status, body

    async def put_ruleset(self, document: dict[str, Any]) -> int:
        """PUT a ruleset; returns its version (asserts success)."""
        status, body = await self.call("PUT", f"/v1/rulesets/{document['id']}", json=document)
        assert status == 200, body
        return int(body["version"])

    async def post_events(self, events: list[dict[str, Any]], *, msgpack_body: bool = False) -> tuple[int, Any]:
        """POST a batch of events as JSON or msgpack."""
        if msgpack_body:
            data = msgpack.packb({"events": events})
            return await self.call("POST", "/v1/events", data=data, headers={"Content-Type": "application/msgpack"})
        return await self.call("POST", "/v1/events", json={"events": events})

    async def actions(self, user_id: str | None = None, rule: str | None = None) -> list[dict[str, Any]]:
        """The ledger as `GET /v1/actions` shows it."""
        params = {key: value for key, value in (("user_id", user_id), ("rule", rule)) if value}
        status, body = await self.call("GET", "/v1/actions", params=params)
        assert status == 200, body
        return list(body["actions"])

    async def wait_actions(self, user_id: str, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Poll a user's actions until there are at least `count` (or the deadline passes)."""
        return await eventually(lambda: self.actions(user_id), lambda found: len(found) >= count, timeout_s)


async def stream_event_ids(redis: aioredis.Redis, partitions: int) -> list[str]:
    """Event ids in every partition's stream, in stream order per partition."""
    ids: list[str] = []
    for partition in range(partitions):
        for _entry_id, fields in await redis.xrange(streams.events_key(partition)):
            ids.extend(event.event_id for event in decode_batch(fields[streams.BATCH_FIELD]))
    return ids


def ingest_hub(beacon: Beacon) -> IngestHub:
    """The WebSocket ingest's bookkeeping (open sockets, frames in flight) of a running server."""
    return beacon.server.app[HUB]  # type: ignore[index]  # TestServer.app is typed Optional


@asynccontextmanager
async def running_beacon(
    settings: Settings, clock: Clock | None = None, api_key: str | None = None
) -> AsyncIterator[Beacon]:
    """Start the real app on a loopback port; stop it (and its workers) on exit. Every request it accepted and
    every reply it sent must fit the route table (`tests.wire_check`): a test whose traffic does not fails."""
    app = build_app(settings, clock)
    wire_problems = watch(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    session = aiohttp.ClientSession()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        yield Beacon(server, session, headers)
    finally:
        await session.close()
        await server.close()
    assert not wire_problems, (
        "traffic that does not fit the route table (api/wire: the OpenAPI models); change the model or the"
        " handler:\n" + "\n".join(wire_problems[:20])
    )
