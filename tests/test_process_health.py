"""Every process (`beacon serve`, `worker`, `connectors`) serves /metrics and /healthz, and /healthz turns 503
when processing stalls: real processes, real Redis, real sockets."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from beacon.redis_server import EmbeddedRedis, free_port
from cep.events import Event
from cep.ownership import owner_key
from cep.streams import append_events, progress
from tests.harness import eventually
from tests.processes import Process, clean_env, get, run_beacon, wait_health

SECRET = "pw-s3cret-Zq"
COUPON_RULESET = {
    "id": "coupons",
    "rules": [{"id": "paid", "when": {"event": "pay"}, "then": [{"action": "coupon", "coupon_id": "C-1"}]}],
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def with_password(url: str) -> str:
    """The session server's URL with credentials (any password passes a server without one, for `default`)."""
    return url.replace("redis://", f"redis://default:{SECRET}@", 1)


async def test_serve_worker_and_connectors_each_answer_healthz_and_metrics(
    redis_url: str, redis_client: aioredis.Redis, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Before: `beacon worker` and `beacon connectors` opened no port at all, and every process logged the
    Redis URL with its password at INFO."""
    port, connectors_port = free_port(), free_port()
    env = clean_env(BEACON_REDIS_URL=with_password(redis_url), BEACON_PARTITIONS="2", BEACON_LOG_LEVEL="INFO")
    serve = Process(["serve"], {**env, "BEACON_PORT": str(port)}, tmp_path / "serve.log")
    worker = Process(["worker"], {**env, "BEACON_OPS_PORT": "0"}, tmp_path / "worker.log")
    connectors = Process(["connectors"], {**env, "BEACON_OPS_PORT": str(connectors_port)}, tmp_path / "conn.log")
    processes = [serve, worker, connectors]
    try:
        for process in processes:
            process.start()
        worker_url = await worker.ops_url()  # port 0: a free port, logged
        assert not worker_url.endswith(":0")
        bases = {
            serve: f"http://127.0.0.1:{port}",
            worker: worker_url,
            connectors: f"http://127.0.0.1:{connectors_port}",
        }
        for process, base in bases.items():
            assert await wait_health(session, f"{base}/healthz", process) == {"status": "ok", "problems": []}
            status, text = await get(session, f"{base}/metrics")
            assert status == 200
            assert "beacon_stream_lag_entries" in text and "beacon_action_deliveries_total" in text
            if process is not serve:  # the ops listener is not the API
                status, _ = await get(session, f"{base}/v1/rulesets")
                assert status == 404
        # The image's HEALTHCHECK for each role: serve's port first, then worker's and connectors' ops ports.
        unused = str(free_port())
        for ports in ({"BEACON_PORT": str(port)}, {"BEACON_PORT": unused, "BEACON_OPS_PORT": str(connectors_port)}):
            code, out, err = await run_beacon("healthcheck", **ports)
            assert (code, err) == (0, ""), err
            assert out.strip().endswith("/healthz: healthy")
    finally:
        for process in processes:
            process.stop()
    for process in processes:
        output = process.log()
        assert SECRET not in output, output
        assert "redis://default:***@127.0.0.1" in output, output
        assert "Traceback" not in output, output


async def test_worker_health_reports_a_partition_stalled_by_redis_oom(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A worker whose commits Redis refuses (OOM) while events wait is unhealthy, and healthy again once they
    commit: a health check that only pinged Redis stayed 200 throughout."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    redis = aioredis.Redis.from_url(server.url)
    ops_port = free_port()
    env = clean_env(
        BEACON_REDIS_URL=server.url,
        BEACON_PARTITIONS="1",
        BEACON_OPS_PORT=str(ops_port),
        BEACON_HEALTH_STALL_MS="1000",
        BEACON_LOG_LEVEL="WARNING",
    )
    worker = Process(["worker"], env, tmp_path / "worker.log").start()
    healthz = f"http://127.0.0.1:{ops_port}/healthz"
    try:
        await wait_health(session, healthz, worker)
        deadline = time.monotonic() + 30
        while not await redis.get(owner_key(0)):
            assert time.monotonic() < deadline and worker.alive, worker.log()
            await asyncio.sleep(0.05)
        # Frozen, the worker cannot commit the events before Redis refuses writes (OOM at maxmemory).
        worker.signal(signal.SIGSTOP)
        try:
            events = [Event(f"e{n}", "u1", "view", 1_700_000_000_000 + n) for n in range(30)]
            await append_events(redis, events, 1)
            await redis.config_set("maxmemory-policy", "noeviction")
            await redis.config_set("maxmemory", int((await redis.info("memory"))["used_memory"]) // 2)
        finally:
            worker.signal(signal.SIGCONT)
        body = await wait_health(session, healthz, worker, status=503, timeout_s=20)
        # Refused writes show at the next sample; the stall once it has lasted the window (1 s).
        assert any(problem.startswith("redis refuses writes (partition 0): ") for problem in body["problems"]), body
        _, body = await eventually(lambda: get(session, healthz), lambda answer: _stalled(answer[1]), timeout_s=20)
        assert _stalled(body), body
        assert (await progress(redis, 0))[1] == 0
        await redis.config_set("maxmemory", 0)
        await wait_health(session, healthz, worker, timeout_s=30)
        assert (await progress(redis, 0))[1] == 30
    finally:
        worker.stop()
        await redis.aclose()
        server.stop()


def _stalled(body: Any) -> bool:
    return any(problem.startswith("partition 0 stalled: 30 item(s) waiting") for problem in body["problems"])


async def test_connectors_health_reports_an_outbox_stalled_by_a_hanging_provider(
    redis_url: str, redis_client: aioredis.Redis, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A provider that holds the only delivery slot leaves the next action unread: unhealthy until it answers."""
    calls: list[str] = []
    release = asyncio.Event()

    async def coupon(request: web.Request) -> web.Response:
        calls.append(request.headers["Idempotency-Key"])
        await release.wait()
        return web.json_response({"ok": True})

    provider = web.Application()
    provider.router.add_post("/coupons", coupon)
    runner = web.AppRunner(provider)
    await runner.setup()
    provider_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", provider_port).start()
    port, ops_port = free_port(), free_port()
    env = clean_env(
        BEACON_REDIS_URL=redis_url,
        BEACON_PARTITIONS="1",
        BEACON_LOG_LEVEL="WARNING",
        BEACON_HEALTH_STALL_MS="1000",
        BEACON_COUPON_URL=f"http://127.0.0.1:{provider_port}/coupons",
        BEACON_CONNECTOR_CONCURRENCY="1",
        BEACON_CONNECTOR_HTTP_TIMEOUT_MS="20000",
        BEACON_CONNECTOR_LEASE_MS="30000",
    )
    serve = Process(["serve"], {**env, "BEACON_PORT": str(port), "BEACON_RUN_CONNECTORS": "0"}, tmp_path / "s.log")
    connectors = Process(["connectors"], {**env, "BEACON_OPS_PORT": str(ops_port)}, tmp_path / "c.log")
    healthz = f"http://127.0.0.1:{ops_port}/healthz"
    try:
        serve.start()
        connectors.start()
        await wait_health(session, f"http://127.0.0.1:{port}/healthz", serve)
        await wait_health(session, healthz, connectors)
        async with session.put(f"http://127.0.0.1:{port}/v1/rulesets/coupons", json=COUPON_RULESET) as response:
            assert response.status == 200, await response.text()
        events = [{"user_id": user, "type": "pay"} for user in ("alice", "bob")]  # now: not stale
        async with session.post(f"http://127.0.0.1:{port}/v1/events", json={"events": events}) as response:
            assert response.status == 200, await response.text()
        body = await wait_health(session, healthz, connectors, status=503, timeout_s=20)
        assert body["problems"][0].startswith("outbox 0 stalled: entries waiting"), body
        assert len(calls) == 1  # the first coupon hangs in the only slot; the second was never read
        code, _, err = await run_beacon("healthcheck", "--url", healthz)
        assert code == 1 and f"{healthz}: unhealthy: outbox 0 stalled" in err, err
        release.set()
        await wait_health(session, healthz, connectors, timeout_s=20)
        deadline = time.monotonic() + 20
        while len(set(calls)) < 2:
            assert time.monotonic() < deadline, connectors.log()
            await asyncio.sleep(0.05)
    finally:
        release.set()
        serve.stop()
        connectors.stop()
        await runner.cleanup()


async def test_ops_port_default_taken_moves_configured_taken_stops(
    redis_url: str, redis_client: aioredis.Redis, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Several workers on one host share the default port's setting: the second takes a free port (logged);
    a port configured on purpose that is taken stops the process with one line and exit code 2."""
    env = clean_env(BEACON_REDIS_URL=redis_url, BEACON_PARTITIONS="2", BEACON_LOG_LEVEL="INFO")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        configured = Process(["worker"], {**env, "BEACON_OPS_PORT": str(taken)}, tmp_path / "configured.log")
        assert configured.start().wait() == 2
        [line] = configured.log().strip().splitlines()[-1:]
        assert line == f"beacon: BEACON_OPS_PORT: cannot listen on 127.0.0.1:{taken}: Address already in use"
        assert "Traceback" not in configured.log()
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", 8081))  # the worker's default port
        blocker.listen()
    except OSError:
        pass  # something else holds it already: the worker must move all the same
    worker = Process(["worker"], env, tmp_path / "default.log").start()
    try:
        url = await worker.ops_url()
        assert not url.endswith(":8081")
        assert "port 8081 is taken" in worker.log()
        await wait_health(session, f"{url}/healthz", worker)
    finally:
        worker.stop()
        blocker.close()
