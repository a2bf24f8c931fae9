"""A segment backfill from the event archive: the archived events of the types a segment reads, in an
event-time window, fed to their users' partitions as `backfill` events (docs/audiences.md, Backfill).

What is read: the `events` table only (an action or an outcome row is not an event; a delivery outcome is
archived as an `action_*` event too, and is read as one when a segment reads that type), every origin but
`backfill` (a backfill's events are not archived, and are never fed again) and `timer`. The type, time and
origin filters go into DuckDB's Parquet scan, one day directory at a time (a row's day is its `ts`'s UTC
day, so the window picks the directories), and rows come back in batches of `BATCH_ROWS`: memory is one
batch and DuckDB's buffers, whatever the archive's size. DuckDB runs on one thread, beside the engine.

Appends wait while the partitions' backlog is over `MAX_BACKLOG`, so live events never queue behind more
than that many backfilled ones, and a backfill goes at the rate the partition owners process it.

Feeding is idempotent: an event's id comes from its content (`cep.events.backfill_id`, as a file
backfill's), and a backfilled event the behaviour history already holds is not kept again (`cep.history`).
So a day read again after a compaction deleted a file between the scan's listing and its opening (its counts
start over), or a whole backfill run twice, changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from beacon.errors import UnavailableError
from cep import streams
from cep.events import ORIGIN_BACKFILL, ORIGIN_TIMER, Event, backfill_id
from measure import archive_files as files

BATCH_ROWS = 5_000  # rows per fetch and per append
MAX_BACKLOG = 20_000  # items waiting in the partition streams (live ones too) before the next append waits
APPENDS_IN_FLIGHT = 4  # appends waiting for their fsync at once
STALL_S = 30.0  # a backlog that does not shrink for this long: the owners are not processing; give up
ATTEMPTS = 3  # reads of one day, when a compaction deletes a file under the read
NOT_FED = (ORIGIN_BACKFILL, ORIGIN_TIMER)
UNREADABLE = "unreadable"  # a row whose attributes are not a JSON object


def events_sql(type_count: int) -> str:
    """The scan of one day's files: `?` for the glob, each type, the window's bounds and the origins left out."""
    types = ", ".join("?" for _ in range(type_count))
    return (
        "SELECT user_id, type, ts, attrs FROM read_parquet(?) "
        f"WHERE type IN ({types}) AND ts BETWEEN ? AND ? AND origin NOT IN ({', '.join('?' for _ in NOT_FED)})"
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows of one day (user_id, type, ts, attrs JSON); `restart`: that day is read again from its start."""

    day: str
    rows: list[tuple[Any, ...]]
    restart: bool = False


def read_batches(data_dir: Path, types: Sequence[str], from_ms: int, to_ms: int) -> Generator[Batch, None, None]:
    """The archived events of `types` with `from_ms <= ts <= to_ms`, oldest day first (blocking: DuckDB)."""
    import duckdb  # here, not at import: every `beacon` command imports the API, few read the archive

    root = files.archive_root(data_dir) / "events"
    first, last = files.day_of(from_ms), files.day_of(to_ms)
    days = [(day, path) for day, path in files.day_dirs(files.archive_root(data_dir)) if path.parent == root]
    sql = events_sql(len(types))
    for day, day_dir in days:
        if not first <= day <= last:
            continue
        for attempt in range(1, ATTEMPTS + 1):
            if not any(day_dir.glob("*.parquet")):
                break  # dropped by the retention meanwhile, or only a compaction's journal
            db = duckdb.connect(":memory:")
            try:
                db.execute("SET threads TO 1")
                params = [str(day_dir / "*.parquet"), *types, from_ms, to_ms, *NOT_FED]
                cursor = db.execute(sql, params)
                while rows := cursor.fetchmany(BATCH_ROWS):
                    yield Batch(day, rows)
                break
            except duckdb.IOException:
                # A compaction replaced files between the scan's listing and its read: the day again.
                if attempt == ATTEMPTS:
                    raise
                yield Batch(day, [], restart=True)
                time.sleep(0.05 * attempt)
            finally:
                db.close()


@dataclass(slots=True)
class Fed:
    """What a backfill read (rows), appended (`accepted`) and skipped, by reason."""

    read: int = 0
    accepted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, other: Fed, sign: int = 1) -> None:
        """Add (or with `sign` -1, take away) another count."""
        self.read += sign * other.read
        self.accepted += sign * other.accepted
        for reason, count in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + sign * count
            if not self.skipped[reason]:
                del self.skipped[reason]


def backfill_events(rows: Sequence[tuple[Any, ...]], now_ms: int, fed: Fed) -> list[Event]:
    """Archive rows as `backfill` events with ids from their content; unreadable rows are counted in `fed`."""
    events = []
    for user_id, event_type, ts, attrs_text in rows:
        try:
            attrs = json.loads(attrs_text) if attrs_text else {}
        except ValueError:
            attrs = None
        if not isinstance(attrs, dict):
            fed.skipped[UNREADABLE] = fed.skipped.get(UNREADABLE, 0) + 1
            continue
        event = Event("", user_id, event_type, int(ts), attrs, now_ms, ORIGIN_BACKFILL)
        event.event_id = backfill_id(event)
        events.append(event)
    return events


async def backfill_from_archive(
    redis: Redis,
    data_dir: Path,
    partitions: int,
    types: Sequence[str],
    window: tuple[int, int],
    now_ms: int,
    fsync_timeout_ms: int = 0,
) -> Fed:
    """Feed the archived events of `types` in the event-time `window` (inclusive) to their users' partitions
    as `backfill` events; returns the counts. UnavailableError when the owners stop processing meanwhile."""
    total = Fed()
    if not types:
        return total
    batches = read_batches(data_dir, types, *window)
    appending: set[asyncio.Future[None]] = set()
    day, day_fed = "", Fed()
    try:
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            if batch.day != day:
                day, day_fed = batch.day, Fed()
            if batch.restart:
                total.add(day_fed, -1)  # its rows come again; those already appended are duplicates
                day_fed = Fed()
                continue
            fed = Fed(read=len(batch.rows))
            events = backfill_events(batch.rows, now_ms, fed)
            fed.accepted = len(events)
            await _wait_for_room(redis, partitions, total.accepted)
            # Each append waits for its fsync (up to a second with `appendfsync everysec`), as an ingest ack
            # does: a few at once keep the reads and the owners busy meanwhile.
            appending.add(asyncio.ensure_future(streams.append_events(redis, events, partitions, fsync_timeout_ms)))
            if len(appending) >= APPENDS_IN_FLIGHT:
                done, appending = await asyncio.wait(appending, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    finished.result()
            day_fed.add(fed)
            total.add(fed)
        await asyncio.gather(*appending)
    finally:
        for unfinished in appending:
            unfinished.cancel()  # after a failure: the backfill stops (what was appended stays, counted once)
        await asyncio.gather(*appending, return_exceptions=True)
        await asyncio.to_thread(batches.close)
    return total


async def _wait_for_room(redis: Redis, partitions: int, accepted: int) -> None:
    """Wait until the partitions' backlog is at most MAX_BACKLOG; UnavailableError if it stops shrinking."""
    waiting = await streams.backlog(redis, partitions)
    lowest, since = waiting, time.monotonic()
    while waiting > MAX_BACKLOG:
        await asyncio.sleep(0.05)
        waiting = await streams.backlog(redis, partitions)
        if waiting < lowest:
            lowest, since = waiting, time.monotonic()
        elif time.monotonic() - since > STALL_S:
            raise UnavailableError(
                f"the partition owners processed nothing for {STALL_S:g}s ({waiting:,} items waiting): the backfill "
                f"stopped after {accepted:,} events; run it again to go on (what was fed counts once)"
            )
