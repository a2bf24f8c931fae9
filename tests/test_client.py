"""The Python producer against a real server: batching, acks, rejected events, auth, reconnect and resend."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import WSCloseCode
from aiohttp.test_utils import TestServer

from api.app import build_app
from beacon.client import (
    BeaconProducer,
    EventsRejectedError,
    FlushTimeoutError,
    IngestRefusedError,
    ProducerError,
    RejectedEvent,
    SyncProducer,
)
from beacon.settings import Settings
from tests.harness import Beacon, eventually, ingest_hub, running_beacon, server_settings, stream_event_ids

TS = 1_700_000_000_000
PARTITIONS = 2
LIBRARY = Path(__file__).resolve().parent.parent / "rules" / "library"
T = TypeVar("T")


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {"user_id": f"user-{n % 97}", "type": "view", "ts": TS + n, "attrs": {"n": n}, **extra}


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    # No workers: they trim acknowledged stream entries, and these tests read the streams back.
    async with running_beacon(server_settings(redis_url, run_workers=False)) as running:
        yield running


async def test_batches_5000_events_exactly_once(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    async with BeaconProducer(beacon.url("/v1/ingest"), batch_size=500) as producer:
        sent = [await producer.send(event(n)) for n in range(5000)]
        await producer.flush()
        assert producer.acked_events == 5000 and producer.errors == []
        assert producer.unacked_frames == 0
    assert len(set(sent)) == 5000
    counts = Counter(await stream_event_ids(redis_client, PARTITIONS))
    assert set(counts) == set(sent)
    assert set(counts.values()) == {1}
    assert ingest_hub(beacon).frames_read == 10  # 500 events a frame: batching by size


async def test_linger_sends_a_partial_batch_without_flush(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    async with BeaconProducer(beacon.url(""), linger_ms=20) as producer:
        event_id = await producer.send(event(1, event_id="given-id"))
        assert event_id == "given-id"
        acked = await eventually(lambda: asyncio.sleep(0, producer.acked_events), lambda n: n == 1)
        assert acked == 1
    assert await stream_event_ids(redis_client, PARTITIONS) == ["given-id"]


async def test_close_flushes(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    async with BeaconProducer(beacon.url("/v1/ingest"), linger_ms=60_000) as producer:
        sent = {await producer.send(event(n)) for n in range(7)}
    assert set(await stream_event_ids(redis_client, PARTITIONS)) == sent


async def test_rejected_events_are_reported(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    seen: list[RejectedEvent] = []
    async with BeaconProducer(beacon.url("/v1/ingest"), on_error=seen.append) as producer:
        await producer.send(event(1))
        bad_id = await producer.send({"user_id": "u", "type": "has space", "ts": TS})
        await producer.send(event(3))
        await producer.flush()
    assert producer.acked_events == 2
    assert [(r.event["event_id"], r.code, r.path) for r in producer.errors] == [(bad_id, "invalid", "events[1].type")]
    assert seen == producer.errors
    assert len(await stream_event_ids(redis_client, PARTITIONS)) == 2


async def test_strict_flush_raises_on_rejections(beacon: Beacon) -> None:
    async with BeaconProducer(beacon.url("/v1/ingest"), strict=True) as producer:
        await producer.send({"user_id": "u", "type": "pay", "ts": 12})
        with pytest.raises(EventsRejectedError) as rejected:
            await producer.flush()
        assert rejected.value.rejected[0].path == "events[0].ts"
        await producer.send(event(2))
        await producer.flush()  # only new rejections raise


async def test_frame_refused_by_the_server_rejects_its_events(redis_url: str, redis_client: aioredis.Redis) -> None:
    settings = server_settings(redis_url, run_workers=False, max_batch_events=3)
    async with running_beacon(settings) as beacon, BeaconProducer(beacon.url("/v1/ingest"), batch_size=5) as producer:
        for n in range(5):
            await producer.send(event(n))
        await producer.flush()
    assert [r.code for r in producer.errors] == ["too_large"] * 5
    assert await stream_event_ids(redis_client, PARTITIONS) == []


async def test_api_key(redis_url: str, redis_client: aioredis.Redis) -> None:
    keys = {"k-events": frozenset({"events"}), "k-rules": frozenset({"rules"})}
    async with running_beacon(server_settings(redis_url, run_workers=False, api_keys=keys)) as beacon:
        async with BeaconProducer(beacon.url("/v1/ingest"), api_key="k-events") as producer:
            await producer.send(event(1))
            await producer.flush()
            assert producer.acked_events == 1
        for key in ("k-rules", "nope", None):
            producer = BeaconProducer(beacon.url("/v1/ingest"), api_key=key)
            await producer.start()
            try:
                with pytest.raises(IngestRefusedError):
                    await producer.send(event(2))
                    await producer.flush()
            finally:
                await producer.close()


async def test_event_too_big_for_a_frame_is_refused_at_send(beacon: Beacon) -> None:
    async with BeaconProducer(beacon.url("/v1/ingest"), max_frame_bytes=1024) as producer:
        with pytest.raises(ValueError, match="max_frame_bytes"):
            await producer.send(event(1, attrs={"blob": "x" * 2000}))


async def test_server_side_drops_lose_nothing(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    total = 20_000
    async with BeaconProducer(beacon.url("/v1/ingest"), batch_size=200, max_backoff_s=0.2) as producer:
        sending = asyncio.create_task(_send_all(producer, total))
        for threshold in (2_000, 8_000, 14_000):
            await eventually(lambda: asyncio.sleep(0, producer.acked_events), lambda n, t=threshold: n >= t, 10)
            for ws in list(ingest_hub(beacon).sockets):
                await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"test drop")
        sent = await sending
        await producer.flush()
        assert producer.connections >= 4
    assert set(await stream_event_ids(redis_client, PARTITIONS)) == set(sent)


async def test_server_restart_on_the_same_port_loses_nothing(
    redis_url: str, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "beacon.client")
    total = 20_000
    settings = server_settings(redis_url, run_workers=False)
    async with running_beacon(settings) as first:
        port = first.server.port
        producer = BeaconProducer(first.url("/v1/ingest"), batch_size=200, max_backoff_s=0.2)
        await producer.start()
        sending = asyncio.create_task(_send_all(producer, total))
        await eventually(lambda: asyncio.sleep(0, producer.acked_events), lambda n: n >= 3_000, 10)
        await first.server.close()
    acked_before = producer.acked_events
    second = TestServer(build_app(settings), host="127.0.0.1", port=port)
    await second.start_server()
    try:
        sent = await sending
        await producer.flush()
        assert producer.acked_events > acked_before and producer.connections >= 2
    finally:
        await producer.close()
        await second.close()
    ids = await stream_event_ids(redis_client, PARTITIONS)
    assert set(ids) == set(sent)  # complete; duplicates of resent frames are allowed
    assert any("reconnecting" in record.getMessage() for record in caplog.records)


async def _send_all(producer: BeaconProducer, total: int) -> list[str]:
    return [await producer.send(event(n)) for n in range(total)]


async def test_idle_close_then_send_reconnects(redis_url: str, redis_client: aioredis.Redis) -> None:
    settings = server_settings(redis_url, run_workers=False, ws_receive_timeout_ms=200)
    async with running_beacon(settings) as beacon, BeaconProducer(beacon.url("/v1/ingest")) as producer:
        await producer.send(event(1))
        await producer.flush()
        closed = await eventually(lambda: asyncio.sleep(0, len(ingest_hub(beacon).sockets)), lambda n: n == 0)
        assert closed == 0  # the server closed the idle socket (4408)
        await producer.send(event(2))
        await producer.flush()
        assert producer.acked_events == 2 and producer.connections == 2


async def test_flush_waits_for_acks_and_times_out_when_the_server_is_gone(beacon: Beacon) -> None:
    producer = BeaconProducer(beacon.url("/v1/ingest"), linger_ms=60_000, max_backoff_s=0.1)
    await producer.start()
    try:
        for n in range(5):
            await producer.send(event(n))
        assert producer.unacked_events == 5  # still in the open batch: linger is a minute
        await producer.flush(timeout=5)
        assert producer.acked_events == 5 and producer.unacked_events == 0
        await beacon.server.close()
        for n in range(5, 8):
            await producer.send(event(n))
        with pytest.raises(FlushTimeoutError, match=r"3 event\(s\) in 1 frame\(s\) not acknowledged") as timed_out:
            await producer.flush(timeout=0.3)
        assert (timed_out.value.unacked_events, timed_out.value.unacked_frames) == (3, 1)
        assert isinstance(timed_out.value, TimeoutError)
        with pytest.raises(FlushTimeoutError):
            await producer.close(timeout=0.1)  # closes anyway, then says what was lost
    finally:
        await producer.close()
    await producer.close()  # idempotent
    with pytest.raises(ProducerError, match="not running"):
        await producer.send(event(9))


@contextmanager
def beacon_in_a_thread(settings: Settings) -> Iterator[tuple[Beacon, Any]]:
    """A real server on its own loop in a thread, for tests that are plain functions like a script."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    running = running_beacon(settings)

    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(30)

    try:
        beacon = run(running.__aenter__())
        try:
            yield beacon, run
        finally:
            run(running.__aexit__(None, None, None))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_sync_producer_from_a_plain_function(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushall()
    ruleset = json.loads((LIBRARY / "welcome-on-follow.json").read_text())
    with beacon_in_a_thread(server_settings(redis_url)) as (beacon, run):
        run(beacon.put_ruleset(ruleset))
        with SyncProducer(beacon.url("/v1/ingest"), linger_ms=60_000) as producer:
            ids = [producer.send({"user_id": f"sync-{n}", "type": "follow", "ts": TS + n}) for n in range(3)]
            assert producer.unacked_events == 3
            producer.flush(timeout=5)
            assert producer.acked_events == 3 and producer.unacked_events == 0
            producer.send({"user_id": "sync-0", "type": "has space", "ts": TS})
        # Leaving the block flushed the last event: the server rejected it, and said why.
        assert [(r.code, r.path) for r in producer.errors] == [("invalid", "events[0].type")]
        assert len(set(ids)) == 3
        for n in range(3):  # the workers processed each follow: the rule fired for every user
            actions = run(beacon.wait_actions(f"sync-{n}", 1))
            assert {action["rule_id"] for action in actions} == {"follow-journey"}
    producer.close()  # idempotent, also after the context manager closed it
    with pytest.raises(ProducerError, match="closed"):
        producer.send(event(1))
