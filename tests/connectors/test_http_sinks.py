"""Webhooks (signed), SMS, and connectors that are not configured."""

from __future__ import annotations

import hashlib
import hmac

import redis.asyncio as aioredis

from beacon.clock import ManualClock
from connectors.http_sinks import sign
from connectors.settings import HttpEndpoint, parse_allowed_hosts
from tests.connectors.kit import (
    allow,
    fast_settings,
    put_actions,
    record,
    running_connectors,
    seed_profile,
    wait_status,
)
from tests.connectors.providers import FakeMerchant


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", "1700000000", body) == f"sha256={expected}"


async def test_webhook_is_signed_and_carries_the_rule_headers(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    merchant.webhook_secret = "hook-secret"
    params = {
        "url": merchant.url("/hooks/crm"),
        "body": {"event": "cart_abandoned", "sku": "A1"},
        "headers": {"X-Tenant": "shop-1", "X-Beacon-Signature": "forged"},
    }
    hook = record("h1", "webhook", params, clock.now_ms())
    async with running_connectors(redis_client, fast_settings(merchant, webhook_allowed_hosts=allow(merchant)), clock):
        await put_actions(redis_client, [hook])
        await wait_status(redis_client, hook, {"delivered"})
    (request,) = merchant.requests
    assert merchant.outcomes["ok"] == 1  # the fake verified the signature
    assert request.headers["X-Tenant"] == "shop-1"
    assert request.headers["X-Beacon-Timestamp"] == str(clock.now_ms() // 1000)
    assert request.headers["Idempotency-Key"] == hook["idempotency_key"]
    assert request.body["data"] == {"event": "cart_abandoned", "sku": "A1"}
    assert request.body["action_id"] == hook["action_id"] and request.body["rule_id"] == "r1"


async def test_a_receiver_with_another_secret_refuses_and_the_action_is_dead(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    merchant.webhook_secret = "not-ours"
    hook = record("h2", "webhook", {"url": merchant.url("/hooks/crm")}, clock.now_ms())
    async with running_connectors(redis_client, fast_settings(merchant, webhook_allowed_hosts=allow(merchant)), clock):
        await put_actions(redis_client, [hook])
        dead = await wait_status(redis_client, hook, {"dead"})
    assert dead["reason"] == "http_4xx" and merchant.outcomes["bad_signature"] == 1


async def test_webhook_hosts_can_be_restricted(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    hook = record("h3", "webhook", {"url": merchant.url("/hooks/crm")}, clock.now_ms())
    settings = fast_settings(merchant, webhook_allowed_hosts=parse_allowed_hosts("crm.example.com"))
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [hook])
        await wait_status(redis_client, hook, {"dead"}, reason="host_not_allowed")
    assert merchant.requests == []


async def test_sms_goes_to_the_profile_phone(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    await seed_profile(redis_client, "s1", {"phone": "+8613700000000"})
    message = record("s1", "message", {"channel": "sms", "template": "cart", "params": {"sku": "A1"}}, clock.now_ms())
    no_phone = record("s2", "message", {"channel": "sms", "template": "cart"}, clock.now_ms())
    async with running_connectors(redis_client, fast_settings(merchant), clock):
        await put_actions(redis_client, [message, no_phone])
        await wait_status(redis_client, message, {"delivered"})
        await wait_status(redis_client, no_phone, {"skipped"}, reason="no_recipient")
    (request,) = merchant.requests
    assert request.path == "/sms"
    assert request.body == {
        "phone": "+8613700000000",
        "template": "cart",
        "params": {"sku": "A1"},
        "out_id": message["idempotency_key"],
        "sign_name": "Beacon",
    }


async def test_unconfigured_connector_dead_letters(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    coupon = record("n1", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    unknown = record("n1", "message", {"channel": "carrier_pigeon", "template": "t"}, clock.now_ms())
    async with running_connectors(redis_client, fast_settings(merchant, coupon=HttpEndpoint()), clock):
        await put_actions(redis_client, [coupon, unknown])
        await wait_status(redis_client, coupon, {"dead"}, reason="not_configured")
        await wait_status(redis_client, unknown, {"dead"}, reason="unsupported")
    assert merchant.requests == []
