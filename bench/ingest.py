"""Ingest throughput (HTTP and WebSocket, flat out and the sustainable rate, with the CPU each process spends
per event) and ingest -> outbox latency."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis

from beacon.settings import Settings
from bench import cpu, load
from bench.harness import BeaconStack, beacon_stack
from bench.report import Row, skipped
from bench.sizes import Size
from bench.workload import JourneyWorkload, Workload
from cep.events import ProfilePatch
from cep.ownership import fair_shares
from cep.profiles import patch_profile

log = logging.getLogger("bench.ingest")

SECTION_THROUGHPUT = "ingest throughput"
SECTION_LATENCY = "ingest latency"
TRANSPORTS = {
    "http": "HTTP msgpack batches of 500, 8 in flight",
    "ws": "WebSocket BeaconProducer, 500/frame, 8 in flight",
}


async def load_profiles(redis: Redis, workload: Workload | JourneyWorkload, partitions: int) -> int:
    """Queue the workload's profiles (attributes and tags) so `if` conditions have something to read;
    the workers apply them in order before the events that follow."""
    profiles = list(workload.profiles().items())
    for start in range(0, len(profiles), 50):  # redis-py 8 raises past 100 pooled connections
        await asyncio.gather(
            *(
                patch_profile(redis, partitions, ProfilePatch(user_id, profile["attrs"], tuple(profile["tags"])), 0)
                for user_id, profile in profiles[start : start + 50]
            )
        )
    return len(profiles)


async def warm_up(
    stack: BeaconStack, redis: Redis, workload: Workload | JourneyWorkload, events: int, timeout_s: float
) -> None:
    """Send a first batch and wait for it: the first evaluations compile and load scripts."""
    await load.blast_http(stack.base_url, workload.events(events))
    await load.wait_drained(redis, stack.partitions, timeout_s)


async def _burst(
    stack: BeaconStack, redis: Redis, transport: str, events: list[dict[str, Any]], size: Size
) -> tuple[list[Row], list[Row]]:
    """Flat out: accepted/s until the last ack, processed/s until the backlog is empty; and the CPU
    each process spent over that same window, per event (the second list)."""
    blast = load.blast_http if transport.startswith("http") else load.blast_ws
    roles = stack.pids_by_role()
    cpu_before = await cpu.sample(redis, roles)
    result = await blast(stack.base_url, events)
    drained = await load.wait_drained(redis, stack.partitions, size.drain_timeout_s)
    cpu_after = await cpu.sample(redis, roles)
    prefix = f"ingest.{transport}"
    rows = [
        Row(
            f"{prefix}.accepted",
            SECTION_THROUGHPUT,
            f"{transport}: ingest accepted/s (flat out)",
            result.rate,
            "events/s",
            f"{TRANSPORTS[transport.split('+')[0]]}; {result.accepted:,} events acked in {result.seconds:.1f}s",
        )
    ]
    if drained is None:
        rows.append(
            Row(
                f"{prefix}.processed",
                SECTION_THROUGHPUT,
                f"{transport}: processed/s end to end (flat out)",
                None,
                "events/s",
                f"skipped: backlog not drained within {size.drain_timeout_s:.0f}s",
            )
        )
    else:
        seconds = drained - result.started
        rows.append(
            Row(
                f"{prefix}.processed",
                SECTION_THROUGHPUT,
                f"{transport}: processed/s end to end (flat out)",
                result.accepted / seconds,
                "events/s",
                f"first send -> backlog empty: {result.accepted:,} events in {seconds:.1f}s",
            )
        )
    what = f"{transport} flat out"
    if drained is None:
        reason = f"backlog not drained within {size.drain_timeout_s:.0f}s"
        return rows, [
            skipped(f"cpu.{transport}.{role}_us_per_event", cpu.SECTION, f"{what}: {label}", reason)
            for role, label in _cpu_roles(roles)
        ]
    cost = cpu.per_event_us(cpu_before, cpu_after, result.accepted)
    window = "first send -> backlog empty"
    return rows, cpu.cpu_rows(f"cpu.{transport}", what, cost, result.accepted, window)


def _cpu_roles(roles: dict[str, list[int]]) -> list[tuple[str, str]]:
    return [(role, cpu.ROLE_LABELS[role]) for role in [*roles, "redis", "total"]]


async def _trial(
    stack: BeaconStack, redis: Redis, transport: str, workload: Workload, rate: float, size: Size
) -> dict[str, Any]:
    """Offer `rate` for one trial; flat when the backlog neither grows nor holds over ~1 s of work."""
    await load.wait_drained(redis, stack.partitions, size.drain_timeout_s)
    sampler = asyncio.create_task(load.sample_backlog(redis, stack.partitions, size.trial_s))
    result = await load.paced(transport.split("+")[0], stack.base_url, workload.events, rate, size.trial_s)
    samples = await sampler
    offered = result.sent / size.trial_s
    half = [s for s in samples if s[0] >= samples[0][0] + size.trial_s / 2] or samples[-1:]
    slope = (half[-1][1] - half[0][1]) / max(half[-1][0] - half[0][0], 1e-9) if len(half) > 1 else 0.0
    end_backlog = samples[-1][1] if samples else 0
    flat = slope <= 0.05 * rate and end_backlog <= max(1_000, rate) and offered >= 0.9 * rate
    return {
        "rate": round(rate),
        "offered": round(offered),
        "slope": round(slope),
        "end_backlog": end_backlog,
        "flat": flat,
    }


async def _sustainable(
    stack: BeaconStack, redis: Redis, transport: str, workload: Workload, start: float, size: Size
) -> Row:
    """Search (bisection, `size.trials` trials) for the highest offered rate the workers keep up with."""
    low, high, rate = 0.0, float("inf"), max(start, 100.0)
    trials = []
    for _ in range(size.trials):
        trial = await _trial(stack, redis, transport, workload, rate, size)
        trials.append(trial)
        if trial["flat"]:
            low = max(low, float(trial["offered"]))
        else:
            high = min(high, rate)
        # Bisect between the best flat rate and the lowest growing one once both are known.
        bracketed = low and high != float("inf")
        rate = (low + high) / 2 if bracketed else rate * 1.3 if trial["flat"] else rate * 0.5
    tried = ", ".join(f"{t['rate']}{'=flat' if t['flat'] else '=grows'}" for t in trials)
    detail = f"paced {size.trial_s:.0f}s trials, backlog slope <= 5% of rate: {tried}"
    return Row(
        f"ingest.{transport}.sustained",
        SECTION_THROUGHPUT,
        f"{transport}: sustainable rate (workers keep up)",
        low or None,
        "events/s",
        detail if low else f"skipped: no flat trial ({tried})",
        {"trials": trials},
    )


async def throughput(size: Size) -> list[Row]:
    """Flat-out and sustainable throughput over HTTP and WebSocket, on the mix ruleset, then the CPU per
    event of `beacon serve` and Redis during each flat-out run.

    Each transport gets a fresh server: per-user state grows with every event sent, and the second
    transport would otherwise run against more state than the first.
    """
    rows: list[Row] = []
    cpu_rows: list[Row] = []
    # "http+worker": `beacon serve` and one `beacon worker` process, which share the partitions: the
    # scale-out that uses a second core (one Python process runs on one core at a time).
    for transport in ("http", "ws", "http+worker"):
        async with beacon_stack() as stack:
            redis = stack.client()
            try:
                if transport.endswith("+worker"):
                    await stack.start_workers(1)
                    # Measure once the worker has taken its share of the partitions from `serve` (with
                    # serve's default weight against the worker's 1).
                    serve = f"serve@{Settings().serve_partition_weight:g}"
                    share = fair_shares([serve, "worker@1"], stack.partitions)["worker@1"]
                    pid = stack.workers[0].process.pid
                    await load.wait_owning(redis, stack.partitions, pid, share, size.drain_timeout_s)
                workload = Workload(size.users, prefix="t")
                await load_profiles(redis, workload, stack.partitions)
                await warm_up(stack, redis, workload, min(1_000, size.burst_events), size.drain_timeout_s)
                burst, burst_cpu = await _burst(stack, redis, transport, workload.events(size.burst_events), size)
                rows += burst
                cpu_rows += burst_cpu
                processed = burst[-1].value or burst[0].value or 1_000.0
                rows.append(await _sustainable(stack, redis, transport, workload, 0.9 * processed, size))
            finally:
                await redis.aclose()
    return rows + cpu_rows


async def latency(stack: BeaconStack, size: Size) -> list[Row]:
    """Ingest -> outbox latency at fixed offered rates (server clock: `received_ms` -> outbox entry id)."""
    redis = stack.client()
    rows: list[Row] = []
    try:
        workload = Workload(size.users, prefix="l", seed=11)
        await load_profiles(redis, workload, stack.partitions)
        await warm_up(stack, redis, workload, min(1_000, size.burst_events), size.drain_timeout_s)
        for index, rate in enumerate(size.latency_rates):
            await load.wait_drained(redis, stack.partitions, size.drain_timeout_s)
            async with load.outbox_tail(redis, stack.partitions) as tail:
                result = await load.paced("http", stack.base_url, workload.events, rate, size.latency_s)
                peak = await load.backlog(redis, stack.partitions)
                drained = await load.wait_drained(redis, stack.partitions, size.drain_timeout_s)
                await asyncio.sleep(0.3)  # the last batch's XADDs to the outbox follow its XACK closely
            summary = load.latency_summary(load.ingest_latencies(tail.records()))
            offered = result.sent / size.latency_s
            over = peak > max(1_000, rate)
            detail = (
                f"p95 {summary['p95']:.0f} / p99 {summary['p99']:.0f} / max {summary['max']:.0f} ms; "
                f"n={summary['n']:.0f} actions; offered {offered:,.0f}/s for {size.latency_s:.0f}s via HTTP; "
                f"backlog at end {peak:,}{' (over capacity: latency grows with run length)' if over else ''}"
                f"{'' if drained else '; not drained'}"
            )
            rows.append(
                Row(
                    f"latency.r{index + 1}",
                    SECTION_LATENCY,
                    f"ingest->outbox p50 @ {rate:,} ev/s",
                    summary["p50"],
                    "ms",
                    detail,
                    {**summary, "rate": rate, "offered": offered, "peak": peak},
                )
            )
        return rows
    finally:
        await redis.aclose()
