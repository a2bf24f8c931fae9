"""An outcome Redis refuses to record after the provider acted is retried, not left to a repost."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from aiohttp import web

from beacon.clock import SystemClock
from beacon.redis_server import free_port
from connectors.settings import HttpEndpoint
from tests.connectors.kit import fast_settings, put_actions, record, running_connectors, wait_status


async def test_a_delivered_mark_refused_by_redis_is_retried_and_the_provider_posted_once(
    redis_client: aioredis.Redis,
) -> None:
    """Broke: an OOM reply to the "delivered" write gave the attempt up; the claim lapsed and the action was
    posted again, once per lease while Redis refused (21 reposts in 3 s of maxmemory in tests/faults)."""
    config = await redis_client.config_get("maxmemory*")
    posts: list[str] = []
    lifted = asyncio.Event()

    async def lift_later() -> None:
        await asyncio.sleep(0.5)  # the refusal lasts past the reply, shorter than the lease
        await redis_client.config_set("maxmemory", config["maxmemory"])
        lifted.set()

    async def coupon(request: web.Request) -> web.Response:
        posts.append(request.headers["Idempotency-Key"])
        # Redis refuses writes from the moment the provider has acted: the outcome write meets it.
        await redis_client.config_set("maxmemory-policy", "noeviction")
        await redis_client.config_set("maxmemory", 1)
        lifting.append(asyncio.create_task(lift_later()))
        return web.json_response({"ok": True})

    lifting: list[asyncio.Task[None]] = []
    provider = web.Application()
    provider.router.add_post("/coupons", coupon)
    runner = web.AppRunner(provider)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    clock = SystemClock()
    action = record("alice", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    settings = fast_settings(lease_ms=2_000, coupon=HttpEndpoint(f"http://127.0.0.1:{port}/coupons"))
    try:
        await put_actions(redis_client, [action])
        async with running_connectors(redis_client, settings, clock):
            # A given-up outcome is marked "delivered" only by the repost after the lease: one POST means none.
            await wait_status(redis_client, action, {"delivered"}, timeout_s=10)
        assert lifted.is_set()
        assert posts == [action["idempotency_key"]], posts
    finally:
        await redis_client.config_set("maxmemory", config["maxmemory"])
        await redis_client.config_set("maxmemory-policy", config["maxmemory-policy"])
        for task in lifting:
            await task
        await runner.cleanup()
