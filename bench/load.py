"""Load and observation: HTTP and WebSocket senders (flat out or paced), stream backlog, outbox tail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgpack
from redis.asyncio import Redis

from beacon.client import BeaconProducer
from cep import streams
from cep.outbox import OUTBOX_FIELD, outbox_key
from cep.ownership import owner_key

MSGPACK = {"Content-Type": "application/msgpack"}
TICK_S = 0.01


@dataclass
class SendResult:
    """What a sender did: events sent and acknowledged, between two monotonic instants."""

    sent: int = 0
    accepted: int = 0
    started: float = 0.0
    finished: float = 0.0

    @property
    def seconds(self) -> float:
        """Wall time from the first send to the last ack."""
        return max(self.finished - self.started, 1e-9)

    @property
    def rate(self) -> float:
        """Acknowledged events per second."""
        return self.accepted / self.seconds


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def latency_summary(values_ms: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / max and the sample count."""
    return {
        "p50": percentile(values_ms, 50),
        "p95": percentile(values_ms, 95),
        "p99": percentile(values_ms, 99),
        "max": max(values_ms) if values_ms else math.nan,
        "n": float(len(values_ms)),
    }


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    async with session.post(url, data=body, headers=MSGPACK) as response:
        reply = await response.json(content_type=None)
        if response.status != 200:
            raise RuntimeError(f"POST /v1/events answered {response.status}: {str(reply)[:300]}")
        return len(reply["accepted"])


async def blast_http(
    base_url: str, events: Sequence[dict[str, Any]], batch: int = 500, concurrency: int = 8
) -> SendResult:
    """POST all events as msgpack batches with `concurrency` requests in flight; returns when all are acked."""
    bodies = [msgpack.packb({"events": list(events[i : i + batch])}) for i in range(0, len(events), batch)]
    result = SendResult(sent=len(events))
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    url = f"{base_url}/v1/events"

    async def lane(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            accepted = await _post(session, url, queue.get_nowait())
            result.accepted += accepted  # not `+= await`: that reads the total before awaiting

    async with aiohttp.ClientSession() as session:
        result.started = time.monotonic()
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
        result.finished = time.monotonic()
    return result


async def blast_ws(base_url: str, events: Sequence[dict[str, Any]], batch: int = 500, in_flight: int = 8) -> SendResult:
    """Send all events through one `BeaconProducer` socket; returns once every frame is acked."""
    result = SendResult(sent=len(events))
    async with BeaconProducer(base_url, batch_size=batch, linger_ms=5, max_in_flight=in_flight) as producer:
        result.started = time.monotonic()
        for event in events:
            await producer.send(event)
        await producer.flush()
        result.finished = time.monotonic()
        result.accepted = producer.acked_events
    return result


async def paced(
    transport: str,
    base_url: str,
    make_events: Callable[[int], list[dict[str, Any]]],
    rate: float,
    duration_s: float,
    *,
    max_batch: int = 1000,
    concurrency: int = 8,
) -> SendResult:
    """Offer `rate` events/s for `duration_s` over `http` or `ws`; falls behind (and says so) if it cannot."""
    result = SendResult()
    deadline_grace = 30.0
    if transport == "ws":
        producer = BeaconProducer(base_url, batch_size=min(max_batch, 500), linger_ms=2, max_in_flight=concurrency)
        await producer.start()
        try:
            result.started = time.monotonic()
            while (elapsed := time.monotonic() - result.started) < duration_s:
                due = int(rate * elapsed) - result.sent
                for event in make_events(min(due, max_batch)) if due > 0 else ():
                    await producer.send(event)
                    result.sent += 1
                await asyncio.sleep(TICK_S)
            await asyncio.wait_for(producer.flush(), deadline_grace)
            result.finished = time.monotonic()
            result.accepted = producer.acked_events
        finally:
            await producer.close()
        return result
    url = f"{base_url}/v1/events"
    in_flight: set[asyncio.Task[int]] = set()
    async with aiohttp.ClientSession() as session:
        result.started = time.monotonic()
        while (elapsed := time.monotonic() - result.started) < duration_s:
            due = min(int(rate * elapsed) - result.sent, max_batch)
            if due > 0 and len(in_flight) < concurrency:
                body = msgpack.packb({"events": make_events(due)})
                result.sent += due
                task = asyncio.create_task(_post(session, url, body))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.sleep(TICK_S)
        if in_flight:
            done = await asyncio.wait_for(asyncio.gather(*in_flight), deadline_grace)
            result.accepted += sum(done)
        result.finished = time.monotonic()
    return result


async def backlog(redis: Redis, partitions: int) -> int:
    """Event stream entries not yet processed (undelivered plus unacknowledged), over all partitions."""
    return await streams.backlog(redis, partitions)


async def leased_partitions(redis: Redis, partitions: int) -> int:
    """Partitions some worker holds the lease of: a worker takes one only once started, just before it reads."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.exists(owner_key(partition))
        return sum(await pipe.execute())


async def wait_leased(redis: Redis, partitions: int, timeout_s: float, poll_s: float = 0.005) -> float | None:
    """Monotonic time at which some worker was first seen holding a partition lease, or None at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await leased_partitions(redis, partitions):
            return time.monotonic()
        await asyncio.sleep(poll_s)
    return None


async def wait_drained(redis: Redis, partitions: int, timeout_s: float, poll_s: float = 0.05) -> float | None:
    """Monotonic time at which the backlog was first seen at 0, or None at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await backlog(redis, partitions) == 0:
            return time.monotonic()
        await asyncio.sleep(poll_s)
    return None


async def sample_backlog(
    redis: Redis, partitions: int, seconds: float, every_s: float = 0.25
) -> list[tuple[float, int]]:
    """(monotonic time, backlog) samples for `seconds`."""
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append((time.monotonic(), await backlog(redis, partitions)))
        await asyncio.sleep(every_s)
    return samples


async def server_time_ms(redis: Redis) -> int:
    """Redis's clock in ms: stream ids are stamped with it."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


@dataclass
class OutboxTail:
    """Reads every outbox entry appended after `start()` (no consumer group: delivery is untouched)."""

    redis: Redis
    partitions: int
    entries: list[tuple[int, bytes]] = field(default_factory=list)  # (append ms from the entry id, record)
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _run(self, since_ms: int) -> None:
        cursors: dict[Any, Any] = {outbox_key(p): f"{since_ms}-0" for p in range(self.partitions)}
        while not self._stop.is_set():
            reply: Any = await self.redis.xread(cursors, count=2000, block=50)
            for key, entries in reply or ():
                name = key.decode() if isinstance(key, bytes) else key
                for entry_id, fields in entries:
                    cursors[name] = entry_id
                    self.entries.append((int(entry_id.split(b"-")[0]), fields[OUTBOX_FIELD]))

    async def start(self) -> None:
        """Begin tailing from the server's current time."""
        self._task = asyncio.create_task(self._run(await server_time_ms(self.redis)))

    async def stop(self) -> None:
        """Stop tailing (after a last read)."""
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)

    def records(self) -> list[tuple[int, dict[str, Any]]]:
        """(append ms, decoded action record) for every entry seen."""
        return [(appended, json.loads(raw)) for appended, raw in self.entries]


@contextlib.asynccontextmanager
async def outbox_tail(redis: Redis, partitions: int) -> AsyncIterator[OutboxTail]:
    """An OutboxTail running for the duration of the block."""
    tail = OutboxTail(redis, partitions)
    await tail.start()
    try:
        yield tail
    finally:
        await tail.stop()


def ingest_latencies(records: Sequence[tuple[int, dict[str, Any]]]) -> list[float]:
    """Acceptance -> outbox ms for actions triggered by producer events (and their tag chains)."""
    return [
        appended - record["received_ms"]
        for appended, record in records
        if record.get("received_ms") and not str(record.get("trigger_id", "")).startswith(("due:", "act:"))
    ]


def timer_latenesses(records: Sequence[tuple[int, dict[str, Any]]], user_prefix: str) -> list[float]:
    """Due -> outbox ms for absence firings of users named `<user_prefix>...` (a timer event's
    `received_ms` is its due time)."""
    return [
        appended - record["received_ms"]
        for appended, record in records
        if str(record.get("trigger_id", "")).startswith("due:")
        and str(record.get("user_id", "")).startswith(user_prefix)
    ]


async def wait_owning(
    redis: Redis, partitions: int, pid: int, at_least: int, timeout_s: float, poll_s: float = 0.05
) -> int:
    """Wait until the process `pid` holds `at_least` partition leases (a worker joining takes its share
    over a few lease renewals); returns how many it holds (fewer at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            for partition in range(partitions):
                pipe.get(owner_key(partition))
            owners = await pipe.execute()
        held = sum(1 for owner in owners if owner and f":{pid}:" in owner.decode())
        if held >= at_least or time.monotonic() > deadline:
            return held
        await asyncio.sleep(poll_s)
