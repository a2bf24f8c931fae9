"""Backtest speed: a recorded event log replayed through the dry-run path, in-process and over HTTP."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from bench.harness import BeaconStack, load_ruleset
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
