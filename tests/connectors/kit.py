"""Helpers for connector tests: action records as the worker writes them, a running consumer, polling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import redis.asyncio as aioredis

from beacon.clock import Clock
from beacon.metrics import REGISTRY
from cep import outbox
from cep.events import partition_of
from cep.user_record import UserState, encode_user_state
from cep.user_state import LEDGER, LEDGER_INDEX, LEDGER_STATUS, STATE, user_key_for
from connectors.policy import RetryPolicy
from connectors.runtime import run_connectors
from connectors.settings import AllowedHost, ConnectorSettings, HttpEndpoint, WeChatApp, WeComApp, parse_allowed_hosts
from tests.connectors.providers import FakeMerchant, FakeWeChat
from tests.harness import eventually

PARTITIONS = 2
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_ms=5, max_delay_ms=40, jitter=0.5)


def fast_settings(
    merchant: FakeMerchant | None = None, wechat: FakeWeChat | None = None, **overrides: Any
) -> ConnectorSettings:
    """Settings pointing every connector at the fake providers, with small timeouts and backoffs."""
    base = ConnectorSettings(
        batch=50,
        concurrency=32,
        block_ms=20,
        poll_ms=5,
        lease_ms=2_000,
        http_timeout_ms=300,
        retry=FAST_RETRY,
        webhook_secret="hook-secret",
    )
    if merchant is not None:
        base = msgspec.structs.replace(
            base,
            coupon=HttpEndpoint(merchant.url("/coupons"), {"Authorization": "Bearer shop"}, {"merchant_id": "M1"}),
            points=HttpEndpoint(merchant.url("/points")),
            sms=HttpEndpoint(merchant.url("/sms"), extra={"sign_name": "Beacon"}),
        )
    if wechat is not None:
        base = msgspec.structs.replace(
            base,
            wechat=WeChatApp(wechat.url(), wechat.appid, wechat.secret, {"cart_reminder": "TMPL-CART"}),
            miniprogram=WeChatApp(wechat.url(), wechat.appid, wechat.secret, {}, "mp_openid"),
            wecom=WeComApp(wechat.url(), wechat.corpid, wechat.corpsecret, 1000002),
        )
    return msgspec.structs.replace(base, **overrides)


def allow(*servers: FakeMerchant) -> frozenset[AllowedHost]:
    """A webhook allow-list naming each server's address and port (loopback is refused otherwise)."""
    return parse_allowed_hosts(",".join(f"127.0.0.1:{server.port}" for server in servers))


def record(user_id: str, action_type: str, params: dict[str, Any], now_ms: int, **fields: Any) -> dict[str, Any]:
    """An action record shaped like cep/firing.py's."""
    identifier = uuid.uuid4().hex
    return {
        "action_id": identifier,
        "idempotency_key": identifier,
        "ruleset_id": "rs",
        "ruleset_version": 1,
        "rule_id": "r1",
        "user_id": user_id,
        "type": action_type,
        "params": params,
        "created_at": now_ms,
        "due_at": now_ms,
        "trigger_id": "ev-" + identifier[:8],
        "event_ts": now_ms,
        "received_ms": now_ms,
        "event_due_at": now_ms,
        **fields,
    }


async def put_actions(redis: aioredis.Redis, records: list[dict[str, Any]], copies: int = 1) -> None:
    """Write records to the ledger and queue them `copies` times in the outbox, as a (retried) worker does."""
    async with redis.pipeline(transaction=False) as pipe:
        for rec in records:
            text = json.dumps(rec, separators=(",", ":"))
            pipe.hset(user_key_for(PARTITIONS, rec["user_id"], LEDGER), rec["action_id"], text)
            initial = {"status": "delivered" if rec["type"] == "tag" else "pending", "updated_at": rec["created_at"]}
            pipe.hset(
                user_key_for(PARTITIONS, rec["user_id"], LEDGER_STATUS),
                rec["action_id"],
                json.dumps({**initial, "attempts": 0}),
            )
            pipe.zadd(user_key_for(PARTITIONS, rec["user_id"], LEDGER_INDEX), {rec["action_id"]: rec["created_at"]})
            outbox.note_recent(pipe, partition_of(rec["user_id"], PARTITIONS), rec["user_id"], rec["action_id"])
        for _ in range(copies):
            for rec in records:
                outbox.queue_action(pipe, partition_of(rec["user_id"], PARTITIONS), json.dumps(rec))
        await pipe.execute()


async def seed_profile(redis: aioredis.Redis, user_id: str, attrs: dict[str, Any], last_seen: int = 0) -> None:
    """Give a user a profile (and last interaction) as a partition owner would have stored it (these tests
    run no workers)."""
    record = encode_user_state(UserState(profile=dict(attrs), last_seen=last_seen))
    await redis.set(user_key_for(PARTITIONS, user_id, STATE), record)


async def stored(redis: aioredis.Redis, rec: dict[str, Any]) -> dict[str, Any]:
    """The current delivery status of an action (what GET /v1/actions lays over its record)."""
    raw = await redis.hget(user_key_for(PARTITIONS, rec["user_id"], LEDGER_STATUS), rec["action_id"])
    assert raw is not None
    return dict(json.loads(raw))


async def wait_status(
    redis: aioredis.Redis,
    rec: dict[str, Any],
    statuses: set[str],
    timeout_s: float = 5.0,
    reason: str | None = None,
    attempts: int | None = None,
) -> dict[str, Any]:
    """Poll until the action's status is one of `statuses` (with `reason` and `attempts`, when given)."""

    def done(current: dict[str, Any]) -> bool:
        return (
            current["status"] in statuses
            and (reason is None or current.get("reason") == reason)
            and (attempts is None or current.get("attempts") == attempts)
        )

    current = await eventually(lambda: stored(redis, rec), done, timeout_s)
    assert done(current), current
    return current


async def wait_all(
    redis: aioredis.Redis, records: list[dict[str, Any]], statuses: set[str], timeout_s: float = 20.0
) -> list[dict[str, Any]]:
    """Poll until every record's status is in `statuses`."""

    async def probe() -> list[dict[str, Any]]:
        return [await stored(redis, rec) for rec in records]

    current = await eventually(probe, lambda found: all(r["status"] in statuses for r in found), timeout_s)
    stuck = [r for r in current if r["status"] not in statuses]
    assert not stuck, stuck[:3]
    return current


def deliveries(connector: str, outcome: str) -> float:
    """The deliveries counter's current value for one connector and outcome, summed over reasons."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "beacon_action_deliveries"
        for sample in family.samples
        if sample.name == "beacon_action_deliveries_total"
        and sample.labels["connector"] == connector
        and sample.labels["outcome"] == outcome
    )


@contextlib.asynccontextmanager
async def running_connectors(
    redis: aioredis.Redis,
    settings: ConnectorSettings,
    clock: Clock,
    partitions: int = PARTITIONS,
    stopping: asyncio.Event | None = None,
) -> AsyncIterator[asyncio.Task[None]]:
    """`run_connectors` as a background task for the block; stopped gracefully on exit, and must stop."""
    stopping = stopping or asyncio.Event()
    task = asyncio.create_task(run_connectors(redis, settings, partitions, clock, stopping=stopping))
    try:
        yield task
    finally:
        stopping.set()
        done, _ = await asyncio.wait({task}, timeout=5)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert done, "run_connectors did not stop within 5 s of `stopping`"
        task.result()
