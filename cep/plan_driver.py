"""The plan driver: opens due occurrences, and sends each running one to the partitions this process owns.

Every process that runs partition owners runs one driver. Any of them may open an occurrence (the first
wins, `cep.plan_runs.open_run`); each sends only the partitions it owns, so a partition's members are
sent by one process at a time, at the plan's `rate` split evenly over the partitions. A partition's
part of a run starts with a snapshot of its members (the audience as it was then), and every send is
one atomic script, so a process killed mid-send leaves the snapshot exactly as far as it got: whoever
owns the partition next goes on from there, and no user is sent twice.

Occurrences are judged by the injectable clock: the newest occurrence due is opened once (a recurring
plan's occurrences that started before its current version was stored are not); one found after its
`late_after` deadline is recorded as missed rather than sent. Only the newest occurrence is considered:
a process down across several occurrences of a recurring plan leaves the older ones unrecorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis

from beacon import metrics
from beacon.clock import Clock
from beacon.pause import pause
from beacon.redis_errors import describe, is_redis_trouble
from cep import plan_runs
from cep.audience_members import definitions
from rules.plans import Plan, latest_occurrence
from rules.registry import RulesetRegistry

log = logging.getLogger("beacon.plans")

TICK_S = 0.1
BURST_S = 1.0  # a partition's unspent sending budget is capped at this many seconds of its rate
CHUNK = 1_000  # members per send (one script call)


class PlanDriver:
    """Opens due plan occurrences and sends the owned partitions' share of each running one."""

    def __init__(
        self,
        redis: Redis,
        registry: RulesetRegistry,
        clock: Clock,
        owned: Callable[[], Iterable[int]],
        *,
        partitions: int,
        stopping: asyncio.Event,
    ) -> None:
        self._redis = redis
        self._registry = registry
        self._clock = clock
        self._owned = owned
        self._partitions = partitions
        self._stopping = stopping
        self._opened: set[tuple[str, str]] = set()  # occurrences this process knows are recorded
        self._budget: dict[tuple[str, str, int], float] = {}  # (plan, occurrence, partition) -> users
        self.sent = 0

    async def run(self) -> None:
        """Tick until stopped; Redis trouble is logged, counted and retried with a growing pause."""
        backoff, last = 0.1, time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            try:
                await self.tick(now - last)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_redis_trouble(exc):
                    log.exception("plan driver tick failed; retrying")
                else:
                    log.warning("plan driver: %s; retrying in %.1fs", describe(exc), backoff)
                    metrics.on_redis_error("plans")
                await pause(self._stopping, backoff)
                backoff = min(backoff * 2, 5.0)
            last = now
            await pause(self._stopping, TICK_S)

    async def tick(self, elapsed_s: float) -> None:
        """Open what is due, then send for `elapsed_s` seconds' worth of each running run's rate."""
        now = self._clock.now_ms()
        await self._registry.refresh()
        plans = self._registry.plans()
        states = await plan_runs.plan_states(self._redis)
        active = [plan for plan in plans if plan.id not in states]
        for plan in active:
            await self._open_due(plan, now)
        owned = sorted(self._owned())
        if not owned:
            return
        audiences: dict[str, dict[str, Any]] | None = None
        live: set[tuple[str, str, int]] = set()
        for plan in active:
            for run in await plan_runs.read_runs(self._redis, plan.id):
                if run.status != plan_runs.RUNNING:
                    continue
                finished = 0
                for partition in owned:
                    state = await plan_runs.partition_state(self._redis, partition, run)
                    if state is None:
                        if audiences is None:
                            audiences = await definitions(self._redis)
                        await plan_runs.snapshot(self._redis, partition, plan, run, audiences)
                        state = plan_runs.SENDING
                    if state != plan_runs.SENDING:
                        finished += 1
                        continue
                    slot = (plan.id, run.occurrence, partition)
                    live.add(slot)
                    done = await self._send(plan, run, partition, slot, elapsed_s, now)
                    finished += done
                if finished == len(owned):
                    await self._maybe_done(run, now)
        # Budgets of runs that ended, were paused or moved to another process are dropped.
        for slot in set(self._budget) - live:
            del self._budget[slot]

    async def _open_due(self, plan: Plan, now: int) -> None:
        occurrence = latest_occurrence(plan, now)
        if occurrence is None or (plan.id, occurrence.id) in self._opened:
            return
        if plan.schedule.cron and occurrence.start_ms < plan.stored_ms:
            return  # it began before this version of the plan existed
        if await plan_runs.open_run(self._redis, plan, occurrence, now):
            log.info("plan %s: occurrence %s opened", plan.id, occurrence.id)
        self._opened.add((plan.id, occurrence.id))

    async def _send(
        self, plan: Plan, run: plan_runs.Run, partition: int, slot: tuple[str, str, int], elapsed_s: float, now: int
    ) -> int:
        """Send this tick's budget of one partition; 1 if the partition's part is done."""
        per_partition = plan.rate / self._partitions
        cap = max(per_partition * BURST_S, 1.0)  # a slow plan's partitions still get whole users
        budget = min(self._budget.get(slot, 0.0) + per_partition * max(elapsed_s, TICK_S), cap)
        most = min(int(budget), CHUNK * 10)
        if most < 1:
            self._budget[slot] = budget
            return 0
        sent, done = await plan_runs.send(self._redis, partition, plan, run, most, now)
        self._budget[slot] = budget - sent
        if sent:
            self.sent += sent
            metrics.on_plan_sent(plan.id, sent)
        return 1 if done else 0

    async def _maybe_done(self, run: plan_runs.Run, now: int) -> None:
        """Every partition finished (this process's and the others'): the run is done."""
        totals = await plan_runs.progress(self._redis, self._partitions, run)
        if totals["partitions_done"] == self._partitions:
            await plan_runs.set_status(self._redis, run, plan_runs.DONE, now)
            log.info("plan %s: occurrence %s done (%d sent)", run.plan_id, run.occurrence, totals["sent"])
