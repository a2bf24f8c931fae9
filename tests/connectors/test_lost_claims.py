"""A claim whose reply is lost still wakes its action at the lease's end: no action stays "delivering" with
nothing left to look at it (found in a Redis Cluster chaos run)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from beacon.clock import ManualClock
from beacon.redis_server import EmbeddedRedis
from cep.events import partition_of
from cep.outbox import outbox_key
from connectors import delivery_ledger
from connectors.consumer import GROUP
from tests.connectors.kit import PARTITIONS, fast_settings, put_actions, record, running_connectors, stored, wait_status
from tests.connectors.providers import FakeMerchant
from tests.harness import eventually
from tests.redis_proxy import RedisProxy

CLAIM = (b"EVALSHA", b'"status":"delivering"')  # a status swap to "delivering": the claim


@pytest.fixture
async def proxy(redis_server: EmbeddedRedis) -> AsyncIterator[RedisProxy]:
    relay = await RedisProxy("127.0.0.1", redis_server.port).start()
    yield relay
    await relay.close()


async def _unacked(redis: aioredis.Redis) -> int:
    return sum([(await redis.xpending(outbox_key(p), GROUP))["pending"] for p in range(PARTITIONS)])


async def test_a_claim_whose_reply_is_lost_is_delivered_once_after_its_lease(
    redis_client: aioredis.Redis, proxy: RedisProxy, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: Redis ran the claim but the connection dropped before its reply; the cluster client sent the claim
    again, which found the action already "delivering" and reported "raced" (as a second consumer's claim
    does when the first one's reply is lost), so the consumer acknowledged the outbox entry and set no
    wake-up. The action stayed {"status": "delivering", "attempts": 0} for good, with nothing pending in the
    outbox group and no due entry."""
    settings = fast_settings(merchant)
    coupon = record("lena", "coupon", {"coupon_id": "C-9"}, clock.now_ms())
    proxy.lose_reply(*CLAIM)
    # Resends a command whose connection dropped, as redis-py's cluster client does (3 times by default).
    consumer_redis = aioredis.Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 3))
    try:
        async with running_connectors(consumer_redis, settings, clock):
            await put_actions(redis_client, [coupon])
            claims = await eventually(lambda: _claim_replies(proxy), lambda replies: len(replies) >= 2, timeout_s=10)
            # The first claim ran and its reply was lost; the resent one found the action taken.
            assert claims[:2] == [b":1\r\n", b":0\r\n"], proxy.watched_replies
            assert await eventually(lambda: _unacked(redis_client), lambda count: count == 0) == 0
            status = await stored(redis_client, coupon)
            assert (status["status"], status["attempts"]) == ("delivering", 0)
            assert merchant.requests == []
            # The claim itself woke the action at its lease's end, in the same step as the status.
            due_key = delivery_ledger.due_key(partition_of("lena", PARTITIONS))
            member = delivery_ledger.hint_member("lena", coupon["action_id"])
            assert await redis_client.zscore(due_key, member) == status["lease_until"]
            clock.advance(settings.lease_ms)
            await wait_status(redis_client, coupon, {"delivered"}, attempts=1)
            assert await redis_client.zscore(due_key, member) is None  # delivered: nothing to wake
    finally:
        await consumer_redis.aclose()
    assert len(merchant.requests) == 1
    assert merchant.effect_count[coupon["idempotency_key"]] == 1


async def _claim_replies(proxy: RedisProxy) -> list[bytes]:
    # A first claim may meet a server without the script loaded yet: that reply is no claim's answer.
    return [reply for reply in proxy.watched_replies if not reply.startswith(b"-NOSCRIPT")]
