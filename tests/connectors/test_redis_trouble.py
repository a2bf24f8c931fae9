"""Redis trouble in the outbox consumer is one counted WARNING line per retry, with a growing backoff; a bug
keeps its traceback (the chaos run on a Redis Cluster logged a traceback for every retry of a fail-over)."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ClusterDownError, DataError, OutOfMemoryError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from beacon.clock import ManualClock
from beacon.metrics import REGISTRY
from beacon.redis_errors import is_redis_error, is_redis_trouble
from beacon.redis_server import EmbeddedRedis
from cep.outbox import outbox_key
from connectors.consumer import GROUP
from tests.connectors.kit import PARTITIONS, fast_settings, put_actions, record, running_connectors, wait_status
from tests.connectors.providers import FakeMerchant
from tests.harness import eventually
from tests.redis_proxy import RedisProxy

RETRY = re.compile(r"^(outbox_loop|due_loop) p(\d): ClusterDownError: .*; retrying in ([0-9.]+)s$")


@pytest.fixture
async def proxy(redis_server: EmbeddedRedis) -> AsyncIterator[RedisProxy]:
    relay = await RedisProxy("127.0.0.1", redis_server.port).start()
    yield relay
    await relay.close()


def redis_errors() -> float:
    return REGISTRY.get_sample_value("beacon_redis_errors_total", {"component": "connectors"}) or 0.0


async def _leaked_attribute_error() -> AttributeError:
    """The AttributeError redis-py 8.1 raises when it writes on a connection closed under it (its writer is
    None), as its cluster client does while it reconnects: produced by redis-py's own code."""
    connection = Connection(host="127.0.0.1", port=1)  # never connected: no writer
    try:
        await connection._send_packed_command([b"PING\r\n"])  # the write that meets the missing writer
    except AttributeError as exc:
        return exc
    raise AssertionError("redis-py no longer raises AttributeError here; recheck redis/redis-py#4287")


def _our_attribute_error() -> AttributeError:
    writer: Any = None
    try:
        writer.writelines([b"PING\r\n"])  # the same mistake, made in our own code
    except AttributeError as exc:
        return exc
    raise AssertionError("unreachable")


async def test_redis_py_s_leaked_attribute_error_is_trouble_only_when_raised_inside_redis_py() -> None:
    """Broke: the AttributeError redis-py leaks while reconnecting was logged as a bug, with its traceback."""
    leaked, ours = await _leaked_attribute_error(), _our_attribute_error()
    assert str(leaked) == str(ours) == "'NoneType' object has no attribute 'writelines'"
    assert is_redis_trouble(leaked) and is_redis_error(leaked)
    assert not is_redis_trouble(ours)
    for trouble in (
        ClusterDownError("down"),
        RedisConnectionError("reset"),
        OutOfMemoryError("OOM"),
        OSError(104, "x"),
    ):
        assert is_redis_trouble(trouble)
    assert not is_redis_error(OSError(104, "a provider's socket"))  # in a provider call, not Redis's
    assert not is_redis_trouble(DataError("Invalid input of type: 'NoneType'"))  # our bug: a value it cannot send
    assert is_redis_trouble(ResponseError("MISCONF Errors writing to the AOF file"))
    assert not is_redis_trouble(RuntimeError("bug"))


async def test_a_cluster_down_is_one_counted_line_per_retry_with_backoff_then_delivery_resumes(
    redis_client: aioredis.Redis,
    proxy: RedisProxy,
    merchant: FakeMerchant,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Broke: while the cluster failed over, each loop logged "loop failed" with a full traceback every 0.5 s."""
    caplog.set_level(logging.WARNING, logger="beacon.connectors")
    consumer_redis = aioredis.Redis.from_url(proxy.url)
    try:
        async with running_connectors(consumer_redis, fast_settings(merchant), clock):
            await eventually(lambda: _groups(redis_client), lambda count: count == PARTITIONS)
            proxy.answer_errors("CLUSTERDOWN The cluster is down")
            errors_before = redis_errors()
            coupon = record("mia", "coupon", {"coupon_id": "C-3"}, clock.now_ms())
            await put_actions(redis_client, [coupon])
            seen = await eventually(lambda: _retries(caplog), lambda found: any(len(d) >= 4 for d in found.values()))
            assert any(len(delays) >= 4 for delays in seen.values()), caplog.text
            for delays in seen.values():
                assert delays == sorted(delays), seen  # it backs off, never faster
            assert max(max(delays) for delays in seen.values()) > 2 * min(d[0] for d in seen.values()), seen
            assert redis_errors() - errors_before >= sum(len(delays) for delays in seen.values())
            assert merchant.requests == []
            proxy.answer_errors(None)  # the cluster is back
            await wait_status(redis_client, coupon, {"delivered"}, timeout_s=20)
    finally:
        await consumer_redis.aclose()
    assert proxy.errors_sent > 0
    _assert_no_tracebacks(caplog)
    assert len(merchant.requests) == 1


async def test_connectors_started_while_redis_is_down_deliver_once_it_is_back(
    redis_client: aioredis.Redis,
    proxy: RedisProxy,
    merchant: FakeMerchant,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Broke: creating the consumer groups failed at start, which ended the connectors for good."""
    caplog.set_level(logging.WARNING, logger="beacon.connectors")
    coupon = record("max", "coupon", {"coupon_id": "C-5"}, clock.now_ms())
    await put_actions(redis_client, [coupon])
    proxy.answer_errors("CLUSTERDOWN The cluster is down")
    consumer_redis = aioredis.Redis.from_url(proxy.url)
    try:
        async with running_connectors(consumer_redis, fast_settings(merchant), clock):
            await eventually(lambda: _retries(caplog), lambda found: len(found) == 2 * PARTITIONS)
            proxy.answer_errors(None)
            await wait_status(redis_client, coupon, {"delivered"}, timeout_s=20)
    finally:
        await consumer_redis.aclose()
    _assert_no_tracebacks(caplog)
    assert len(merchant.requests) == 1


async def _groups(redis: aioredis.Redis) -> int:
    """How many outboxes have the consumers' group."""
    count = 0
    for partition in range(PARTITIONS):
        with contextlib.suppress(ResponseError):  # no stream yet
            count += any(group["name"] == GROUP.encode() for group in await redis.xinfo_groups(outbox_key(partition)))
    return count


async def _retries(caplog: pytest.LogCaptureFixture) -> dict[str, list[float]]:
    """The delays each loop logged it would wait before retrying, by loop."""
    found: dict[str, list[float]] = {}
    for entry in caplog.records:
        match = RETRY.match(entry.getMessage())
        if match:
            found.setdefault(f"{match[1]} p{match[2]}", []).append(float(match[3]))
    return found


def _assert_no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    noisy = [entry for entry in caplog.records if entry.exc_info or entry.levelno > logging.WARNING]
    assert noisy == [], [entry.getMessage() for entry in noisy]


class _BrokenOnceClock(ManualClock):
    """A clock whose first reading fails, as a bug in a loop would."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    def now_ms(self) -> int:
        if self.broken:
            self.broken = False
            raise RuntimeError("a bug in the due loop")
        return super().now_ms()


def _first_reading_done(clock: _BrokenOnceClock) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return not clock.broken

    return probe


async def test_a_bug_in_a_loop_keeps_its_traceback_and_the_loop_restarts(
    redis_client: aioredis.Redis, merchant: FakeMerchant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="beacon.connectors")
    clock = _BrokenOnceClock()
    errors_before = redis_errors()
    async with running_connectors(redis_client, fast_settings(merchant), clock):
        await eventually(_first_reading_done(clock), lambda done: done)  # only the due loops read the clock yet
        coupon = record("ned", "coupon", {"coupon_id": "C-4"}, clock.now_ms())
        await put_actions(redis_client, [coupon])
        await wait_status(redis_client, coupon, {"delivered"})
    [failure] = [entry for entry in caplog.records if entry.exc_info]
    assert failure.levelno == logging.ERROR and failure.getMessage().startswith("due_loop p")
    assert "loop failed; restarting in" in failure.getMessage()
    assert failure.exc_info is not None and str(failure.exc_info[1]) == "a bug in the due loop"
    assert redis_errors() == errors_before  # a bug is not counted as Redis trouble
