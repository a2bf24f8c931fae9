"""Scaling: worker throughput with 1, 2 and 4 `beacon worker` processes, and single Redis vs a Cluster."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import load
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

    The rate counts from the first backlog drop, so process start-up (imports, compiling the ruleset)
    is left out; tag events the batch emits join the backlog and make the figure slightly low.
    """
    for start in range(0, len(events), 50_000):
        await load.blast_http(stack.base_url, events[start : start + 50_000])
    initial = await load.backlog(redis, stack.partitions)
    launched = time.monotonic()
    await stack.start_workers(workers)
    try:
        first: tuple[float, int] | None = None
        deadline = launched + size.drain_timeout_s
        while time.monotonic() < deadline:
            now, left = time.monotonic(), await load.backlog(redis, stack.partitions)
            if first is None and left < initial:
                first = (now, left)
            if left == 0 and first is not None:
                return {
                    "rate": first[1] / max(now - first[0], 1e-9),
                    "events": float(initial),
                    "startup_s": first[0] - launched,
                    "seconds": now - first[0],
                }
            await asyncio.sleep(POLL_S)
        raise RuntimeError(f"backlog of {initial:,} not drained by {workers} worker(s) in {size.drain_timeout_s:.0f}s")
    finally:
        await asyncio.to_thread(stack.stop_workers)


def _row(id_: str, label: str, measured: dict[str, float], workers: int, server: str) -> Row:
    detail = (
        f"{measured['events']:,.0f} entries preloaded, then {workers} `beacon worker` process(es) + `beacon serve` "
        f"(BEACON_RUN_WORKERS=0) on {server}; drained in {measured['seconds']:.1f}s after "
        f"{measured['startup_s']:.1f}s start-up"
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
