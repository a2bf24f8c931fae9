"""Replies a provider should not send, and actions a connector cannot handle, end in the connector error
path: delivered, retried with a count, or dead with a reason; never re-posted every lease (issue 15,
finding 7)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from beacon.errors import ValidationError
from connectors.settings import ConnectorSettings
from tests.connectors.kit import fast_settings, put_actions, record, running_connectors, seed_profile, wait_status
from tests.connectors.providers import FLOOD_BYTES, FakeMerchant, FakeWeChat


async def test_a_reply_with_invalid_utf8_is_read_with_replacement_characters(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: `response.text()` raised UnicodeDecodeError outside the error path; the coupon was re-posted
    every lease and never reached `dead`."""
    merchant.script.extend(["badutf8:503", "badutf8:200"])
    coupon = record("u1", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    async with running_connectors(redis_client, fast_settings(merchant), clock):
        await put_actions(redis_client, [coupon])
        failed = await wait_status(redis_client, coupon, {"failed"})
        assert failed["reason"] == "http_5xx" and "caf\ufffd" in failed["reply"]
        clock.advance(1_000)
        delivered = await wait_status(redis_client, coupon, {"delivered"})
    assert delivered["attempts"] == 2 and len(merchant.requests) == 2
    assert delivered["reply"] == {"ok": True, "note": "caf\ufffd \ufffd\ufffd"}


async def test_an_unreadable_retry_after_is_ignored(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: `Retry-After: ²` passed str.isdigit() and failed float(); 400 nines became infinity and failed
    int(); either left the action stuck in `delivering`."""
    merchant.script.extend(["429:²", "429:" + "9" * 400])
    coupon = record("u2", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    settings = fast_settings(merchant)
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [coupon])
        first = await wait_status(redis_client, coupon, {"failed"}, attempts=1)
        assert first["reason"] == "http_429"
        assert first["next_attempt_at"] <= clock.now_ms() + settings.retry.max_delay_ms  # plain backoff
        clock.advance(1_000)
        second = await wait_status(redis_client, coupon, {"failed"}, attempts=2)
        assert second["next_attempt_at"] <= clock.now_ms() + settings.retry.max_retry_after_ms
        clock.advance(settings.retry.max_retry_after_ms)
        await wait_status(redis_client, coupon, {"delivered"}, attempts=3)
    assert len(merchant.requests) == 3


async def test_a_huge_reply_is_not_read_past_the_cap(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: a 500 MB reply was read whole into memory (RSS 53 -> 592 MB)."""
    merchant.script.append("flood")
    coupon = record("u3", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    settings = fast_settings(merchant, max_reply_bytes=64 * 1024)
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [coupon])
        delivered = await wait_status(redis_client, coupon, {"delivered"})
    await asyncio.wait_for(merchant.flood_done.wait(), 5)
    # The client stopped after the cap; what the server wrote beyond it sat in socket buffers.
    assert merchant.flooded < FLOOD_BYTES // 4
    assert isinstance(delivered["reply"], str) and len(delivered["reply"]) == 2_000


async def test_a_wechat_reply_of_the_wrong_shape_is_dead_not_stuck(
    redis_client: aioredis.Redis, wechat: FakeWeChat, clock: ManualClock
) -> None:
    """Broke: an errcode that is not a number raised TypeError (unhashable) outside the error path."""
    await seed_profile(redis_client, "w1", {"openid": "o-w1"})
    message = record("w1", "message", {"channel": "wechat_template", "template": "t"}, clock.now_ms())
    settings = fast_settings(wechat=wechat)
    wechat.errcodes.append([1])  # type: ignore[arg-type]  # the provider's wrong type is the point
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [message])
        dead = await wait_status(redis_client, message, {"dead"}, reason="bad_reply")
    assert dead["attempts"] == 1 and len(wechat.sent) == 1


async def test_an_action_a_connector_cannot_handle_is_dead_with_the_cause(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """Broke: any exception but ConnectorError (here a KeyError on a record without an idempotency key)
    skipped the attempt count: the action was retried every lease for ever and could not be replayed."""
    coupon = record("u4", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    del coupon["idempotency_key"]
    async with running_connectors(redis_client, fast_settings(merchant), clock):
        await put_actions(redis_client, [coupon])
        dead = await wait_status(redis_client, coupon, {"dead"}, reason="internal_error")
    assert dead["attempts"] == 1 and "KeyError" in dead["reply"] and merchant.requests == []


async def test_a_configured_header_that_cannot_be_sent_is_refused_at_start() -> None:
    """A CRLF or a framing header in `BEACON_<PROVIDER>_HEADERS` would fail every call: refused up front."""
    for headers in ('{"X-Shop": "a\\r\\nX-Injected: 1"}', '{"Host": "other.example"}', '{"Bad Name": "x"}'):
        with pytest.raises(ValidationError) as caught:
            ConnectorSettings.from_env({"BEACON_COUPON_HEADERS": headers})
        assert caught.value.path == "BEACON_COUPON_HEADERS", headers
    with pytest.raises(ValidationError) as caught:
        ConnectorSettings.from_env({"BEACON_SMS_TOKEN": "t0ken\nX-Injected: 1"})
    assert caught.value.path == "BEACON_SMS_TOKEN"
    settings = ConnectorSettings.from_env({"BEACON_COUPON_HEADERS": '{"X-Shop": "s1"}'})
    assert settings.coupon.headers == {"X-Shop": "s1"}
