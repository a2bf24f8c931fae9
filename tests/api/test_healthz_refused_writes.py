"""/healthz reports Redis refusing writes (maxmemory, a full disk) while PING still answers."""

from __future__ import annotations

import redis.asyncio as aioredis

from tests.harness import eventually, running_beacon, server_settings


async def test_healthz_is_503_while_redis_refuses_writes_and_200_after(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Broke: with Redis at maxmemory every ingest request was a 503 while /healthz answered 200 (PING answers,
    and no partition stalled), so a load balancer kept sending traffic to a server that stored nothing."""
    config = await redis_client.config_get("maxmemory*")
    settings = server_settings(redis_url, run_workers=False, health_stall_ms=1000)
    async with running_beacon(settings) as beacon:
        assert await beacon.call("GET", "/healthz") == (200, {"status": "ok", "problems": []})
        try:
            await redis_client.config_set("maxmemory-policy", "noeviction")
            await redis_client.config_set("maxmemory", 1)
            status, body = await eventually(lambda: beacon.call("GET", "/healthz"), lambda answer: answer[0] == 503)
        finally:
            await redis_client.config_set("maxmemory", config["maxmemory"])
            await redis_client.config_set("maxmemory-policy", config["maxmemory-policy"])
        assert status == 503, body
        [problem] = body["problems"]
        assert problem.startswith("redis refuses writes (partition 0, 1): OutOfMemoryError: "), problem
        assert await eventually(lambda: beacon.call("GET", "/healthz"), lambda answer: answer[0] == 200) == (
            200,
            {"status": "ok", "problems": []},
        )
