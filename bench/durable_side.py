"""Side by side: the same events and timers through durable_rules alone and through Beacon; the ratios."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import cpu, load
from bench.harness import beacon_stack, load_ruleset
from bench.ingest import load_profiles
from bench.report import Row, skipped
from bench.sizes import Size
from bench.timers import probe
from bench.workload import Workload

SECTION = "vs durable_rules"
NOT_INSTALLED = "durable_rules not installed (pip install -e '.[bench]')"
ROWS = (
    "events",
    "beacon_events",
    "events_ratio",
    "cpu",
    "beacon_cpu",
    "cpu_ratio",
    "timer_p50",
    "beacon_timer_p50",
    "timer_p99_ratio",
    "restrictions",
)
TIMER_AFTER_S = 2  # durable timers take whole seconds
CHILD_TIMEOUT_S = 600


def durable_installed() -> bool:
    """Whether durable_rules (the `bench` extra) is installed; looked up without importing it here,
    since only the child process may load it (it can crash the interpreter)."""
    return all(importlib.util.find_spec(name) is not None for name in ("durable", "durable_rules_engine"))


def row_ids() -> list[str]:
    """The ids of the rows `side_by_side` reports in this environment."""
    return [f"durable.{name}" for name in ROWS] if durable_installed() else ["durable.skipped"]


async def _run_child(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run bench.durable_engine in a child interpreter (durable_rules may crash it); its JSON result.

    The child runs in its own process group, killed on timeout, on error and on cancellation.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
        path = Path(handle.name)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.durable_engine",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout_s)
        except TimeoutError:
            raise RuntimeError(f"durable_rules run exceeded {timeout_s:.0f}s") from None
        if process.returncode != 0:
            code = process.returncode or 0
            why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
            raise RuntimeError(f"durable_rules process {why}: {err.decode(errors='replace')[-300:]}")
        result: dict[str, Any] = json.loads(out)
        return result
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def beacon_firings(base_url: str) -> int:
    """Firings admitted so far, from `beacon_rule_matches_total` on the server's /metrics."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as response:
        text = await response.text()
    return int(
        sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("beacon_rule_matches_total{")
        )
    )


def _ratio(beacon: float, durable: float) -> float | None:
    return beacon / durable if durable and not math.isnan(durable) and not math.isnan(beacon) else None


async def side_by_side(size: Size) -> list[Row]:
    """events/s and timer lateness on durable_rules and on Beacon, same events, and Beacon / durable."""
    if not durable_installed():
        return [skipped("durable.skipped", SECTION, "durable_rules comparison", NOT_INSTALLED)]
    workload = Workload(size.durable_users, prefix="d", seed=5)
    events = workload.events(size.durable_events)
    profiles = workload.profiles()
    now = int(time.time() * 1000)
    timed = [{**event, "ts": now + index} for index, event in enumerate(events)]
    spec = {
        "document": load_ruleset(),
        "profiles": profiles,
        "events": timed,
        "timers": size.durable_timers,
        "timer_after_s": TIMER_AFTER_S,
    }
    try:
        durable = await _run_child(spec, CHILD_TIMEOUT_S)
    except RuntimeError as exc:
        return [skipped("durable.failed", SECTION, "durable_rules run", str(exc))]
    durable_rate = durable["events"] / durable["seconds"]
    durable_cpu = durable["cpu_seconds"] / durable["events"] * 1e6
    durable_late = load.latency_summary(durable["timer_lateness_ms"])

    async with beacon_stack() as stack:
        redis = stack.client()
        try:
            await load_profiles(redis, workload, stack.partitions)
            await load.wait_drained(redis, stack.partitions, size.drain_timeout_s)
            roles = stack.pids_by_role()
            cpu_before = await cpu.sample(redis, roles)
            result = await load.blast_http(stack.base_url, events)
            drained = await load.wait_drained(redis, stack.partitions, size.drain_timeout_s)
            if drained is None:
                raise RuntimeError("Beacon did not drain the comparison log")
            beacon_cpu = cpu.per_event_us(cpu_before, await cpu.sample(redis, roles), result.accepted)
            beacon_rate = result.accepted / (drained - result.started)
            fired_beacon = await beacon_firings(stack.base_url)
            window_ms = TIMER_AFTER_S * 1000
            lateness, _ = await probe(stack, redis, size.durable_timers, "dq-", spread_ms=0, lead_ms=window_ms)
        finally:
            await redis.aclose()
    beacon_late = load.latency_summary(lateness)
    fired = sum(durable["fired"].values())
    restricted = "; ".join(durable["restrictions"])
    events_detail = f"{len(events):,} events of {size.durable_users:,} users, the mix's 23 rules"
    return [
        Row(
            "durable.events",
            SECTION,
            "durable_rules in-process events/s",
            durable_rate,
            "events/s",
            f"{events_detail}; {fired:,} firings; no durability",
            {"fired": durable["fired"]},
        ),
        Row(
            "durable.beacon_events",
            SECTION,
            "Beacon on the same events: processed/s",
            beacon_rate,
            "events/s",
            f"{events_detail}; {fired_beacon:,} firings; HTTP flat out, first send -> backlog empty, AOF on",
            {"fired": fired_beacon},
        ),
        Row(
            "durable.events_ratio",
            SECTION,
            "events/s ratio Beacon / durable_rules",
            _ratio(beacon_rate, durable_rate),
            "x",
            "higher favours Beacon",
        ),
        Row(
            "durable.cpu",
            SECTION,
            "durable_rules in-process CPU per event",
            durable_cpu,
            "µs/event",
            f"{events_detail}; CPU time of the durable_rules process over its event loop",
        ),
        Row(
            "durable.beacon_cpu",
            SECTION,
            "Beacon CPU per event on the same events",
            beacon_cpu["total"],
            "µs/event",
            f"`beacon serve` {beacon_cpu['serve']:.0f} + Redis {beacon_cpu['redis']:.0f}; first send -> backlog "
            "empty (bench/cpu.py): robust to other tenants, unlike the events/s rows",
            beacon_cpu,
        ),
        Row(
            "durable.cpu_ratio",
            SECTION,
            "events per CPU-second ratio Beacon / durable_rules",
            _ratio(durable_cpu, beacon_cpu["total"]),
            "x",
            "higher favours Beacon; durable_rules runs in one process, Beacon's CPU is spread over serve and Redis",
        ),
        Row(
            "durable.timer_p50",
            SECTION,
            f"durable_rules timer lateness p50 ({size.durable_timers} due at once)",
            durable_late["p50"],
            "ms",
            f"p99 {durable_late['p99']:.0f} / max {durable_late['max']:.0f} ms; "
            f"{durable_late['n']:.0f} of {size.durable_timers} fired; 1 s resolution (can fire early: negative)",
            durable_late,
        ),
        Row(
            "durable.beacon_timer_p50",
            SECTION,
            f"Beacon timer lateness p50 ({size.durable_timers} due at once)",
            beacon_late["p50"],
            "ms",
            f"p99 {beacon_late['p99']:.0f} / max {beacon_late['max']:.0f} ms; "
            f"{beacon_late['n']:.0f} of {size.durable_timers} fired",
            beacon_late,
        ),
        Row(
            "durable.timer_p99_ratio",
            SECTION,
            "timer lateness p99 ratio Beacon / durable_rules",
            _ratio(beacon_late["p99"], durable_late["p99"]),
            "x",
            "lower favours Beacon",
        ),
        Row(
            "durable.restrictions",
            SECTION,
            "durable_rules restrictions",
            float(len(durable["restrictions"])),
            "items",
            restricted,
        ),
    ]
