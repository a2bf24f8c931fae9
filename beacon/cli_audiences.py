"""`beacon plans ...` and `beacon segments backfill`: the plan and segment commands rule authors run.

Thin clients of the HTTP API (as `beacon.cli_commands`, whose connection options, errors and exit codes
they share): nothing here reads Redis.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from beacon.cli_commands import (
    REQUEST_TIMEOUT_S,
    Kind,
    Remote,
    _command,
    _json_option,
    _list_options,
    list_all,
    print_json,
    push_document,
    read_events,
    table,
    when,
)
from beacon.cli_http import EXIT_USAGE, CommandError

PLANS = Kind("plan", "plans", "branches")
BACKFILL_CHUNK = 10_000  # events per call: the server's bound (api.routes_segments.MAX_BACKFILL)
ARCHIVE_TIMEOUT_S = 3600.0  # a backfill from the archive answers once it is all fed


async def list_plans(remote: Remote, args: argparse.Namespace) -> int:
    """`plans list`: every plan (every page of them) with its version, state and next occurrence."""
    plans = await list_all(remote, "plans", args.limit)
    if args.json:
        print_json({"plans": plans})
        return 0
    rows = []
    for item in plans:
        upcoming = item.get("next_occurrence") or {}
        rows.append(
            [item.get("id"), item.get("version"), item.get("state"), upcoming.get("id", "-"), item.get("description")]
        )
    table(["id", "version", "state", "next occurrence", "description"], rows)
    return 0


async def plan_runs(remote: Remote, args: argparse.Namespace) -> int:
    """`plans runs ID`: the occurrences, newest first, with their counts."""
    answer = await remote.request("GET", "v1", "plans", args.id, "runs")
    if args.json:
        print_json(answer)
        return 0
    print(f"plan {args.id}: {answer.get('state')}")
    rows = [
        [
            run.get("occurrence"),
            run.get("status"),
            when(run.get("start_ms")),
            run.get("targeted"),
            run.get("sent"),
            run.get("entered"),
            ", ".join(f"{reason} {count}" for reason, count in (run.get("blocked") or {}).items()) or "-",
        ]
        for run in answer.get("runs") or []
    ]
    table(["occurrence", "status", "starts (UTC)", "targeted", "sent", "entered", "blocked"], rows)
    return 0


async def set_plan_state(remote: Remote, args: argparse.Namespace) -> int:
    """`plans pause | resume | cancel ID`."""
    answer = await remote.request("POST", "v1", "plans", args.id, action=args.verb)
    cancelled = answer.get("cancelled_runs") or []
    print(f"plan {args.id}: {answer.get('state')}" + (f" (cancelled {', '.join(cancelled)})" if cancelled else ""))
    return 0


async def backfill_segment(remote: Remote, args: argparse.Namespace) -> int:
    """`segments backfill ID --events FILE`: the file's events to the segment's history, in chunks;
    `--archive [--from X] [--to Y]`: the event archive's, in one call."""
    if args.timeout is None:
        remote = dataclasses.replace(remote, timeout_s=ARCHIVE_TIMEOUT_S if args.archive else REQUEST_TIMEOUT_S)
    if args.archive:
        return await _backfill_from_archive(remote, args)
    if args.window_from is not None or args.window_to is not None:
        raise CommandError(
            "--from and --to go with --archive (a file backfill takes every event of the file)", EXIT_USAGE
        )
    events, _ = read_events(args.events)
    totals: dict[str, Any] = {"accepted": 0, "ignored": {}, "error_count": 0}
    for start in range(0, len(events), BACKFILL_CHUNK):
        chunk = events[start : start + BACKFILL_CHUNK]
        answer = await remote.request("POST", "v1", "segments", args.id, action="backfill", body={"events": chunk})
        totals["accepted"] += int(answer.get("accepted", 0))
        totals["error_count"] += int(answer.get("error_count", 0))
        for event_type, count in (answer.get("ignored") or {}).items():
            totals["ignored"][event_type] = totals["ignored"].get(event_type, 0) + int(count)
        for error in answer.get("errors") or []:
            line = start + int(error.get("index", 0)) + 1
            print(f"{args.events}: event {line}: {error.get('path')}: {error.get('message')}", file=sys.stderr)
    if args.json:
        print_json(totals)
    else:
        ignored = ", ".join(f"{kind} {count}" for kind, count in sorted(totals["ignored"].items())) or "none"
        print(f"backfilled {totals['accepted']:,} events into {args.id}; ignored (types it does not read): {ignored}")
        if totals["error_count"]:
            print(f"{totals['error_count']:,} events refused (see above)")
    return 1 if totals["error_count"] else 0


async def _backfill_from_archive(remote: Remote, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"source": "archive"}
    for name, value in (("from", args.window_from), ("to", args.window_to)):
        if value is not None:
            body[name] = int(value) if value.isascii() and value.isdigit() else value
    answer = await remote.request("POST", "v1", "segments", args.id, action="backfill", body=body)
    if args.json:
        print_json(answer)
        return 0
    skipped = ", ".join(f"{reason} {count:,}" for reason, count in sorted((answer.get("skipped") or {}).items()))
    print(
        f"backfilled {answer.get('accepted', 0):,} events into {args.id} from the archive "
        f"({when(answer.get('from_ms'))} .. {when(answer.get('to_ms'))} UTC; types: "
        f"{', '.join(answer.get('types') or []) or 'none'}); read {answer.get('read', 0):,}, skipped: "
        f"{skipped or 'none'}; {float(answer.get('elapsed_ms') or 0) / 1000:.1f}s"
    )
    return 0


def add_commands(commands: Any) -> None:
    """`beacon plans list | push | runs | pause | resume | cancel`, `beacon segments backfill`."""
    plans = commands.add_parser("plans", help="plans on a server: list, push, runs, pause, resume, cancel")
    plan_commands = plans.add_subparsers(dest="plans_command", required=True, metavar="COMMAND")
    listed = _command(plan_commands, "list", list_plans, "rules", "the plans, their state and next occurrence")
    _list_options(listed)
    push = _command(
        plan_commands, "push", push_document, "rules", "store a plan file on a running server",
        'PUT the file as the newest version of its plan (the document\'s "id"); running occurrences go on.',
        kind=PLANS,
    )  # fmt: skip
    push.add_argument("file", help="plan JSON file, - for stdin")
    runs = _command(plan_commands, "runs", plan_runs, "rules", "a plan's occurrences: status and counts")
    runs.add_argument("id", help="the plan's id")
    _json_option(runs)
    for verb, text in (
        ("pause", "stop sending and opening occurrences until resumed"),
        ("resume", "make a paused or cancelled plan active again"),
        ("cancel", "end the running occurrences (unsent users dropped), open no more until resumed"),
    ):
        command = _command(plan_commands, verb, set_plan_state, "rules", text, verb=verb)
        command.add_argument("id", help="the plan's id")

    segments = commands.add_parser("segments", help="segments on a server: backfill")
    segment_commands = segments.add_subparsers(dest="segments_command", required=True, metavar="COMMAND")
    backfill = _command(
        segment_commands, "backfill", backfill_segment, "rules", "feed past events to a segment's behaviour history",
        "POST the file's events, 10,000 at a time, to /v1/segments/ID:backfill: those of types the segment reads "
        "are recorded in their users' history and membership is judged as of now, silently (no rule or journey "
        "acts on them). Events without event_id get one from their content, so a file fed twice counts once. "
        "Exit code 1 when some events were refused. With --archive the server reads its event archive instead "
        "(the serve that archives: another answers 409), the window's events of the types the segment reads, "
        "and answers once they are all fed, at the rate the engine processes them (about a minute a million "
        f"on 2 vCPUs): the answer is awaited {ARCHIVE_TIMEOUT_S:g}s unless --timeout says otherwise.",
    )  # fmt: skip
    backfill.set_defaults(timeout=None)  # 30 s a call for a file's chunks, an hour for the archive
    backfill.add_argument("id", help="the segment's id")
    source = backfill.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", metavar="FILE", help=".jsonl (or gzip-compressed), one event a line")
    source.add_argument("--archive", action="store_true", help="the server's event archive")
    for flag, dest, text in (
        ("--from", "window_from", "the segment's longest behaviour window back from now"),
        ("--to", "window_to", "now"),
    ):
        backfill.add_argument(
            flag,
            dest=dest,
            metavar="TIME",
            help=f"with --archive: event time, as ms, YYYY-MM-DD (UTC, the whole day) or ISO 8601 (default: {text})",
        )
    _json_option(backfill, "the totals (with --archive: the server's answer)")
