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
from cep.ownership import Ownership
from rules.registry import RulesetRegistry

log = logging.getLogger("beacon.worker")

TRIM_EVERY_S = 10.0


def consumer_name() -> str:
    """A consumer name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Consumes the partitions this process owns (see `cep.ownership`), one task per partition."""

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
        lease_ms: int = 10_000,
    ) -> None:
        self._redis = redis
        self._registry = registry
        self._evaluator = evaluator
        self._partitions = partitions
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._stopping = stopping
        self.consumer = consumer_name()
        self.ownership = Ownership(redis, partitions, self.consumer, lease_ms)
        self.processed = 0

    async def run(self) -> None:
        """Hold a fair share of partition leases and run a loop for each until stopped."""
        await streams.ensure_groups(self._redis, self._partitions)
        loops: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        try:
            while not self._stopping.is_set():
                try:
                    acquired, to_release = await self.ownership.heartbeat(time.time_ns() // 1_000_000)
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    log.warning("partition leases not renewed (%s); retrying", exc)
                    acquired, to_release = set(), set()
                for partition in list(loops):
                    task, halt = loops[partition]
                    if partition not in self.ownership.owned or partition in to_release or task.done():
                        # Lost (expired and taken), handed back, or crashed: stop it; restart below if still ours.
                        halt.set()
                        await asyncio.wait({task}, timeout=max(self._block_ms / 1000 * 4, 2.0))
                        del loops[partition]
                        if partition in to_release:
                            await self.ownership.release(partition)
                for partition in sorted(self.ownership.owned - set(loops)):
                    if partition in acquired:
                        log.info("consumer %s took partition %d", self.consumer, partition)
                    halt = asyncio.Event()
                    task = asyncio.create_task(self._partition_loop(partition, halt), name=f"worker-p{partition}")
                    loops[partition] = (task, halt)
                await pause(self._stopping, self.ownership.lease_ms / 3000)
        finally:
            for _, halt in loops.values():
                halt.set()
            if loops:
                await asyncio.wait([task for task, _ in loops.values()], timeout=5)
            try:
                await self.ownership.leave()
            except Exception as exc:  # the leases expire by themselves
                log.warning("could not release partition leases: %s", exc)

    async def _partition_loop(self, partition: int, halt: asyncio.Event) -> None:
        # Whatever the previous owner (or a failed batch of ours) left unacknowledged goes first, in
        # stream order, so a user's events are never processed out of order.
        backlog_first = True
        last_trim = 0.0
        while not (halt.is_set() or self._stopping.is_set()):
            try:
                if backlog_first:
                    entries = await streams.claim_pending(self._redis, partition, self.consumer, self._batch_size)
                    if entries:
                        await self.process_isolating(partition, entries, reclaimed=True)
                        continue
                    backlog_first = False
                entries = await streams.read_new(
                    self._redis, partition, self.consumer, self._batch_size, self._block_ms
                )
                if entries:
                    await self.process_isolating(partition, entries)
                elif time.monotonic() - last_trim > TRIM_EVERY_S:
                    last_trim = time.monotonic()
                    await streams.trim_acknowledged(self._redis, streams.events_key(partition))
                    await self._registry.refresh()
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                backlog_first = True
                log.warning("partition %d: redis unavailable (%s); retrying in 0.5s", partition, exc)
                await pause(self._stopping, 0.5)
            except Exception:
                backlog_first = True
                log.exception("partition %d: batch failed; its entries are retried first", partition)
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
        outcome = await self._evaluator.evaluate(events, self._registry.current())
        await self._evaluator.emit(outcome, replay=reclaimed)
        await streams.ack(self._redis, partition, [entry_id for entry_id, _ in decoded] + poison)
        for origin in {event.origin for event in events}:
            metrics.on_events_processed(origin, sum(1 for event in events if event.origin == origin))
        self.processed += len(events)
        metrics.on_batch(time.perf_counter() - started)
