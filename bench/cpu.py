"""CPU time of the processes under test, per role, between two instants: µs of CPU per processed event.

CPU time rather than wall time, so the figure holds on a shared machine: other tenants stretch the wall
clock but not the CPU a process is charged (cache and frequency effects aside). Beacon processes are
read from `/proc/<pid>/stat` (utime + stime of every thread, in clock ticks); the Redis server from
`INFO cpu` (`used_cpu_user` + `used_cpu_sys`, getrusage of the whole server: µs resolution, and it
works without knowing the server's pid). The benchmark process (the load generator) is reported apart:
it is the client, not part of the system measured.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import Row

SECTION = "CPU per event"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of a live process (all its threads) in seconds; 0.0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Field 2 (comm) is in parentheses and may hold spaces: count fields after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def own_cpu_s() -> float:
    """This process's CPU seconds (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def redis_cpu_s(redis: Any) -> float:
    """The Redis server's CPU seconds from INFO cpu (summed over nodes for a cluster client)."""
    info = await redis.info("cpu")
    nodes = info.values() if info and all(isinstance(value, dict) for value in info.values()) else [info]
    return sum(float(node["used_cpu_user"]) + float(node["used_cpu_sys"]) for node in nodes)


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds per role at one instant: Beacon processes by role, the server, and the benchmark."""

    beacon: Mapping[str, float]
    redis: float
    bench: float


async def sample(redis: Any, roles: Mapping[str, Sequence[int]]) -> CpuSample:
    """Now, for `roles` (role -> pids, e.g. {"serve": [pid], "workers": [pid, pid]})."""
    beacon = {role: sum(process_cpu_s(pid) for pid in pids) for role, pids in roles.items()}
    return CpuSample(beacon, await redis_cpu_s(redis), own_cpu_s())


def per_event_us(before: CpuSample, after: CpuSample, events: int) -> dict[str, float]:
    """µs of CPU per event for each Beacon role, `redis`, `total` (Beacon + Redis) and `bench` (apart)."""
    count = max(events, 1)
    used = {role: after.beacon[role] - before.beacon.get(role, 0.0) for role in after.beacon}
    used["redis"] = after.redis - before.redis
    used["total"] = sum(used.values())
    used["bench"] = after.bench - before.bench
    return {role: seconds / count * 1e6 for role, seconds in used.items()}


ROLE_LABELS = {
    "serve": "`beacon serve` (ingest + in-process workers)",
    "workers": "`beacon worker` processes",
    "redis": "Redis server (INFO cpu)",
    "total": "total: Beacon + Redis",
}


def cpu_rows(prefix: str, what: str, cost: Mapping[str, float], events: int, window: str) -> list[Row]:
    """Rows `<prefix>.<role>_us_per_event` for every role measured, then the total."""
    rows = []
    for role in [*(r for r in cost if r not in ("redis", "total", "bench")), "redis", "total"]:
        source = "INFO cpu used_cpu_user+sys" if role == "redis" else "/proc/<pid>/stat utime+stime"
        detail = f"{cost[role] * events / 1e6:.2f} s of CPU ({source}) over {events:,} events, {window}"
        if role == "total":
            ceiling = 1e6 / cost["total"] if cost["total"] > 0 else float("nan")
            detail = (
                f"{what}: {ceiling:,.0f} events/s per core of CPU; the load generator (this benchmark) used "
                f"{cost['bench']:.0f} µs/event more, not counted"
            )
        rows.append(
            Row(
                f"{prefix}.{role}_us_per_event",
                SECTION,
                f"{what}: {ROLE_LABELS.get(role, role)}",
                cost[role],
                "µs/event",
                detail,
                {"events": events, **{f"{name}_us": round(value, 2) for name, value in cost.items()}},
            )
        )
    return rows
