"""`python -m bench [all|<name> ...] [--size smoke|default|full]`: run, print a table, write JSON and CSV."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import archive, durable_side, ingest, journeys, plans, replay, scaling, segments, timers
from bench.harness import beacon_stack
from bench.report import RESULTS_DIR, Row, cpu_snapshot, others_share, skipped, table, write
from bench.sizes import SIZES, Size, size_named

log = logging.getLogger("bench")

Bench = Callable[[Size, bool], Awaitable[list[Row]]]


async def _on_main_stack(size: Size, run: Callable[..., Awaitable[list[Row]]]) -> list[Row]:
    """Run one benchmark on a fresh Valkey and `beacon serve` with in-process workers."""
    async with beacon_stack() as stack:
        return await run(stack, size)


async def _throughput(size: Size, cluster: bool) -> list[Row]:
    return await ingest.throughput(size)


async def _latency(size: Size, cluster: bool) -> list[Row]:
    return await _on_main_stack(size, ingest.latency)


async def _timers(size: Size, cluster: bool) -> list[Row]:
    return await _on_main_stack(size, timers.timer_rows)


async def _replay(size: Size, cluster: bool) -> list[Row]:
    return await _on_main_stack(size, replay.replay_rows)


async def _backtest(size: Size, cluster: bool) -> list[Row]:
    return await replay.backtest_rows(size)


async def _durable(size: Size, cluster: bool) -> list[Row]:
    return await durable_side.side_by_side(size)


async def _scaling(size: Size, cluster: bool) -> list[Row]:
    return await scaling.scaling_rows(size, cluster)


async def _journeys(size: Size, cluster: bool) -> list[Row]:
    return await journeys.journey_rows(size)


async def _segments(size: Size, cluster: bool) -> list[Row]:
    return await segments.segment_rows(size)


async def _plans(size: Size, cluster: bool) -> list[Row]:
    return await plans.plan_rows(size)


async def _archive(size: Size, cluster: bool) -> list[Row]:
    return await archive.archive_rows(size)


# In `all` order; `timers` also measures memory, `durable` runs Beacon on the same log for the ratio,
# `journeys` measures both the journey stream and the memory of waiting instances, `segments` the CPU of
# live segments, the memory of a membership and the estimate's latency.
BENCHES: dict[str, Bench] = {
    "throughput": _throughput,
    "latency": _latency,
    "timers": _timers,
    "replay": _replay,
    "backtest": _backtest,
    "durable": _durable,
    "scaling": _scaling,
    "journeys": _journeys,
    "segments": _segments,
    "plans": _plans,
    "archive": _archive,
}
ALIASES = {"ingest": ("throughput", "latency"), "memory": ("timers",), "all": tuple(BENCHES)}


def expected_row_ids(size: Size, names: list[str]) -> list[str]:
    """The ids of every row the named benchmarks report at `size`, in order (skipped rows included)."""
    ids = {
        "throughput": [
            *(f"ingest.{t}.{m}" for t in ("http", "ws", "http+worker") for m in ("accepted", "processed", "sustained")),
            *(f"cpu.{t}.{role}_us_per_event" for t in ("http", "ws") for role in ("serve", "redis", "total")),
            *(f"cpu.http+worker.{role}_us_per_event" for role in ("serve", "workers", "redis", "total")),
        ],
        "latency": [f"latency.r{i + 1}" for i in range(len(size.latency_rates))],
        "timers": [
            *(f"timers.lateness.{level}" for level in size.pending_levels),
            "memory.per_timer_set",
            "memory.per_pending_absence",
            "memory.per_user",
            "memory.per_1m_users",
        ],
        "replay": ["replay.inprocess", "replay.http"],
        "backtest": [f"backtest.jobs{jobs}" for jobs in replay.backtest_jobs()],
        "durable": durable_side.row_ids(),  # one skipped row without the `bench` extra
        "scaling": [*(f"scaling.workers.{count}" for count in size.worker_counts), "scaling.cluster"],
        "journeys": journeys.row_ids(),
        "segments": segments.row_ids(),
        "plans": plans.row_ids(),
        "archive": archive.row_ids(),
    }
    return [row_id for name in names for row_id in ids[name]]


async def run(names: list[str], size: Size, cluster: bool, background: dict[str, float]) -> list[Row]:
    """Run the named benchmarks in order; a benchmark that fails becomes one skipped row, the rest go on.

    `background` receives, per benchmark, the share of the machine's CPU other processes used meanwhile.
    """
    rows: list[Row] = []
    for name in names:
        started, cpu_before = time.monotonic(), cpu_snapshot()
        log.info("bench %s (%s) ...", name, size.name)
        try:
            rows += await BENCHES[name](size, cluster)
        except Exception as exc:  # one failed benchmark must not lose the others' results
            log.exception("bench %s failed", name)
            rows.append(skipped(f"{name}.failed", name, f"{name} benchmark", f"failed: {exc!r}"[:300]))
        background[name] = round(others_share(cpu_before, cpu_snapshot()), 1)
        log.info(
            "bench %s done in %.0fs (other processes: %.0f%% of the CPU)",
            name,
            time.monotonic() - started,
            background[name],
        )
    return rows


def _terminate(signum: int, frame: object) -> None:
    # Turn SIGTERM into an exception so every `finally` stops the processes it started.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse arguments, run, print the table, write the files."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", default=["all"], help=f"all, or some of: {', '.join([*BENCHES, *ALIASES])}")
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--cluster", action="store_true", help="also measure a 3-master loopback Redis Cluster")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON and CSV files")
    parser.add_argument("--users", type=int, help="override the workload's user count")
    parser.add_argument("--burst-events", type=int, help="override events per flat-out run")
    parser.add_argument("--memory-users", type=int, help="override users in the memory sample")
    parser.add_argument("--journey-instances", type=int, help="override waiting journey instances per memory case")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    names: list[str] = []
    for name in args.names:
        if name not in BENCHES and name not in ALIASES:
            parser.error(f"unknown benchmark {name!r}")
        names += [n for n in ALIASES.get(name, (name,)) if n not in names]
    size = size_named(
        args.size,
        users=args.users,
        burst_events=args.burst_events,
        memory_users=args.memory_users,
        journey_instances=args.journey_instances,
    )
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(message)s",
    )
    logging.getLogger("bench").setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.time()
    background: dict[str, float] = {}
    rows = asyncio.run(run(names, size, args.cluster, background))
    print(table(rows))
    busy = ", ".join(f"{name} {share:.0f}%" for name, share in background.items())
    print(f"\nother processes' share of the machine's CPU meanwhile: {busy}")
    json_path, csv_path = write(rows, size.name, args.out, started, background)
    print(f"written: {json_path} {csv_path} ({time.time() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
