"""Backtest speed: a recorded event log replayed through the dry-run path, in-process and over HTTP."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import RULESET_PATH, BeaconStack, load_ruleset
from bench.report import Row
from bench.sizes import Size
from bench.workload import Workload
from cep.dryrun import dry_run
from cep.events import Event
from rules.registry import compile_ruleset

SECTION = "replay (dry-run)"
REPLAY_USERS = 200
MEAN_GAP_MS = 500.0  # event time between log entries: 5,000 events span ~42 minutes
TAIL_MS = 3_600_000  # simulate an hour past the last event, so 30m and 1h absences fire
HTTP_MAX_EVENTS = 10_000  # POST /v1/rulesets/{id}:dry-run takes at most this many
DEDUPE_HORIZON_MS = 7 * 86_400_000


def recorded_log(count: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """A log of `count` timed events over REPLAY_USERS users, and those users' profiles."""
    workload = Workload(REPLAY_USERS, prefix="r", seed=3)
    start = int(time.time() * 1000) - int(count * MEAN_GAP_MS) - TAIL_MS
    return workload.timed_log(count, start, MEAN_GAP_MS), workload.profiles()


def _event(wire: dict[str, Any]) -> Event:
    return Event(
        event_id=wire["event_id"],
        user_id=wire["user_id"],
        type=wire["type"],
        ts=wire["ts"],
        attrs=wire.get("attrs") or {},
        received_ms=wire["ts"],
    )


async def replay_rows(stack: BeaconStack, size: Size) -> list[Row]:
    """Events/s through `cep.dryrun.dry_run` in this process, and through the HTTP endpoint."""
    log, profiles = recorded_log(size.replay_events)
    until = log[-1]["ts"] + TAIL_MS
    document = load_ruleset()
    ruleset = compile_ruleset(document, ruleset_id=document["id"], lateness_ms=2_000)
    events = [_event(wire) for wire in log]
    started = time.perf_counter()
    report = dry_run(ruleset, events, profiles, DEDUPE_HORIZON_MS, until)
    seconds = time.perf_counter() - started
    span_min = (log[-1]["ts"] - log[0]["ts"]) / 60_000
    rows = [
        Row(
            "replay.inprocess",
            SECTION,
            "dry-run in-process (cep.dryrun.dry_run)",
            len(log) / seconds,
            "events/s",
            f"{len(log):,} events of {REPLAY_USERS} users over {span_min:.0f} min of event time + 1h; "
            f"{len(report['firings']):,} firings, {len(report['pending_timers']):,} timers left pending; "
            f"{seconds:.1f}s",
            {"firings": len(report["firings"]), "seconds": seconds},
        )
    ]
    http_log = log[:HTTP_MAX_EVENTS]
    body = {"events": http_log, "profiles": profiles, "until": http_log[-1]["ts"] + TAIL_MS}
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.post(f"{stack.base_url}/v1/rulesets/{document['id']}:dry-run", json=body) as response:
            reply = await response.json(content_type=None)
        seconds = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"dry-run answered {response.status}: {str(reply)[:300]}")
    rows.append(
        Row(
            "replay.http",
            SECTION,
            "dry-run over HTTP (POST :dry-run)",
            len(http_log) / seconds,
            "events/s",
            f"{len(http_log):,} events in one request (limit {HTTP_MAX_EVENTS:,}); "
            f"{len(reply['firings']):,} firings; {seconds:.1f}s",
            {"firings": len(reply["firings"])},
        )
    )
    return rows


BACKTEST_USERS = 200_000
BACKTEST_SPAN_MS = 7 * 86_400_000  # the log covers a week of event time, whatever its length
BACKTEST_CHUNK = 100_000
BACKTEST_COMMAND = (sys.executable, "-m", "beacon.cli", "backtest")


def backtest_jobs() -> list[int]:
    """`--jobs` values measured: 1, and every CPU this process may use when there is more than one."""
    cpus = len(os.sched_getaffinity(0))
    return [1, cpus] if cpus > 1 else [1]


def write_backtest_log(path: Path, count: int) -> None:
    """`count` mix events of BACKTEST_USERS users over a week, as .jsonl.gz, written in chunks."""
    workload = Workload(BACKTEST_USERS, prefix="b", seed=7)
    gap = BACKTEST_SPAN_MS / count
    ts = int(time.time() * 1000) - BACKTEST_SPAN_MS - TAIL_MS
    with gzip.open(path, "wt", compresslevel=1) as out:
        for start in range(0, count, BACKTEST_CHUNK):
            chunk = workload.timed_log(min(BACKTEST_CHUNK, count - start), ts, gap)
            ts = chunk[-1]["ts"]
            out.writelines(json.dumps(event, separators=(",", ":")) + "\n" for event in chunk)


def _run_backtest(log: Path, jobs: int) -> tuple[dict[str, Any], float, float]:
    """`beacon backtest --json --jobs` as its own process: (report, wall seconds, CPU seconds of its processes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [*BACKTEST_COMMAND, "--ruleset", str(RULESET_PATH), "--events", str(log), "--json", "--jobs", str(jobs)],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"beacon backtest exited {done.returncode}: {done.stderr[-500:]}")
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    report: dict[str, Any] = json.loads(done.stdout)
    return report, seconds, cpu_s


async def backtest_rows(size: Size) -> list[Row]:
    """`beacon backtest` over a generated .jsonl.gz log: events/s end to end (reading and parsing
    the file included), in one process and in one per CPU, and the CPU it took per event."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="beacon-bench-backtest-") as tmp:
        log = Path(tmp) / "events.jsonl.gz"
        started = time.perf_counter()
        await asyncio.to_thread(write_backtest_log, log, size.backtest_events)
        written_s = time.perf_counter() - started
        for jobs in backtest_jobs():
            report, seconds, cpu_s = await asyncio.to_thread(_run_backtest, log, jobs)
            totals = report["totals"]
            rows.append(
                Row(
                    f"backtest.jobs{jobs}",
                    SECTION,
                    f"beacon backtest --jobs {jobs} (file read and parsed)",
                    totals["events"] / seconds,
                    "events/s",
                    f"{totals['events']:,} events of {totals['users']:,} users over 7 days "
                    f"({log.stat().st_size / 1e6:.0f} MB gzipped, written in {written_s:.0f}s); "
                    f"{totals['firings']:,} firings, {totals['timers_fired']:,} timers fired; "
                    f"{seconds:.1f}s wall, {cpu_s * 1e6 / totals['events']:.1f} µs CPU/event over its processes",
                    {"seconds": seconds, "cpu_s": cpu_s, "firings": totals["firings"]},
                )
            )
    return rows
