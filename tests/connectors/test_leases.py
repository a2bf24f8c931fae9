"""An attempt ends before its lease does, so no second consumer posts the action while the first post is in
flight (issue 15, finding 8)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock, SystemClock
from beacon.errors import ValidationError
from connectors.runtime import run_connectors
from connectors.settings import ConnectorSettings
from tests.connectors.kit import (
    PARTITIONS,
    fast_settings,
    put_actions,
    record,
    running_connectors,
    seed_profile,
    wait_status,
)
from tests.connectors.providers import FakeMerchant, FakeWeChat

TEMPLATE = "/cgi-bin/message/template/send"


def test_a_lease_that_a_call_does_not_fit_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        ConnectorSettings.from_env({"BEACON_CONNECTOR_LEASE_MS": "1000", "BEACON_CONNECTOR_HTTP_TIMEOUT_MS": "3000"})
    assert caught.value.path == "BEACON_CONNECTOR_LEASE_MS" and "4000 ms" in caught.value.message
    ConnectorSettings.from_env({"BEACON_CONNECTOR_LEASE_MS": "4000", "BEACON_CONNECTOR_HTTP_TIMEOUT_MS": "3000"})


async def test_connectors_do_not_start_with_a_lease_shorter_than_the_timeout(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: lease 1 s, timeout 3 s: every slow call was claimed again and posted 3 times, the ledger saying
    1 attempt. Settings built in code (not from the environment) are checked too."""
    settings = fast_settings(merchant, lease_ms=1_000, http_timeout_ms=3_000)
    await put_actions(redis_client, [record("l1", "coupon", {"coupon_id": "C-1"}, clock.now_ms())])
    with pytest.raises(ValidationError):
        await asyncio.wait_for(run_connectors(redis_client, settings, PARTITIONS, clock), 5)
    assert merchant.requests == []


async def test_an_attempt_of_several_calls_stops_before_its_lease(
    redis_client: aioredis.Redis, wechat: FakeWeChat
) -> None:
    """Broke: each call fit the timeout, but a token fetch, a rejected send, a refetch and a resend (4 x 0.5 s)
    outlived a 1.2 s lease; another consumer claimed the action and sent it again while the first was still
    sending. Now the attempt stops at 3/4 of the lease and is retried with its count."""
    clock = SystemClock()  # the lease must lapse in real time, as it did in production
    await seed_profile(redis_client, "l2", {"openid": "o-l2"})
    wechat.delay_s = 0.5
    wechat.errcodes.append(40001)  # the first send's token is refused: refresh and send again
    message = record("l2", "message", {"channel": "wechat_template", "template": "t"}, clock.now_ms())
    settings = fast_settings(wechat=wechat, lease_ms=1_200, http_timeout_ms=800)
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [message])
        delivered = await wait_status(redis_client, message, {"delivered"}, timeout_s=10)
    # A consumer that took over a lapsed lease posts before its own "delivered" (which counts 1 attempt):
    # by now every send that reached WeChat must be an attempt the ledger counts.
    assert wechat.arrivals[TEMPLATE] == delivered["attempts"] >= 2
