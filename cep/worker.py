"""Workers: hold a fair share of partition leases and run a `PartitionOwner` for each one held."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from redis.asyncio import Redis

from beacon import metrics
from beacon.clock import Clock
from beacon.pause import pause
from beacon.redis_errors import describe, is_redis_trouble
from cep.links import LinkSigner
from cep.ownership import Ownership
from cep.partition_owner import OwnerLimits, PartitionOwner
from cep.rule_index import RuleIndex
from rules.registry import RulesetRegistry

log = logging.getLogger("beacon.worker")


def consumer_name() -> str:
    """A name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Owns partitions (see `cep.ownership`) and processes each in its own task."""

    def __init__(
        self,
        redis: Redis,
        registry: RulesetRegistry,
        clock: Clock,
        limits: OwnerLimits,
        *,
        partitions: int,
        stopping: asyncio.Event,
        lease_ms: int = 10_000,
        weight: float = 1.0,
        links: LinkSigner | None = None,
    ) -> None:
        self._redis = redis
        self._registry = registry
        self._clock = clock
        self._limits = limits
        self._partitions = partitions
        self._stopping = stopping
        self.links = links
        self.consumer = consumer_name()
        self.ownership = Ownership(redis, partitions, self.consumer, lease_ms, weight)
        self._owners: dict[int, PartitionOwner] = {}
        self._index = RuleIndex(())
        self._index_of: tuple[int, ...] = ()

    @property
    def processed(self) -> int:
        """Events processed by this process's partition owners (current ones)."""
        return sum(owner.processed for owner in self._owners.values())

    async def rule_index(self) -> RuleIndex:
        """The evaluator's view of the active rulesets, rebuilt only when the registry changed."""
        rulesets = await self._registry.refresh()
        registry = self._registry
        journeys, segments, items = registry.journeys(), registry.segments(), registry.item_indexes()
        plans = registry.plans()
        identity = (
            tuple(id(compiled) for compiled in rulesets)
            + tuple(id(kept.active) for kept in journeys)
            + tuple(id(segment) for segment in segments)
            + tuple(id(item_index) for item_index in items)
            + tuple(id(plan) for plan in plans)
        )
        if identity != self._index_of:
            self._index, self._index_of = RuleIndex(rulesets, journeys, segments, items, plans), identity
            self._index.links = self.links
        return self._index

    async def run(self) -> None:
        """Hold a fair share of partition leases and run an owner for each until stopped."""
        loops: dict[int, tuple[asyncio.Task[None], asyncio.Event, int]] = {}
        try:
            while not self._stopping.is_set():
                try:
                    acquired, to_release = await self.ownership.heartbeat(time.time_ns() // 1_000_000)
                except Exception as exc:
                    if not is_redis_trouble(exc):
                        raise
                    log.warning("partition leases not renewed (%s); retrying", describe(exc))
                    metrics.on_redis_error("ownership")
                    acquired, to_release = set(), set()
                owned = self.ownership.owned
                for partition in list(loops):
                    task, halt, epoch = loops[partition]
                    lost = owned.get(partition) != epoch
                    if lost or partition in to_release or task.done():
                        # Lost (expired, taken, or fenced), handed back, or crashed: stop it, restart below if ours.
                        halt.set()
                        await asyncio.wait({task}, timeout=max(self._limits.block_ms / 1000 * 4, 2.0))
                        del loops[partition]
                        self._owners.pop(partition, None)
                        if partition in to_release or (task.done() and not lost):
                            # A fenced owner's task ends by itself: give the lease back so the epoch moves on.
                            await self.ownership.release(partition)
                for partition, epoch in sorted(self.ownership.owned.items()):
                    if partition in loops:
                        continue
                    if partition in acquired:
                        log.info("consumer %s took partition %d (epoch %d)", self.consumer, partition, epoch)
                    halt = asyncio.Event()
                    owner = PartitionOwner(self._redis, partition, epoch, self._clock, self._limits, self.rule_index)
                    self._owners[partition] = owner
                    task = asyncio.create_task(owner.run(halt, self._stopping), name=f"worker-p{partition}")
                    loops[partition] = (task, halt, epoch)
                await pause(self._stopping, self.ownership.lease_ms / 3000)
        finally:
            for _, halt, _ in loops.values():
                halt.set()
            if loops:
                await asyncio.wait([task for task, _, _ in loops.values()], timeout=5)
            try:
                await self.ownership.leave()
            except Exception as exc:  # the leases expire by themselves
                log.warning("could not release partition leases: %s", exc)
