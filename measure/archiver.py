"""The archiver: drains the partitions' archive streams (`cep.archive_stream`) into the archive's files.

One per deployment: it runs in `beacon serve` and holds a Redis lease (`b:{archive}:lease`), so two
serves sharing a Redis never both write. The archive also has a home (`b:{archive}:home`): the id of the
data directory that first held the lease (`<data dir>/archive/ARCHIVE_ID`). A serve with another data
directory never archives, so the files of one deployment are never split over two directories; moving
the archive is deleting that key.

Per partition, a drain reads the stream from its start, writes the entries' rows to one file per table
and day (`measure.archive_files`), and only then trims the stream up to the last entry written. A crash
between the two leaves files whose first entry is still in the stream: they are deleted when the
archiver starts, and the entries written again. So each record lands in the files exactly once (what
a query sees during the seconds between a crash and the restart may include such a file).
After the drains, each cycle compacts small files and drops days past the retention.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from beacon import metrics
from beacon.clock import Clock
from beacon.errors import DecodeError
from beacon.pause import pause
from beacon.redis_errors import describe, is_redis_trouble
from cep import archive_stream
from cep.archive_stream import Rows, row_count
from cep.scripts import ScriptCall, run_scripts
from cep.streams import stream_id
from measure import archive_files as files

log = logging.getLogger("beacon.archive")

LEASE_KEY = "b:{archive}:lease"
HOME_KEY = "b:{archive}:home"
ID_FILE = "ARCHIVE_ID"
CHUNK_ENTRIES = 2_000  # archive entries (batches) per file at most: a few hundred thousand rows

# KEYS[1] the archiver lease STRING, KEYS[2] the archive's home STRING (both in slot {archive})
# ARGV[1] this process's holder token, ARGV[2] this data directory's archive id, ARGV[3] lease ms
# Returns 1 when this process holds the lease (taken or renewed), 0 when another process holds it, -1 when
# the archive's home is another data directory (then nothing is written).
LEASE_SCRIPT = """
local home = redis.call('GET', KEYS[2])
if home and home ~= ARGV[2] then return -1 end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
if not home then redis.call('SET', KEYS[2], ARGV[2]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""

# KEYS[1] the archiver lease; ARGV[1] the holder token. Returns 1 when released.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """How often the archiver drains, how long days are kept, when small files are merged (from settings)."""

    flush_ms: int = 5_000
    retention_days: int = 90
    compact_files: int = 32
    lease_ms: int = 10_000  # a dead archiver's work is taken over after this long


def archive_id(data_dir: Path) -> str:
    """This data directory's archive id, created on first use."""
    path = files.archive_root(data_dir) / ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(uuid.uuid4().hex + "\n")
        return path.read_text().strip()


def existing_archive_id(data_dir: Path) -> str | None:
    """This data directory's archive id, if it has one (nothing created)."""
    try:
        return (files.archive_root(data_dir) / ID_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


async def archive_elsewhere(redis: Redis, data_dir: Path) -> str | None:
    """Why `data_dir` does not hold the deployment's event archive (None: it does): the files are in the data
    directory of the serve that archives (the archive's home), and a query anywhere else would read none of them."""
    local = await asyncio.to_thread(existing_archive_id, data_dir)
    raw: Any = await redis.get(HOME_KEY)
    home = raw.decode() if isinstance(raw, bytes) else raw
    if local is not None and home in (None, local):
        return None
    if home is None:
        return "nothing has been archived yet (no `beacon serve` has written the event archive)"
    return (
        "the event archive lives in the data directory of another process (the `beacon serve` that archives, "
        f"Redis key {HOME_KEY}): send the request to that process"
    )


class Archiver:
    """Drains every partition's archive stream into files under `data_dir/archive` while holding the lease."""

    def __init__(
        self,
        redis: Redis,
        data_dir: Path,
        partitions: int,
        clock: Clock,
        limits: ArchiveLimits,
        stopping: asyncio.Event,
    ) -> None:
        self._redis = redis
        self._root = files.archive_root(data_dir)
        self._data_dir = data_dir
        self._partitions = partitions
        self._clock = clock
        self._limits = limits
        self._stopping = stopping
        self._token = secrets.token_hex(8)
        self._lease_ms = limits.lease_ms
        self._recovered = False
        self._warned_home = False
        self._writer: files.ParquetWriter | None = None
        self._home: str | None = None

    async def run(self) -> None:
        """Archive every `flush_ms` while this process holds the lease, until stopped."""
        backoff = 0.1
        try:
            while not self._stopping.is_set():
                try:
                    if await self._hold_lease():
                        await self.cycle()
                    backoff = 0.1
                    await pause(self._stopping, self._limits.flush_ms / 1000)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if is_redis_trouble(exc):
                        log.warning("archiver: %s; retrying in %.1fs", describe(exc), backoff)
                        metrics.on_redis_error("archive")
                    elif _disk_trouble(exc):
                        # A full or read-only disk is the operator's to fix, and the streams keep everything
                        # meanwhile: one line per retry, not a traceback.
                        log.warning("archiver: cannot write the archive (%s); retrying in %.1fs", exc, backoff)
                    else:
                        log.exception("archiver: cycle failed; retrying in %.1fs", backoff)
                    self._recovered = False  # whatever a failed drain left behind is looked for again
                    await pause(self._stopping, backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            if self._writer is not None:
                self._writer.close()
            try:
                await run_scripts(self._redis, [ScriptCall(RELEASE_SCRIPT, [LEASE_KEY], [self._token])])
            except Exception as exc:  # the lease expires by itself
                log.debug("archiver: lease not released: %s", exc)

    async def _hold_lease(self) -> bool:
        if self._home is None:
            self._home = await asyncio.to_thread(archive_id, self._data_dir)
        home = self._home
        call = ScriptCall(LEASE_SCRIPT, [LEASE_KEY, HOME_KEY], [self._token, home, self._lease_ms])
        (held,) = await run_scripts(self._redis, [call])
        if int(held) == -1 and not self._warned_home:
            self._warned_home = True
            log.warning(
                "archiver: the archive lives in another data directory (Redis key %s); this process does not "
                "archive. Delete that key to move the archive here.",
                HOME_KEY,
            )
        if int(held) != 1:
            self._recovered = False  # another process may archive meanwhile: look again once we hold it
        return int(held) == 1

    async def cycle(self) -> None:
        """One round: (after taking over) clean what a crash left, drain every partition, then compact and
        apply the retention."""
        if self._writer is None:
            self._writer = files.ParquetWriter()
        if not self._recovered:
            await self._recover()
            self._recovered = True
        for partition in range(self._partitions):
            while not self._stopping.is_set() and await self.drain(partition):
                pass
        # A past day's compaction can take longer than the lease: keep renewing it meanwhile.
        housekeeping = asyncio.ensure_future(asyncio.to_thread(self._housekeep, self._clock.now_ms()))
        while not housekeeping.done():
            await asyncio.wait({housekeeping}, timeout=self._lease_ms / 3000)
            if not housekeeping.done():
                await self._hold_lease()
        await housekeeping

    async def _recover(self) -> None:
        heads: dict[int, tuple[int, int] | None] = {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in range(self._partitions):
                pipe.xrange(archive_stream.archive_key(partition), count=1)
            replies: list[Any] = await pipe.execute()
        for partition, reply in enumerate(replies):
            heads[partition] = stream_id(reply[0][0]) if reply else None

        def clean() -> None:
            stale = files.stale_files(files.partition_files(self._root), heads)
            for path in stale:
                log.warning("archiver: removing %s, written by a drain that did not finish", path)
                path.unlink(missing_ok=True)
            for _, day_dir in files.day_dirs(self._root):
                files.recover(day_dir)

        await asyncio.to_thread(clean)

    async def drain(self, partition: int) -> bool:
        """Write one chunk of the partition's archive stream to files, then trim it; True when there may be
        more to drain."""
        key = archive_stream.archive_key(partition)
        entries: Any = await self._redis.xrange(key, count=CHUNK_ENTRIES)
        if not entries:
            return False
        rows = Rows()
        for entry_id, fields in entries:
            try:
                archive_stream.decode_entry(partition, entry_id, fields, rows)
            except DecodeError:
                log.exception("archiver: partition %d: skipping an unreadable entry", partition)
                metrics.on_archive_unreadable()
        first, last = entries[0][0], entries[-1][0]
        written = await asyncio.to_thread(self._write, partition, first, last, rows)
        try:
            # Still ours? Another archiver may have taken over while we wrote (a stall past the lease).
            if not await self._hold_lease():
                raise RuntimeError("the archiver lease moved while a drain was writing")
            ms, seq = stream_id(last)
            await self._redis.xtrim(key, minid=f"{ms}-{seq + 1}", approximate=False)
        except BaseException:
            # Not trimmed (or not known to be): these files would duplicate the entries' next drain.
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return len(entries) == CHUNK_ENTRIES

    def _write(self, partition: int, first: bytes, last: bytes, rows: Rows) -> list[Path]:
        assert self._writer is not None
        written: list[Path] = []
        name = files.partition_file_name(partition, first, last)
        counts: dict[str, int] = {}
        try:
            for table, columns in rows.tables():
                for day, day_columns in files.split_by_day(table, columns).items():
                    path = self._root / table / f"day={day}" / name
                    size = self._writer.write(table, day_columns, path)
                    written.append(path)
                    metrics.on_archive_file("drain", size, {table: row_count(day_columns)})
                    counts[table] = counts.get(table, 0) + row_count(day_columns)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        log.debug("archiver: partition %d: %s", partition, counts)
        return written

    def _housekeep(self, now_ms: int) -> None:
        """Compact small files and drop days past the retention (in a thread: DuckDB blocks)."""
        assert self._writer is not None
        today = files.day_of(now_ms)
        first_kept = files.day_of(now_ms - (self._limits.retention_days - 1) * files.DAY_MS)
        dropped = files.drop_days_before(self._root, first_kept)
        if dropped:
            log.info("archiver: dropped %d day directories before %s (retention)", dropped, first_kept)
        for day, day_dir in files.day_dirs(self._root):
            for inputs, output in files.compactions(day_dir, self._limits.compact_files, past=day < today):
                started = time.perf_counter()
                size = files.compact(self._writer, inputs, output)
                metrics.on_archive_file("compact", size)
                log.debug(
                    "archiver: compacted %d files into %s in %.2fs", len(inputs), output, time.perf_counter() - started
                )


def _disk_trouble(exc: BaseException) -> bool:
    """A write the file system refused (full, over quota, read-only), as the OS or DuckDB reports it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    text = str(exc)
    return type(exc).__name__ == "IOException" and ("No space left" in text or "Read-only file system" in text)
