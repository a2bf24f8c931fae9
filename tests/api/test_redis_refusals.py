"""A request that Redis refuses (out of memory, disk full, down) is a 503 to retry, not a 500 "bug"."""

from __future__ import annotations

import redis.asyncio as aioredis

from beacon import metrics
from tests.api.test_end_to_end import pay
from tests.harness import eventually, running_beacon, server_settings


async def test_ingest_while_redis_refuses_writes_is_503_with_retry_after(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Broke: an OOM reply escaped to the error middleware as `500 internal error` with a traceback."""
    config = await redis_client.config_get("maxmemory*")
    before = metrics.REGISTRY.get_sample_value("beacon_redis_errors_total", {"component": "api"}) or 0
    async with running_beacon(server_settings(redis_url, run_workers=False)) as beacon:
        try:
            await redis_client.config_set("maxmemory-policy", "noeviction")
            await redis_client.config_set("maxmemory", 1)
            async with beacon.session.post(beacon.url("/v1/events"), json=pay("u1", 10, event_id="e1")) as response:
                status, body, retry_after = response.status, await response.json(), response.headers.get("Retry-After")
        finally:
            await redis_client.config_set("maxmemory", config["maxmemory"])
            await redis_client.config_set("maxmemory-policy", config["maxmemory-policy"])
        assert (status, body["error"]["code"], retry_after) == (503, "unavailable", "1"), body
        assert "OutOfMemoryError" in body["error"]["message"] and "127.0.0.1" not in body["error"]["message"]
        assert (metrics.REGISTRY.get_sample_value("beacon_redis_errors_total", {"component": "api"}) or 0) == before + 1
        status, body = await beacon.post_events([pay("u1", 10, event_id="e1")])
        assert status == 200 and body["accepted"] == ["e1"], body


async def test_ingest_whose_ack_fsync_times_out_is_503_with_retry_after(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Broke: a WAITAOF that timed out (the AOF on a full disk, tests/faults) escaped as `500 internal error`."""
    config = await redis_client.config_get("appendfsync")
    settings = server_settings(redis_url, run_workers=False, ack_fsync_timeout_ms=100)
    async with running_beacon(settings) as beacon:
        try:
            # Nothing is fsynced by Redis itself any more: WAITAOF waits out its timeout, as on a full disk.
            await redis_client.config_set("appendfsync", "no")
            async with beacon.session.post(beacon.url("/v1/events"), json=pay("u1", 10, event_id="e2")) as response:
                status, body, retry_after = response.status, await response.json(), response.headers.get("Retry-After")
        finally:
            await redis_client.config_set("appendfsync", config["appendfsync"])
        assert (status, body["error"]["code"], retry_after) == (503, "unavailable", "1"), body
        assert "NotDurableError" in body["error"]["message"], body
        # Redis fsyncs once a second again: a resend is acknowledged once a fsync lands within the 100 ms.
        status, body = await eventually(
            lambda: beacon.post_events([pay("u1", 10, event_id="e2")]), lambda reply: reply[0] == 200, timeout_s=30
        )
        assert status == 200 and body["accepted"] == ["e2"], body
