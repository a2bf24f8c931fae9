"""SQL over the event archive: DuckDB reads the Parquet files of `measure.archive_files` in place.

`query` runs any SQL over three views, `events`, `actions` and `outcomes` (docs/measurement.md defines
their columns; each has `day` too, from its directory), and returns the rows. `funnel` is the report's
core query: of the actions a ruleset (or journey) created, how many were delivered and how many of their
users did the goal event within a window after the action. Blocking: async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from measure.archive_files import TABLES, archive_root

# A compaction may delete a file between a query's listing of the files and its read of them: try again.
ATTEMPTS = 3
WEEK_MS = 7 * 86_400_000


def connect(data_dir: Path, *, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the archive's tables as views over its files."""
    db = duckdb.connect(":memory:")
    if threads is not None:
        db.execute(f"SET threads TO {int(threads)}")
    root = archive_root(data_dir)
    for table, columns in TABLES.items():
        if any((root / table).glob("day=*/*.parquet")):
            pattern = str(root / table / "day=*" / "*.parquet").replace("'", "''")
            db.execute(
                f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{pattern}', hive_partitioning = true, "
                "hive_types = {'day': DATE}, union_by_name = true)"
            )
        else:
            # No file yet: an empty view with the same columns, so queries work on an empty archive.
            typed = ", ".join(f"NULL::{kind} AS {name}" for name, kind in columns)
            db.execute(f"CREATE VIEW {table} AS SELECT {typed}, NULL::DATE AS day WHERE false")
    return db


def query(data_dir: Path, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one SQL statement over the archive's views and return its rows."""
    for attempt in range(1, ATTEMPTS + 1):
        db: duckdb.DuckDBPyConnection | None = None
        try:
            db = connect(data_dir)  # binding the views opens the files: a compaction may race this too
            return db.execute(sql, params).fetchall() if params is not None else db.execute(sql).fetchall()
        except duckdb.IOException:
            if attempt == ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)  # a compaction's rename and unlink take milliseconds
        finally:
            if db is not None:
                db.close()
    raise AssertionError("unreachable")


FUNNEL_SQL = """
WITH acted AS (
    SELECT action_id, any_value(user_id) AS user_id, any_value(trigger_id) AS trigger_id, min(created_ms) AS created_ms
    FROM actions
    WHERE ruleset_id = $ruleset AND created_ms >= $from_ms AND created_ms < $to_ms
    GROUP BY action_id),
delivered AS (SELECT DISTINCT action_id FROM outcomes WHERE status = 'delivered'),
converted AS (
    SELECT DISTINCT a.action_id
    FROM acted a JOIN events e ON e.user_id = a.user_id
    WHERE e.type = $goal AND e.ts >= a.created_ms AND e.ts < a.created_ms + $within_ms)
SELECT count(DISTINCT a.trigger_id), count(*), count(DISTINCT a.user_id), count(d.action_id), count(c.action_id)
FROM acted a
LEFT JOIN delivered d ON d.action_id = a.action_id
LEFT JOIN converted c ON c.action_id = a.action_id
"""


@dataclass(frozen=True, slots=True)
class Funnel:
    """Counts of one ruleset's (or journey's) actions created in [from, to)."""

    triggers: int  # distinct trigger events
    actions: int
    users: int  # distinct users acted on
    delivered: int  # actions with a `delivered` outcome
    converted: int  # actions whose user did the goal event within the window after the action


def funnel(
    data_dir: Path,
    ruleset_id: str,
    *,
    goal: str = "pay",
    within_ms: int = WEEK_MS,
    from_ms: int = 0,
    to_ms: int = 2**62,
) -> Funnel:
    """The funnel of a ruleset's (or a journey's: its id) actions: triggered, acted, delivered, converted."""
    params = {"ruleset": ruleset_id, "goal": goal, "within_ms": within_ms, "from_ms": from_ms, "to_ms": to_ms}
    ((triggers, actions, users, delivered, converted),) = query(data_dir, FUNNEL_SQL, params)
    return Funnel(int(triggers), int(actions), int(users), int(delivered), int(converted))
