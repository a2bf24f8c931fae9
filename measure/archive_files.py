"""The archive's files: `<data dir>/archive/<table>/day=YYYY-MM-DD/<name>.parquet`, written through DuckDB.

Names say where the rows came from, so a crash never leaves a duplicate that cannot be recognised:
- `p<partition>_<first id>_<last id>.parquet`: the rows of one partition's archive-stream entries from
  `first` to `last` (stream ids). Its entries leave the stream only after the file is renamed into place;
  so a file whose first id is still in its stream is from a drain that did not finish, and is deleted
  before the same entries are written again (`stale_files`).
- `c<level>_<first>_<last>.parquet`: a compaction of level-below files (`compact`), named after the
  first and last names it merged. A compaction writes a journal (`.compact-<name>.json`) listing its
  inputs before its output is renamed into place and deletes it after removing them, so a crash in between
  is finished (inputs deleted) or undone (output deleted) by `recover`.

Every file is written under a `.tmp` name, fsynced, renamed, and its directory fsynced: a query sees whole
files only. Days are UTC days of the row's own time (an event's `ts`, an action's creation, an outcome's).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cep.archive_stream import ACTION_COLUMNS, EVENT_COLUMNS, OUTCOME_COLUMNS

if TYPE_CHECKING:
    import duckdb

DAY_MS = 86_400_000
ARCHIVE_DIR = "archive"
# Column types, in each table's column order (cep.archive_stream names them; docs/measurement.md defines them).
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "events": tuple(
        zip(
            EVENT_COLUMNS,
            (
                "VARCHAR",
                "VARCHAR",
                "VARCHAR",
                "BIGINT",
                "BIGINT",
                "VARCHAR",
                "VARCHAR",
                "INTEGER",
                "BIGINT",
                "BIGINT",
                "INTEGER",
            ),
            strict=True,
        )
    ),
    "actions": tuple(
        zip(
            ACTION_COLUMNS,
            (*["VARCHAR"] * 4, "BIGINT", *["VARCHAR"] * 8, "BIGINT", "BIGINT", "VARCHAR", "INTEGER", "BIGINT"),
            strict=True,
        )
    ),
    "outcomes": tuple(
        zip(
            OUTCOME_COLUMNS,
            ("VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "BIGINT", "INTEGER", "INTEGER", "BIGINT"),
            strict=True,
        )
    ),
}
# The column that decides a row's day.
DAY_COLUMN = {"events": "ts", "actions": "created_ms", "outcomes": "ts"}
PARTITION_FILE = re.compile(r"p(\d+)_(\d+-\d+)_(\d+-\d+)\.parquet")
COMPACT_FILE = re.compile(r"c(\d)_[0-9a-f]+\.parquet")
JOURNAL_PREFIX = ".compact-"
MAX_LEVEL = 3  # c1 merges p-files, c2 merges c1-files, c3 c2-files; a past day ends as one c9 file
FINAL_LEVEL = 9


def archive_root(data_dir: Path) -> Path:
    """Where the archive's tables live."""
    return Path(data_dir) / ARCHIVE_DIR


def day_of(ms: int) -> str:
    """The UTC day (YYYY-MM-DD) of a time in ms."""
    return time.strftime("%Y-%m-%d", time.gmtime(ms // 1000))


def split_by_day(table: str, columns: list[list[Any]]) -> dict[str, list[list[Any]]]:
    """A table's columns split by the UTC day of its time column (most drains hold one day: no copy then)."""
    times = columns[[name for name, _ in TABLES[table]].index(DAY_COLUMN[table])]
    if not times:
        return {}
    numbers = [int(ms or 0) // DAY_MS for ms in times]
    first, last = min(numbers), max(numbers)
    if first == last:
        return {day_of(first * DAY_MS): columns}
    by_day: dict[str, list[list[Any]]] = {}
    for number in sorted(set(numbers)):
        picked = [i for i, found in enumerate(numbers) if found == number]
        by_day[day_of(number * DAY_MS)] = [[column[i] for i in picked] for column in columns]
    return by_day


def partition_file_name(partition: int, first_id: bytes, last_id: bytes) -> str:
    """The name of a file holding one partition's entries from `first_id` to `last_id`."""
    return f"p{partition:05d}_{first_id.decode()}_{last_id.decode()}.parquet"


@dataclass(frozen=True, slots=True)
class PartitionFile:
    """A drain's file: its path, partition and the stream id of its first entry (as (ms, seq))."""

    path: Path
    partition: int
    first: tuple[int, int]


def partition_files(root: Path) -> list[PartitionFile]:
    """Every drain file (`p...`) of every table and day."""
    found = []
    for path in root.glob("*/day=*/p*.parquet"):
        match = PARTITION_FILE.fullmatch(path.name)
        if match:
            ms, seq = match.group(2).split("-")
            found.append(PartitionFile(path, int(match.group(1)), (int(ms), int(seq))))
    return found


def stale_files(files: Iterable[PartitionFile], heads: dict[int, tuple[int, int] | None]) -> list[Path]:
    """Drain files whose first entry is still in its stream (`heads`: each partition's first id, None when
    empty): their drain did not finish, and the same entries will be written again."""
    return [f.path for f in files if heads.get(f.partition) is not None and f.first >= heads[f.partition]]  # type: ignore[operator]


class ParquetWriter:
    """Writes rows to Parquet files with one in-memory DuckDB connection (used by one task at a time)."""

    def __init__(self) -> None:
        import duckdb  # here, not at import: every `beacon` command imports the services, few archive

        self._db: duckdb.DuckDBPyConnection = duckdb.connect(":memory:")
        self._db.execute("SET threads TO 1")  # a background writer must not take every core from the engine
        self._copy = {table: _copy_sql(columns) for table, columns in TABLES.items()}

    def close(self) -> None:
        """Release the connection."""
        self._db.close()

    def write(self, table: str, columns: Sequence[list[Any]], path: Path) -> int:
        """Write a table's columns (in its column order) to `path` atomically; returns the file's size."""
        tmp = _temporary(path)
        self._db.execute(self._copy[table].replace("$path", _quote(tmp)), columns)
        return _publish(tmp, path)

    def merge(self, inputs: Sequence[Path], path: Path) -> int:
        """Write the rows of `inputs` (Parquet files of one table) to `path` atomically; returns its size."""
        tmp = _temporary(path)
        sources = "[" + ", ".join(_quote(p) for p in inputs) + "]"
        self._db.execute(
            f"COPY (SELECT * FROM read_parquet({sources})) TO {_quote(tmp)} (FORMAT parquet, COMPRESSION zstd)"
        )
        return _publish(tmp, path)


def _copy_sql(columns: tuple[tuple[str, str], ...]) -> str:
    # One list parameter per column, unnested side by side: DuckDB converts each Python list in C++, a few us
    # of CPU per event row in all (docs/measurement.md), where executemany costs tens of us per row.
    select = ", ".join(f"unnest(${i}::{kind}[]) AS {name}" for i, (name, kind) in enumerate(columns, 1))
    return f"COPY (SELECT {select}) TO $path (FORMAT parquet, COMPRESSION zstd)"


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp")  # `*.parquet` globs never match it


def _publish(tmp: Path, path: Path) -> int:
    """fsync the written file, rename it into place (replacing a same-named one) and fsync the directory."""
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    sync_dir(path.parent)
    return path.stat().st_size


def sync_dir(directory: Path) -> None:
    """fsync a directory, so the renames and deletions in it survive a power loss."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


# -- compaction and retention --------------------------------------------------------------------------


def level_of(name: str) -> int | None:
    """A file's compaction level: 0 for a drain file, n for `c<n>_...`, None for anything else."""
    if PARTITION_FILE.fullmatch(name):
        return 0
    match = COMPACT_FILE.fullmatch(name)
    return int(match.group(1)) if match else None


def recover(day_dir: Path) -> None:
    """Finish or undo a compaction a crash interrupted in this directory (see the module docstring)."""
    for journal in day_dir.glob(JOURNAL_PREFIX + "*.json"):
        plan = json.loads(journal.read_text())
        output = day_dir / plan["output"]
        if output.exists():
            for name in plan["inputs"]:
                (day_dir / name).unlink(missing_ok=True)
        else:
            _temporary(output).unlink(missing_ok=True)
        journal.unlink()
        sync_dir(day_dir)


def compactions(day_dir: Path, min_files: int, *, past: bool) -> list[tuple[list[Path], Path]]:
    """The merges a day directory needs: `min_files` files of one level into one of the next; a past day's
    files (two or more) into one final file."""
    files = sorted(p for p in day_dir.glob("*.parquet") if level_of(p.name) is not None)
    if past:
        if len(files) > 1 or (files and level_of(files[0].name) != FINAL_LEVEL):
            return [(files, day_dir / _compact_name(FINAL_LEVEL, files))]
        return []
    merges = []
    for level in range(MAX_LEVEL):
        group = [p for p in files if level_of(p.name) == level]
        if len(group) >= min_files:
            merges.append((group, day_dir / _compact_name(level + 1, group)))
    return merges


def _compact_name(level: int, inputs: Sequence[Path]) -> str:
    # Named by what it merges: the same merge retried after a crash writes the same name.
    digest = hashlib.sha1("\n".join(p.name for p in inputs).encode()).hexdigest()[:20]
    return f"c{level}_{digest}.parquet"


def compact(writer: ParquetWriter, inputs: Sequence[Path], output: Path) -> int:
    """Merge `inputs` into `output` and delete them, crash-safely (journal first); returns the output's size."""
    journal = output.parent / f"{JOURNAL_PREFIX}{output.stem}.json"
    tmp_journal = _temporary(journal)
    tmp_journal.write_text(json.dumps({"output": output.name, "inputs": [p.name for p in inputs]}))
    with tmp_journal.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp_journal, journal)
    size = writer.merge(inputs, output)
    for path in inputs:
        path.unlink(missing_ok=True)
    journal.unlink()
    sync_dir(output.parent)
    return size


def day_dirs(root: Path) -> list[tuple[str, Path]]:
    """(day, directory) of every table's days."""
    found = []
    for path in root.glob("*/day=*"):
        if path.is_dir() and path.parent.name in TABLES:
            found.append((path.name.removeprefix("day="), path))
    return sorted(found)


def drop_days_before(root: Path, first_kept: str) -> int:
    """Delete every table's days before `first_kept` (YYYY-MM-DD); returns how many directories went."""
    dropped = 0
    for day, path in day_dirs(root):
        if day < first_kept:
            shutil.rmtree(path)
            dropped += 1
    return dropped
