"""The event archive: write cost per event, bytes per event, and the funnel query over a large archive.

- `archive.write_us_per_event`: `size.archive_sample_events` storefront-mix events (with the actions a
  cart-recovery rule would create for half the carts, and their delivery outcome events) go the archive's
  whole way on a private Valkey: encoded as the partition owner encodes a batch's records (500 events per
  batch), appended to the partition's archive stream as the commit does, then drained by the real
  `Archiver` into Parquet files. CPU of this process and of Redis over that, per event.
- `archive.bytes_per_event`: the archive's files (events, actions, outcomes) after compaction (each day one
  file per table, as a past day ends), divided by the producer events.
- `archive.funnel_query_s`: `measure.archive_query.funnel` (a ruleset's actions, delivered, converted within
  7 days) over an archive of `size.archive_events` producer events: the sample above plus rows written
  straight through the archive's `ParquetWriter` (the drain's own writer), median of three runs.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from beacon.clock import ManualClock
from beacon.redis_server import EmbeddedRedis
from bench.cpu import own_cpu_s, redis_cpu_s
from bench.report import Row
from bench.sizes import Size
from bench.workload import Workload
from cep.archive_stream import (
    ACTIONS_FIELD,
    EVENTS_FIELD,
    Rows,
    archive_key,
    decode_entry,
    encode_actions,
    encode_events,
)
from cep.events import ORIGIN_DELIVERY, Event
from cep.firing import CreatedAction
from measure import archive_files as files
from measure.archive_query import funnel
from measure.archiver import ArchiveLimits, Archiver

log = logging.getLogger("bench.archive")

SECTION = "archive"
PARTITIONS = 4
BATCH = 500  # events per owner batch (the default BEACON_WORKER_BATCH)
START_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z: the generated archive spans the 7 days after
SPAN_MS = 7 * 86_400_000
RULESET = "cart-recovery"


def row_ids() -> list[str]:
    """Every row this benchmark reports, in order."""
    return ["archive.write_us_per_event", "archive.bytes_per_event", "archive.funnel_query_s"]


class _Generator:
    """Storefront-mix events over SPAN_MS, with a cart-recovery action for half the carts and the outcome event of
    each action (90 % delivered, 6 % skipped, 4 % dead), as the engine would archive them."""

    def __init__(self, users: int, total: int) -> None:
        self._workload = Workload(users, seed=11)
        self._gap = SPAN_MS / total
        self._ts = float(START_MS)
        self._count = 0

    def batch(self, count: int) -> tuple[list[Event], list[CreatedAction], int]:
        """`count` producer events (plus outcome events) and the actions they caused; and the producer count."""
        events: list[Event] = []
        actions: list[CreatedAction] = []
        for _ in range(count):
            self._ts += self._gap
            wire = self._workload.event(int(self._ts))
            ts = int(self._ts)
            event = Event(wire["event_id"], wire["user_id"], wire["type"], ts, wire["attrs"], ts + 3)
            events.append(event)
            self._count += 1
            if event.type == "add_to_cart" and self._count % 2 == 0:
                action = _action(event, ts + 1_000)
                actions.append(action)
                events.append(_outcome(action, self._count))
        return events, actions, count


def _action(trigger: Event, created: int) -> CreatedAction:
    action_id = f"a-{trigger.event_id}"
    record = {
        "action_id": action_id,
        "ruleset_id": RULESET,
        "ruleset_version": 3,
        "rule_id": "cart-no-pay-30m",
        "user_id": trigger.user_id,
        "type": "message",
        "params": {"channel": "sms", "template": "cart_reminder", "sku": trigger.attrs.get("sku")},
        "created_at": created,
        "due_at": created,
        "trigger_id": trigger.event_id,
    }
    return CreatedAction(action_id, record, "pending", None)


def _outcome(action: CreatedAction, number: int) -> Event:
    roll = number % 50
    status, reason = (
        ("delivered", "") if roll < 45 else ("skipped", "frequency_capped") if roll < 48 else ("dead", "http_5xx")
    )
    record = action.record
    attrs: dict[str, Any] = {
        "action_id": action.action_id, "type": "message", "ruleset_id": RULESET, "rule_id": record["rule_id"],
        "channel": "sms",
    }  # fmt: skip
    if reason:
        attrs["reason"] = reason
    at = int(record["created_at"]) + 2_000
    return Event(
        f"outcome:{action.action_id}:{status}:1",
        action.record["user_id"],
        f"action_{status}",
        at,
        attrs,
        at,
        ORIGIN_DELIVERY,
    )


async def _append(redis: Redis, batches: list[tuple[list[Event], list[CreatedAction], int]]) -> None:
    """Encode and append owner-sized batches' records, as commits do."""
    for number, (events, actions, _) in enumerate(batches):
        fields: dict[Any, Any] = {EVENTS_FIELD: encode_events(events)}
        if actions:
            fields[ACTIONS_FIELD] = encode_actions(actions)
        await redis.xadd(archive_key(number % PARTITIONS), fields)


def _write_direct(root: Path, generator: _Generator, count: int, chunk: int) -> None:
    """Rows of `count` more producer events written as drains write them, without Redis (the funnel's bulk)."""
    writer = files.ParquetWriter()
    try:
        done, number = 0, 0
        while done < count:
            events, actions, produced = generator.batch(min(chunk, count - done))
            rows = Rows()
            fields = {EVENTS_FIELD: encode_events(events), ACTIONS_FIELD: encode_actions(actions)}
            number += 1
            entry_id = f"{START_MS + number}-0".encode()
            decode_entry(number % PARTITIONS, entry_id, fields, rows)
            name = files.partition_file_name(number % PARTITIONS, entry_id, entry_id)
            for table, columns in rows.tables():
                for day, day_columns in files.split_by_day(table, columns).items():
                    writer.write(table, day_columns, root / table / f"day={day}" / name)
            done += produced
    finally:
        writer.close()


def _compact_all(root: Path) -> None:
    writer = files.ParquetWriter()
    try:
        for _, day_dir in files.day_dirs(root):
            for inputs, output in files.compactions(day_dir, 2, past=True):
                files.compact(writer, inputs, output)
    finally:
        writer.close()


async def archive_rows(size: Size) -> list[Row]:
    """Measure the archive's write cost, its bytes per event and the funnel query."""
    with tempfile.TemporaryDirectory(prefix="beacon-bench-archive-") as tmp:
        workdir = Path(tmp)
        server = EmbeddedRedis(workdir / "redis")
        await asyncio.to_thread(server.start)
        redis = Redis.from_url(server.url)
        try:
            return await _measure(redis, workdir / "data", size)
        finally:
            await redis.aclose()
            await asyncio.to_thread(server.stop)


async def _measure(redis: Redis, data_dir: Path, size: Size) -> list[Row]:
    total, sample = size.archive_events, min(size.archive_sample_events, size.archive_events)
    generator = _Generator(size.users, total)
    # The sample falls on the clock's today: the drains' cost first, then the day-end merge each row goes through.
    clock = ManualClock(START_MS + 86_400_000 - 1)
    archiver = Archiver(redis, data_dir, PARTITIONS, clock, ArchiveLimits(compact_files=10**9), asyncio.Event())
    batches = [generator.batch(min(BATCH, sample - first)) for first in range(0, sample, BATCH)]
    own, server, wall = own_cpu_s(), await redis_cpu_s(redis), time.perf_counter()
    await _append(redis, batches)
    await archiver.cycle()
    own, server, wall = own_cpu_s() - own, await redis_cpu_s(redis) - server, time.perf_counter() - wall
    root = files.archive_root(data_dir)
    merge = own_cpu_s()
    await asyncio.to_thread(_compact_all, root)
    merge = own_cpu_s() - merge
    write_us = (own + server + merge) / sample * 1e6
    log.info("archive: %d events archived in %.1fs (%.1f us/event)", sample, wall, write_us)
    started = time.perf_counter()
    await asyncio.to_thread(_write_direct, root, generator, total - sample, 100_000)
    await asyncio.to_thread(_compact_all, root)
    log.info("archive: %d more events written and compacted in %.0fs", total - sample, time.perf_counter() - started)
    by_table = {table: sum(p.stat().st_size for p in (root / table).glob("day=*/*.parquet")) for table in files.TABLES}
    runs = []
    for _ in range(3):
        cpu_before, began = own_cpu_s(), time.perf_counter()
        result = await asyncio.to_thread(funnel, data_dir, RULESET, goal="pay")
        runs.append((time.perf_counter() - began, own_cpu_s() - cpu_before))
    wall_s = statistics.median(run[0] for run in runs)
    cpu_s = statistics.median(run[1] for run in runs)
    events = f"{total:,} producer events"
    return [
        Row(
            "archive.write_us_per_event", SECTION, "archive write CPU per event (encode, append, drain to Parquet)",
            round(write_us, 2), "us/event",
            f"{sample:,} events: encode, append and drain {own / sample * 1e6:.1f} + Redis {server / sample * 1e6:.1f} "
            f"+ day-end merge {merge / sample * 1e6:.1f} us; drained at {sample / wall:,.0f} events/s",
            {"events": sample, "process_s": own, "redis_s": server, "merge_s": merge, "wall_s": wall},
        ),
        Row(
            "archive.bytes_per_event", SECTION, "archive bytes per event (3 tables, compacted, zstd)",
            round(sum(by_table.values()) / total, 1), "B/event",
            ", ".join(f"{table} {size / total:.1f}" for table, size in by_table.items()),
            {"bytes": by_table, "events": total},
        ),
        Row(
            "archive.funnel_query_s", SECTION, f"funnel query over {events} (DuckDB)", round(wall_s, 3), "s",
            f"median of 3; CPU {cpu_s:.2f} s; {result.actions:,} actions, {result.delivered:,} delivered, "
            f"{result.converted:,} converted",
            {"runs": runs, "events": total, "funnel": [result.triggers, result.actions, result.users,
                                                       result.delivered, result.converted]},
        ),
    ]  # fmt: skip
