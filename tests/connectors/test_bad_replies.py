"""Replies a provider should not send, and actions a connector cannot handle, end in the connector error
path: delivered, retried with a count, or dead with a reason; never re-posted every lease (issue 15,
finding 7)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from beacon.errors import ValidationError
from cep.events import partition_of
from cep.user_state import STATE, user_key_for
from connectors import delivery_ledger
from connectors.caps import cap_key
from connectors.dead_letters import list_dead_letters, replay
from connectors.settings import ConnectorSettings, FrequencyCap
from tests.connectors.kit import (
    PARTITIONS,
    fast_settings,
    put_actions,
    record,
    running_connectors,
    seed_profile,
    wait_status,
)
from tests.connectors.providers import FLOOD_BYTES, FakeMerchant, FakeWeChat
from tests.harness import eventually


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


async def test_an_unreadable_user_record_is_a_counted_attempt_and_dead_not_retried_every_lease(
    redis_client: aioredis.Redis, merchant: FakeMerchant, wechat: FakeWeChat, clock: ManualClock
) -> None:
    """Broke: a user record that could not be decoded failed the 48 h window check or the profile read,
    before the send and outside the connector error path: the action stayed `delivering`, was tried again
    every lease without a count, never reached `dead` and could not be replayed."""
    sms = record("x1", "message", {"channel": "sms", "template": "promo"}, clock.now_ms())
    cs = record("x2", "message", {"channel": "wechat_cs", "template": "hello"}, clock.now_ms())
    for user_id in ("x1", "x2"):  # not msgpack: 0xc1 is a byte msgpack never uses
        await redis_client.set(user_key_for(PARTITIONS, user_id, STATE), b"\xc1 not a record")
    settings = fast_settings(merchant, wechat)
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [sms, cs])
        for attempt in range(1, settings.retry.max_attempts):
            for action in (sms, cs):
                await wait_status(redis_client, action, {"failed"}, reason="policy_error", attempts=attempt)
            clock.advance(1_000)
        for action in (sms, cs):
            dead = await wait_status(redis_client, action, {"dead"}, reason="policy_error")
            assert dead["attempts"] == settings.retry.max_attempts and "DecodeError" in dead["reply"], dead
        assert merchant.requests == [] and wechat.sent == []
        letters = await list_dead_letters(redis_client, PARTITIONS, 10)
        assert sorted(row["action_id"] for row in letters) == sorted([sms["action_id"], cs["action_id"]])

        # The partition owner rewrote the records; the operator replays the dead letters.
        await seed_profile(redis_client, "x1", {"phone": "+8613800000000"})
        await seed_profile(redis_client, "x2", {"openid": "o-x2"}, last_seen=clock.now_ms())
        result = await replay(redis_client, clock, PARTITIONS, letters)
        assert sorted(result["replayed"]) == sorted([sms["action_id"], cs["action_id"]])
        for action in (sms, cs):
            await wait_status(redis_client, action, {"delivered"}, attempts=1)
    assert [request.body["phone"] for request in merchant.requests] == ["+8613800000000"]
    assert [request.body["touser"] for request in wechat.sent] == ["o-x2"]


async def test_a_redis_error_in_the_checks_still_waits_out_the_lease_uncounted(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """Redis trouble is not the action's: the frequency-cap script failing (WRONGTYPE) counts no attempt; the
    action is looked at again when its lease lapses and delivered once Redis answers."""
    settings = fast_settings(merchant, frequency_caps={"sms": FrequencyCap(5, 86_400_000)})
    await seed_profile(redis_client, "y1", {"phone": "+8613900000000"})
    await redis_client.set(cap_key("y1", "sms"), "not a sorted set")
    sms = record("y1", "message", {"channel": "sms", "template": "promo"}, clock.now_ms())
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [sms])
        claimed = await wait_status(redis_client, sms, {"delivering"}, attempts=0)
        due_key = delivery_ledger.due_key(partition_of("y1", PARTITIONS))
        member = delivery_ledger.hint_member("y1", sms["action_id"])
        # The failed attempt left its wake-up at the lease's end.
        woken_at = await eventually(lambda: redis_client.zscore(due_key, member), lambda at: at is not None)
        assert woken_at == claimed["lease_until"] and merchant.requests == []
        await redis_client.delete(cap_key("y1", "sms"))
        clock.advance(settings.lease_ms)
        await wait_status(redis_client, sms, {"delivered"}, attempts=1)
    assert len(merchant.requests) == 1
