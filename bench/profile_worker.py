"""`python -m bench.profile_worker [worker|serve]`: where a Beacon process spends its CPU on the mix.

`worker`: preloads events with no worker running, starts one `beacon worker`, and once it holds a
partition lease attaches py-spy (`pip install py-spy`: a tool, not a dependency) for a few seconds. `serve`:
samples `beacon serve` with its in-process workers while events arrive flat out over HTTP. Prints the
functions with the most samples of their own time (leaf frames), the inclusive share of a few entry
points, and the CPU µs per event of the process and of Redis over the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import cpu, load
from bench.harness import beacon_stack
from bench.ingest import load_profiles
from bench.journeys import push_library
from bench.workload import JourneyWorkload, Workload

FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")
# Entry points whose inclusive share says which stage of a batch costs what.
STAGES = (
    "post_events",
    "parse_event",
    "append_events",
    "process",
    "_load",
    "_evaluate",
    "on_event",
    "on_timer",
    "commit",
    "encode_user_state",
    "decode_user_state",
    "read_after",
    "decode_entry",
    "_fire",
    "_report",
)


def _function(frame: str) -> str:
    """`name (path:line)` -> `name (package/module.py)`: one row per function, not per line."""
    match = FRAME.match(frame)
    if not match:
        return frame
    parts = Path(match["file"]).parts
    return f"{match['name']} ({'/'.join(parts[-2:])})"


def summarise(raw: str, top: int) -> tuple[int, list[tuple[str, int]], dict[str, int]]:
    """Samples, the `top` functions by own samples, and inclusive samples of each of STAGES."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        # py-spy qualifies methods (`PartitionOwner.process`): match on the last part of the name.
        for name in {frame.split(" (", 1)[0].rsplit(".", 1)[-1] for frame in frames}:
            if name in STAGES:
                inclusive[name] += count
    return total, own.most_common(top), {name: inclusive[name] for name in STAGES}


def record(spy: str, pid: int, seconds: float, rate: int) -> str:
    """py-spy's collapsed stacks of `pid` over `seconds` (blocking: run it in a thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "worker.txt"
        # --gil: only the thread holding the GIL, i.e. the Python work. Without it, an idle thread-pool thread
        # (blocked in `SimpleQueue.get`, which py-spy does not see as idle) took a quarter of the samples.
        command = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate), "--gil"]
        subprocess.run([*command, "--format", "raw", "--output", str(out)], capture_output=True, check=True)
        return out.read_text()


async def drain_profile(spy: str, events: int, users: int, seconds: float, rate: int) -> tuple[str, str]:
    """A `beacon worker` draining a preloaded backlog: its stacks, and a line of CPU per event."""
    async with beacon_stack(run_workers=False) as stack:
        redis = stack.client()
        try:
            workload = Workload(users, prefix="pw", seed=19)
            await load_profiles(redis, workload, stack.partitions)
            batch = workload.events(events)
            for start in range(0, len(batch), 50_000):
                await load.blast_http(stack.base_url, batch[start : start + 50_000])
            initial = await load.backlog(redis, stack.partitions)
            await stack.start_workers(1)
            roles = stack.pids_by_role()
            await load.wait_leased(redis, stack.partitions, 120)  # started: imports done, ruleset compiled
            before = await cpu.sample(redis, roles)
            raw = await asyncio.to_thread(record, spy, roles["workers"][0], seconds, rate)
            left = await load.backlog(redis, stack.partitions)
            await load.wait_drained(redis, stack.partitions, 600)
            cost = cpu.per_event_us(before, await cpu.sample(redis, roles), initial)
        finally:
            await redis.aclose()
    return raw, (
        f"one `beacon worker` draining {initial:,} preloaded events of {users:,} users ({left:,} left when "
        f"sampling ended); CPU µs/event over the drain: worker {cost['workers']:.1f}, Redis {cost['redis']:.1f}"
    )


async def serve_profile(
    spy: str, events: int, users: int, seconds: float, rate: int, journeys: bool = False
) -> tuple[str, str]:
    """`beacon serve` with its in-process workers under a flat-out HTTP burst: its stacks, and CPU per event.

    `journeys`: the four library journeys are active and the events are the journey stream
    (bench/journeys.py) rather than the mix."""
    async with beacon_stack() as stack:
        redis = stack.client()
        try:
            workload: Workload | JourneyWorkload
            if journeys:
                await push_library(stack)
                workload = JourneyWorkload(users)
            else:
                workload = Workload(users, prefix="ps", seed=23)
            await load_profiles(redis, workload, stack.partitions)
            await load.blast_http(stack.base_url, workload.events(1_000))
            await load.wait_drained(redis, stack.partitions, 120)
            roles = stack.pids_by_role()
            before = await cpu.sample(redis, roles)
            blast = asyncio.create_task(load.blast_http(stack.base_url, workload.events(events)))
            raw = await asyncio.to_thread(record, spy, roles["serve"][0], seconds, rate)
            result = await blast
            await load.wait_drained(redis, stack.partitions, 600)
            cost = cpu.per_event_us(before, await cpu.sample(redis, roles), result.accepted)
        finally:
            await redis.aclose()
    return raw, (
        f"`beacon serve` (ingest + in-process workers) under {events:,} events of {users:,} users sent flat out "
        f"over HTTP; CPU µs/event: serve {cost['serve']:.1f}, Redis {cost['redis']:.1f}"
    )


def report(raw: str, context: str, seconds: float, rate: int, top: int) -> None:
    """Print the context line and the profile summary."""
    samples, leaders, stages = summarise(raw, top)
    print(f"{context}\npy-spy at {rate} Hz for {seconds:.0f}s: {samples:,} samples (GIL holder only)")
    print("\nOwn time (leaf frames):")
    for name, count in leaders:
        print(f"  {100 * count / max(samples, 1):5.1f} %  {name}")
    print("\nInclusive:")
    for name, count in stages.items():
        print(f"  {100 * count / max(samples, 1):5.1f} %  {name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_worker", description=__doc__)
    parser.add_argument("process", nargs="?", choices=("worker", "serve"), default="worker")
    parser.add_argument("--events", type=int, default=200_000, help="events preloaded, or sent flat out to serve")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=8.0, help="how long py-spy samples")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--journeys", action="store_true", help="serve only: the library journeys' stream")
    parser.add_argument("--save", type=Path, help="also write py-spy's collapsed stacks here (for a flame graph)")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 1
    if args.process == "worker":
        raw, context = asyncio.run(drain_profile(spy, args.events, args.users, args.seconds, args.rate))
    else:
        raw, context = asyncio.run(
            serve_profile(spy, args.events, args.users, args.seconds, args.rate, journeys=args.journeys)
        )
    if args.save:
        args.save.write_text(raw)
    report(raw, context, args.seconds, args.rate, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
