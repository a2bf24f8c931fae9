"""The outbox consumer: reads each partition's outbox through a consumer group and its due set, and runs
deliveries concurrently (bounded), acknowledging an outbox entry once its delivery has moved on."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from redis.asyncio import Redis

from beacon import metrics
from beacon.clock import Clock
from beacon.pause import pause
from beacon.redis_errors import describe, is_redis_trouble
from cep.outbox import OUTBOX_FIELD, outbox_key
from cep.streams import ensure_group, trim_acknowledged
from connectors import delivery_ledger as ledger
from connectors.delivery import Deliverer
from connectors.redis_trouble import REDIS_BACKOFF, log_retried
from connectors.settings import ConnectorSettings

log = logging.getLogger("beacon.connectors")

GROUP = "beacon-connectors"
TRIM_EVERY_S = 10.0
# A loop that ran this long before failing starts its backoff again from the first step.
BACKOFF_RESET_S = 30.0


async def ensure_outbox_groups(redis: Redis, partitions: int) -> None:
    """Create every partition's outbox stream and our consumer group (from the start: nothing is skipped)."""
    for partition in range(partitions):
        await ensure_group(redis, outbox_key(partition), GROUP)


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    redis-py's asyncio client loses a CancelledError that lands at the wrong moment of a command
    (measured: about one cancel in six on a tight command-and-sleep loop with redis 8.1), leaving the
    task marked as cancelling but running; every loop checks this so shutdown never hangs.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class OutboxConsumer:
    """Per partition: an outbox reader and a due-set poller, feeding one bounded pool of deliveries."""

    def __init__(
        self,
        redis: Redis,
        deliverer: Deliverer,
        settings: ConnectorSettings,
        partitions: int,
        clock: Clock,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self._redis = redis
        self._deliverer = deliverer
        self._settings = settings
        self._partitions = partitions
        self._clock = clock
        self._stopping = stopping or asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._group: asyncio.TaskGroup | None = None
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    async def run(self) -> None:
        """Run until `stopping` is set (deliveries in flight then finish) or until cancelled (they are cancelled
        too: their leases lapse and they are retried). Redis trouble never ends it: each loop waits it out."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            for partition in range(self._partitions):
                group.create_task(self._guarded(self._outbox_loop, partition), name=f"outbox-p{partition}")
                group.create_task(self._guarded(self._due_loop, partition), name=f"outbox-due-p{partition}")

    async def _guarded(self, loop: Callable[[int], Awaitable[None]], partition: int) -> None:
        """Run `loop` until `stopping`, restarting it after a failure with a backoff that grows while failures
        follow each other. Redis trouble (down, failing over, refusing writes; redis-py's cluster client
        leaks some of it as AttributeError) is one counted WARNING line per retry: the loops recover by
        themselves, and a traceback every half second during a fail-over buried everything else. Any other
        exception is a bug and keeps its traceback."""
        failures = 0
        while not self._stopping.is_set():
            raise_if_cancelled()
            started = time.monotonic()
            try:
                await loop(partition)
                return  # a loop returns only once `stopping` is set
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = 1 if time.monotonic() - started >= BACKOFF_RESET_S else failures + 1
                delay_s = REDIS_BACKOFF.backoff_ms(failures) / 1000
                name = loop.__name__.strip("_")
                if is_redis_trouble(exc):
                    metrics.on_redis_error("connectors")
                    log.warning("%s p%d: %s; retrying in %.1fs", name, partition, describe(exc), delay_s)
                else:
                    # A bug must not stop delivery: unacknowledged entries are reclaimed and retried.
                    log.exception("%s p%d: loop failed; restarting in %.1fs", name, partition, delay_s)
            await pause(self._stopping, delay_s)

    async def _room(self) -> int:
        """Free delivery slots, waiting until there is at least one."""
        while len(self._inflight) >= self._settings.concurrency:
            await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
        return self._settings.concurrency - len(self._inflight)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        assert self._group is not None
        task = self._group.create_task(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _outbox_loop(self, partition: int) -> None:
        key = outbox_key(partition)
        # Here rather than once at start: Redis may be down then, or restart without our group (NOGROUP).
        await ensure_group(self._redis, key, GROUP)
        next_reclaim = next_trim = 0.0
        cursor: Any = "0-0"  # XAUTOCLAIM scans the pending list a page at a time; resume where it stopped
        while not self._stopping.is_set():
            raise_if_cancelled()
            room = await self._room()
            count = min(room, self._settings.batch)
            entries: list[Any] = []
            if time.monotonic() >= next_reclaim:
                # Twice per lease: an abandoned entry waits at most one and a half leases.
                next_reclaim = time.monotonic() + self._settings.lease_ms / 2000
                # Entries a dead consumer read but never acknowledged; lease-long idle means it is gone.
                reply: Any = await self._redis.xautoclaim(
                    key, GROUP, self.consumer, self._settings.lease_ms, cursor, count=count
                )
                cursor = reply[0]
                entries = [entry for entry in reply[1] if entry and entry[1]]
            if not entries:
                reply = await self._redis.xreadgroup(
                    GROUP, self.consumer, {key: ">"}, count=count, block=self._settings.block_ms
                )
                entries = list(reply[0][1]) if reply else []
            for entry_id, fields in entries:
                self._spawn(self._from_outbox(partition, entry_id, fields))
            if time.monotonic() >= next_trim:
                next_trim = time.monotonic() + TRIM_EVERY_S
                await trim_acknowledged(self._redis, outbox_key(partition))

    async def _from_outbox(self, partition: int, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            record = json.loads(fields[OUTBOX_FIELD])
            user_id, action_id = str(record["user_id"]), str(record["action_id"])
        except (KeyError, ValueError, TypeError):
            log.exception("outbox p%d: dropping unreadable entry %s", partition, entry_id)
            record = None
        try:
            # Tags were applied by the worker; the ledger status decides the rest (duplicates included).
            if record is not None and record.get("type") != "tag":
                await self._deliverer.deliver(user_id, action_id)
            # Whatever `deliver` returned, the entry has done its job: every status it may leave unfinished
            # ("delivering", "failed", deferred "pending") carries a wake-up in the due set (delivery_ledger).
            await self._redis.xack(outbox_key(partition), GROUP, entry_id)
        except Exception as exc:
            # Redis trouble: the entry stays unacknowledged and is reclaimed after the lease.
            log_retried(log, exc, "outbox p%d: entry %s left for retry", partition, entry_id)

    async def _due_loop(self, partition: int) -> None:
        # Polls on wall time; due times follow the injected clock, so tests move time without sleeping.
        while not self._stopping.is_set():
            raise_if_cancelled()
            room = await self._room()
            due = await ledger.pop_due(
                self._redis,
                partition,
                self._clock.now_ms(),
                min(room, self._settings.batch),
                2 * self._settings.lease_ms,
            )
            for user_id, action_id in due:
                self._spawn(self._from_due(user_id, action_id))
            if not due:
                await asyncio.sleep(self._settings.poll_ms / 1000)

    async def _from_due(self, user_id: str, action_id: str) -> None:
        try:
            await self._deliverer.deliver(user_id, action_id, owns_hint=True)
        except Exception as exc:
            # The wake-up stays leased in the due set and fires again when the lease ends.
            log_retried(log, exc, "due delivery of %s failed; it wakes again later", action_id)
