"""A hung Redis (SIGSTOP) with a short Redis timeout: `POST /v1/events` and `GET /v1/rulesets` answer 503 with
Retry-After within a bound set by that timeout, instead of waiting on the frozen server (a single server held
a request 5 s, a cluster node 55 s: redis-py's own default timeout, retried ten times by its cluster client);
once Redis runs again, every acknowledged event is processed once.

The server runs in the test's process, with `BEACON_REDIS_TIMEOUT_MS` short (`Settings.redis_timeout_ms`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.crc import key_slot

from beacon.services import connect
from beacon.settings import Settings
from cep.events import partition_of
from rules.store import REV_KEY
from tests.chaos.backends import RedisUnderTest
from tests.chaos.observe import ledgers, sample, settled, trigger_of
from tests.chaos.processes import progress_counts
from tests.harness import Beacon, running_beacon, server_settings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]

TIMEOUT_MS = 500
# A request's Redis calls run one after another and the first to time out answers it (a cluster pipeline adds
# its 0.25 s pause); the rest is slack for a loaded machine. Without a timeout the answer took 5 s or more.
ANSWER_WITHIN_S = TIMEOUT_MS / 1000 + 2.0
PARTITIONS = 6
RECOVERY_S = 30.0  # for the refused batch to be acknowledged once Redis runs, and for the backlog to drain
RULESET = {
    "id": "hang",
    "rules": [{"id": "paid", "when": {"event": "pay"}, "then": [{"action": "coupon", "coupon_id": "C-1"}]}],
}


@dataclass
class Answer:
    """What one request got: its status (None: nothing within ANSWER_WITHIN_S), Retry-After, and when."""

    status: int | None
    retry_after: str | None
    seconds: float


async def _timed(beacon: Beacon, method: str, path: str, **kwargs: Any) -> Answer:
    """One request, given up (status None) once ANSWER_WITHIN_S have passed."""
    started = time.monotonic()
    try:
        async with beacon.session.request(
            method, beacon.url(path), timeout=aiohttp.ClientTimeout(total=ANSWER_WITHIN_S), **kwargs
        ) as response:
            await response.read()
            return Answer(response.status, response.headers.get("Retry-After"), time.monotonic() - started)
    except TimeoutError:
        return Answer(None, None, time.monotonic() - started)


@asynccontextmanager
async def _frozen(pid: int) -> AsyncIterator[None]:
    """The server stopped (SIGSTOP: its sockets stay open and nothing answers) until the block ends."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _users_on(backend: RedisUnderTest, server: int, count: int) -> list[str]:
    """`count` user ids whose partitions the server holds (so their appends wait on it)."""
    held = set(backend.partitions_on(server, PARTITIONS))
    assert held, f"server {server} holds none of the {PARTITIONS} partitions"
    return [user for user in (f"u{n}" for n in range(10_000)) if partition_of(user, PARTITIONS) in held][:count]


def _events(first: int, users: list[str]) -> list[dict[str, Any]]:
    return [
        {"event_id": f"h{first + n}", "user_id": user, "type": "pay", "attrs": {"amount": 1}}
        for n, user in enumerate(users)
    ]


async def _acknowledged(beacon: Beacon, events: list[dict[str, Any]], deadline: float) -> None:
    """Post `events` (resending the same ids, as a client told 503 does) until they are acknowledged."""
    while True:
        status, body = await beacon.post_events(events)
        if status == 200 and not body.get("errors"):
            return
        assert status == 503 and time.monotonic() < deadline, (status, body)
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("kind", ["single", "cluster"])
async def test_hung_redis_answers_503_within_the_redis_timeout(tmp_path: Path, kind: str) -> None:
    """During a SIGSTOP the API answers 503 + Retry-After within the Redis timeout; acked events are processed once."""
    backend = RedisUnderTest(kind, tmp_path / "redis")
    backend.start()
    # The server of the ruleset store's slot (on a cluster; the only one otherwise): both requests wait on it.
    server = backend.cluster.node_of_slot(key_slot(REV_KEY.encode())) if backend.cluster else 0
    pid = int((backend.servers[server].data_dir / "server.pid").read_text())
    users = _users_on(backend, server, 10)
    redis = connect(Settings(redis_url=backend.url))
    try:
        async with running_beacon(
            server_settings(backend.url, partitions=PARTITIONS, redis_timeout_ms=TIMEOUT_MS)
        ) as beacon:
            await beacon.put_ruleset(RULESET)
            before, held_up, after = _events(0, users), _events(100, users), _events(200, users)
            await _acknowledged(beacon, before, time.monotonic() + RECOVERY_S)
            async with _frozen(pid):
                posted, listed = await asyncio.gather(
                    _timed(beacon, "POST", "/v1/events", json={"events": held_up}),
                    _timed(beacon, "GET", "/v1/rulesets"),
                )
            deadline = time.monotonic() + RECOVERY_S
            for answer in (posted, listed):
                assert answer.status == 503 and answer.retry_after, (
                    f"wanted 503 with Retry-After within {ANSWER_WITHIN_S}s, got {answer}"
                )
            await _acknowledged(beacon, held_up, deadline)
            await _acknowledged(beacon, after, deadline)
            await settled(redis, PARTITIONS, deadline)
            books = await ledgers(redis, PARTITIONS, users)
            counts = await progress_counts(redis, list(range(PARTITIONS)))
    finally:
        await redis.aclose()
        backend.stop()
    print(f"\nhung {kind} Redis: POST /v1/events {posted.seconds:.2f}s, GET /v1/rulesets {listed.seconds:.2f}s")
    # Acknowledged = processed once: the refused batch may have been appended before the freeze hid the reply
    # and again when resent; the engine dedupes by event id, so each event made exactly one action.
    assert all(added == done for added, done in counts), f"(appended, committed) per partition: {counts}"
    triggers = [trigger_of(action["trigger_id"]) for actions in books.values() for action in actions]
    acked = {event["event_id"] for event in before + held_up + after}
    assert set(triggers) == acked, sample(set(triggers) ^ acked)
    assert len(triggers) == len(acked), f"events with more than one action: {len(triggers) - len(acked)}"
