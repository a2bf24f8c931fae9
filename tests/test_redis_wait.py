"""`beacon worker` started before Redis waits for it (503 on /healthz meanwhile, one warning per attempt) and
processes events once Redis is up: a real process, a real Redis started late, real sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from beacon.redis_server import EmbeddedRedis, free_port
from cep.events import Event
from cep.streams import append_events, progress
from tests.processes import Process, clean_env, run_beacon, wait_health

SECRET = "pw-w41t-Rk"
WAITING = "is not available (ConnectionError: Error 111 connecting to"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _waiting_lines(process: Process) -> list[str]:
    return [line for line in process.log().splitlines() if WAITING in line]


async def test_a_worker_started_before_redis_waits_for_it_then_processes_events(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Broke: `beacon worker` exited with code 3 when Redis did not answer at start (a Redis restarting, or
    started alongside it), so nothing processed events until someone restarted the worker by hand."""
    server = EmbeddedRedis(tmp_path / "redis")  # its port is chosen; it is started later
    ops_port = free_port()
    env = clean_env(
        BEACON_REDIS_URL=server.url.replace("redis://", f"redis://default:{SECRET}@", 1),
        BEACON_PARTITIONS="1",
        BEACON_OPS_PORT=str(ops_port),
        BEACON_LOG_LEVEL="INFO",
    )
    worker = Process(["worker"], env, tmp_path / "worker.log").start()
    healthz = f"http://127.0.0.1:{ops_port}/healthz"
    redis: aioredis.Redis | None = None
    try:
        body = await wait_health(session, healthz, worker, status=503)
        deadline = time.monotonic() + 30
        while len(_waiting_lines(worker)) < 3:  # it retries, with a line per attempt
            assert worker.alive and time.monotonic() < deadline, worker.log()
            await asyncio.sleep(0.05)
        body = await wait_health(session, healthz, worker, status=503)
        [problem] = body["problems"]
        assert problem.startswith("starting: Redis not available yet ("), body
        server.start()
        redis = aioredis.Redis.from_url(server.url)
        await wait_health(session, healthz, worker, timeout_s=30)
        events = [Event(f"e{n}", "u1", "view", 1_700_000_000_000 + n) for n in range(5)]
        await append_events(redis, events, 1)
        while (await progress(redis, 0))[1] < len(events):
            assert worker.alive and time.monotonic() < deadline, worker.log()
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        if redis is not None:
            await redis.aclose()
        server.stop()
    output = worker.log()
    assert SECRET not in output and "Traceback" not in output, output
    waiting = _waiting_lines(worker)
    url = f"redis://default:***@127.0.0.1:{server.port}/0"
    assert all(f"WARNING beacon Redis at {url} is not available" in line for line in waiting), waiting
    assert "waiting for ever" in waiting[0]


async def test_the_wait_is_bounded_by_its_setting_and_ends_in_one_line_and_exit_code_3() -> None:
    port = free_port()
    code, _, err = await run_beacon(
        "connectors",
        BEACON_REDIS_URL=f"redis://default:{SECRET}@127.0.0.1:{port}/0",
        BEACON_REDIS_WAIT_MS="700",
        BEACON_OPS_PORT="0",
        BEACON_LOG_LEVEL="ERROR",
    )
    assert code == 3, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"beacon: cannot reach Redis at redis://default:***@127.0.0.1:{port}/0: "), line
    assert " attempt(s) in " in line and ", the last: ConnectionError: Error 111 connecting to" in line, line
