"""Scaling: worker throughput with 1, 2 and 4 `beacon worker` processes, and single Redis vs a Cluster."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import cpu, load
from bench.harness import BeaconStack, beacon_stack
from bench.report import Row, skipped
from bench.sizes import Size
from bench.workload import Workload

SECTION = "scaling"
POLL_S = 0.05


async def drain_rate(
    stack: BeaconStack, redis: Any, events: list[dict[str, Any]], workers: int, size: Size
) -> dict[str, float]:
    """Preload `events` with no worker running, start `workers` processes, time the backlog to empty.

    The clock and the CPU count start when the first partition lease is taken: a worker takes one once
    started (imports done, ruleset compiled), just before its first read, so start-up is left out.
    Not the first drop of the backlog: one batch (up to `batch_size` entries of many events each) can
    be most of a preload, and its work all happens before the backlog drops. With several workers the
    later ones may still be starting while the first drains; that start-up counts.
    """
    # With no worker running, the preload prices ingest alone: `beacon serve` and Redis CPU per event.
    ingest_before = await cpu.sample(redis, stack.pids_by_role())
    for start in range(0, len(events), 50_000):
        await load.blast_http(stack.base_url, events[start : start + 50_000])
    initial = await load.backlog(redis, stack.partitions)
    ingest = cpu.per_event_us(ingest_before, await cpu.sample(redis, stack.pids_by_role()), initial)
    launched = time.monotonic()
    await stack.start_workers(workers)
    roles = stack.pids_by_role()
    try:
        deadline = launched + size.drain_timeout_s
        leased = await load.wait_leased(redis, stack.partitions, size.drain_timeout_s)
        if leased is None:
            raise RuntimeError(f"no worker took a partition within {size.drain_timeout_s:.0f}s")
        before = await cpu.sample(redis, roles)
        while time.monotonic() < deadline:
            now, left = time.monotonic(), await load.backlog(redis, stack.partitions)
            if left == 0:
                cost = cpu.per_event_us(before, await cpu.sample(redis, roles), initial)
                return {
                    "rate": initial / max(now - leased, 1e-9),
                    "events": float(initial),
                    "startup_s": leased - launched,
                    "seconds": now - leased,
                    **{f"cpu_{role}_us": value for role, value in cost.items()},
                    "ingest_serve_us": ingest["serve"],
                    "ingest_redis_us": ingest["redis"],
                }
            await asyncio.sleep(POLL_S)
        raise RuntimeError(f"backlog of {initial:,} not drained by {workers} worker(s) in {size.drain_timeout_s:.0f}s")
    finally:
        await asyncio.to_thread(stack.stop_workers)


def _row(id_: str, label: str, measured: dict[str, float], workers: int, server: str) -> Row:
    detail = (
        f"{measured['events']:,.0f} events preloaded, then {workers} `beacon worker` process(es) + `beacon serve` "
        f"(BEACON_RUN_WORKERS=0) on {server}; drained in {measured['seconds']:.1f}s after "
        f"{measured['startup_s']:.1f}s start-up; CPU µs/event: workers {measured['cpu_workers_us']:.0f}, "
        f"serve {measured['cpu_serve_us']:.0f}, Redis {measured['cpu_redis_us']:.0f}; the preload (HTTP ingest "
        f"alone): serve {measured['ingest_serve_us']:.0f}, Redis {measured['ingest_redis_us']:.0f}"
    )
    return Row(id_, SECTION, label, measured["rate"], "events/s", detail, measured)


async def _workers_rows(size: Size) -> list[Row]:
    rows: list[Row] = []
    async with beacon_stack(run_workers=False) as stack:
        redis = stack.client()
        try:
            workload = Workload(size.users, prefix="s", seed=13)
            for count in size.worker_counts:
                measured = await drain_rate(stack, redis, workload.events(size.scaling_events), count, size)
                rows.append(
                    _row(
                        f"scaling.workers.{count}",
                        f"{count} worker process(es), single Redis",
                        measured,
                        count,
                        "one Redis",
                    )
                )
        finally:
            await redis.aclose()
    base = rows[0].value if rows else None
    for row in rows[1:]:
        row.detail += f"; x{(row.value or 0) / base:.2f} of 1 worker" if base else ""
    return rows


async def _cluster_row(size: Size) -> Row:
    """The 1-worker row again on a 3-master loopback Redis Cluster (BEACON_REDIS_CLUSTER=1)."""
    label = "1 worker process, 3-master Redis Cluster"
    try:
        async with beacon_stack(run_workers=False, cluster=True) as stack:
            redis = stack.client()
            try:
                workload = Workload(size.users, prefix="sc", seed=17)
                measured = await drain_rate(stack, redis, workload.events(size.scaling_events), 1, size)
            finally:
                await redis.aclose()
    except Exception as exc:  # any failure of the optional cluster run is reported, not raised
        return skipped("scaling.cluster", SECTION, label, f"cluster run failed: {exc!r}"[:300])
    return _row("scaling.cluster", label, measured, 1, "a 3-master loopback Redis Cluster")


async def scaling_rows(size: Size, cluster: bool) -> list[Row]:
    """Worker-count rows on one Redis, then the cluster row (or why it was skipped)."""
    rows = await _workers_rows(size)
    if cluster:
        rows.append(await _cluster_row(size))
    else:
        rows.append(
            skipped(
                "scaling.cluster", SECTION, "1 worker process, 3-master Redis Cluster", "not requested (pass --cluster)"
            )
        )
    return rows
