"""Workers: consume partition streams through the consumer group, evaluate, emit, acknowledge."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from beacon import metrics
from beacon.pause import pause
from cep import streams
from cep.evaluate import BatchEvaluator
from rules.registry import RulesetRegistry

log = logging.getLogger("beacon.worker")

# An entry read but not acknowledged for this long belongs to a dead or stuck consumer.
RECLAIM_IDLE_MS = 30_000
RECLAIM_EVERY_S = 5.0
TRIM_EVERY_S = 10.0


def consumer_name() -> str:
    """A consumer name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """One consumer per partition, all in this process's event loop."""

    def __init__(
        self,
        redis: Redis,
        registry: RulesetRegistry,
        evaluator: BatchEvaluator,
        *,
        partitions: int,
        batch_size: int,
        block_ms: int,
        stopping: asyncio.Event,
        reclaim_idle_ms: int = RECLAIM_IDLE_MS,
    ) -> None:
        self._redis = redis
        self._registry = registry
        self._evaluator = evaluator
        self._partitions = partitions
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._reclaim_idle_ms = reclaim_idle_ms
        self._stopping = stopping
        self.consumer = consumer_name()
        self.processed = 0

    async def run(self) -> None:
        """Run every partition's loop until cancelled."""
        await streams.ensure_groups(self._redis, self._partitions)
        async with asyncio.TaskGroup() as group:
            for partition in range(self._partitions):
                group.create_task(self._partition_loop(partition), name=f"worker-p{partition}")

    async def _partition_loop(self, partition: int) -> None:
        last_reclaim = last_trim = 0.0
        while not self._stopping.is_set():
            try:
                entries, reclaimed = [], False
                if time.monotonic() - last_reclaim > min(RECLAIM_EVERY_S, self._reclaim_idle_ms / 2000):
                    last_reclaim = time.monotonic()
                    entries = await streams.reclaim_stale(
                        self._redis, partition, self.consumer, self._reclaim_idle_ms, self._batch_size
                    )
                    if entries:
                        reclaimed = True
                        log.warning("partition %d: reclaimed %d stale entries", partition, len(entries))
                if not entries:
                    entries = await streams.read_new(
                        self._redis, partition, self.consumer, self._batch_size, self._block_ms
                    )
                if entries:
                    await self.process_isolating(partition, entries, reclaimed=reclaimed)
                elif time.monotonic() - last_trim > TRIM_EVERY_S:
                    last_trim = time.monotonic()
                    await streams.trim_acknowledged(self._redis, partition)
                    await self._registry.refresh()
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("partition %d: redis unavailable (%s); retrying in 0.5s", partition, exc)
                await pause(self._stopping, 0.5)
            except Exception:
                # A bug must not kill the partition: entries stay pending and are retried on reclaim.
                log.exception("partition %d: batch failed; entries stay pending", partition)
                await pause(self._stopping, 0.5)

    async def process_isolating(
        self, partition: int, entries: list[tuple[bytes, dict[bytes, bytes]]], *, reclaimed: bool = False
    ) -> None:
        """Process a batch; if it fails for a reason other than Redis being away, retry its entries one
        by one and quarantine those that fail alone, so one poisonous event cannot stall a partition."""
        try:
            await self.process(partition, entries, reclaimed=reclaimed)
            return
        except (RedisConnectionError, RedisTimeoutError, OSError):
            raise
        except Exception:
            log.exception("partition %d: batch of %d failed; retrying its entries one by one", partition, len(entries))
        for entry in entries:
            try:
                # Part of the batch may have been applied: replay so its effects are carried out.
                await self.process(partition, [entry], reclaimed=True)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                raise
            except Exception as exc:
                log.exception("partition %d: quarantining entry %s", partition, entry[0])
                await streams.quarantine(self._redis, partition, entry, repr(exc))
                metrics.on_event_quarantined()

    async def process(
        self, partition: int, entries: list[tuple[bytes, dict[bytes, bytes]]], *, reclaimed: bool = False
    ) -> None:
        """Evaluate one batch of entries and acknowledge them once their effects are written."""
        started = time.perf_counter()
        decoded, poison = streams.decode_entries(entries)
        events = [event for _, event in decoded]
        await self._registry.refresh()
        with self._registry.borrow() as rulesets:
            outcome = await self._evaluator.evaluate(events, rulesets)
        await self._evaluator.emit(outcome, replay=reclaimed)
        await streams.ack(self._redis, partition, [entry_id for entry_id, _ in decoded] + poison)
        for origin in {event.origin for event in events}:
            metrics.on_events_processed(origin, sum(1 for event in events if event.origin == origin))
        self.processed += len(events)
        metrics.on_batch(time.perf_counter() - started)
