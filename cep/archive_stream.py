"""Archive streams (`b:{p:<n>}:archive`): what the event archive (`measure.archiver`) writes to files.

The partition owner's batch commit (`cep.commit`) appends one entry per batch, in the same atomic script
call as the batch's effects, so the archive holds each record exactly once: the batch's processed events
(field `e`) and created actions (field `a`); the commit script adds the ids of actions it did not write
because the ledger already held them (field `x`) and the delayed actions it cancelled (field `c`).
Delivery outcomes need nothing of their own: a connector's final status reaches the engine as an
`action_delivered` / `action_skipped` / `action_dead` event (`connectors.delivery_ledger`), processed and
so archived like any event, and `decode_entry` also makes it an outcome row.

The stream lives in the partition's slot, so the append is part of the commit on a Redis Cluster too.
Records are msgpack with a version field; `decode_entry` turns an entry into table rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any

import msgpack
from redis.asyncio import Redis

from beacon.errors import DecodeError
from cep.events import ORIGIN_DELIVERY, Event, partition_tag
from cep.firing import CreatedAction
from cep.packing import packb

ARCHIVE_CODEC_VERSION = 1
EVENTS_FIELD = b"e"
ACTIONS_FIELD = b"a"
NOT_WRITTEN_FIELD = b"x"  # set by the commit script: action ids the ledger already held
CANCELLED_FIELD = b"c"  # set by the commit script: [user, action id] of delayed actions it cancelled
CANCELLED = "cancelled"
CANCELLED_REASON = "ruleset_deleted"
# Statuses final at creation (a tag action is applied by the owner itself): their outcome is the action's own.
FINAL_AT_CREATION = frozenset({"delivered", "skipped", "dead"})
# Delivery outcome events (`connectors.delivery_ledger.OUTCOME_EVENTS`) -> the status they record.
OUTCOME_STATUSES = {"action_delivered": "delivered", "action_skipped": "skipped", "action_dead": "dead"}


def archive_key(partition: int) -> str:
    """The archive stream of one partition."""
    return f"b:{{{partition_tag(partition)}}}:archive"


def encode_events(events: Sequence[Event]) -> bytes:
    """One batch's processed events, as columns (attrs stay maps here; the archiver writes them as JSON)."""
    return packb(
        {
            "v": ARCHIVE_CODEC_VERSION,
            "id": [event.event_id for event in events],
            "u": [event.user_id for event in events],
            "t": [event.type for event in events],
            "ts": [event.ts for event in events],
            "r": [event.received_ms for event in events],
            "o": [event.origin for event in events],
            "a": [event.attrs for event in events],
        }
    )


def encode_actions(actions: Iterable[CreatedAction]) -> bytes:
    """One batch's created actions: one row each, in `ACTION_COLUMNS` order (from the ledger record)."""
    rows = []
    for action in actions:
        record = action.record
        params = record.get("params")
        params = params if isinstance(params, dict) else {}
        rows.append(
            [
                action.action_id,
                record.get("user_id"),
                record.get("type"),
                record.get("ruleset_id"),
                record.get("ruleset_version"),
                record.get("rule_id"),
                record.get("journey_id"),
                record.get("node_id"),
                record.get("plan_id"),
                _text_or_none(record.get("occurrence")),
                _text_or_none(params.get("channel")),
                _text_or_none(params.get("template")),
                record.get("trigger_id"),
                record.get("created_at"),
                record.get("due_at"),
                action.status,
            ]
        )
    return packb({"v": ARCHIVE_CODEC_VERSION, "rows": rows})


def _text_or_none(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else str(value)


# Table columns, in order (docs/measurement.md defines each). `partition` and `archived_ms` (the entry's
# Redis time) come from the stream, not from the record.
EVENT_COLUMNS = (
    "event_id", "user_id", "type", "ts", "received_ms", "origin", "attrs", "partition", "archived_ms", "entry_seq",
    "position",
)  # fmt: skip
ACTION_COLUMNS = (
    "action_id", "user_id", "action_type", "ruleset_id", "ruleset_version", "rule_id", "journey_id", "node_id",
    "plan_id", "occurrence", "channel", "template", "trigger_id", "created_ms", "due_ms", "status", "partition",
    "archived_ms",
)  # fmt: skip
OUTCOME_COLUMNS = ("action_id", "user_id", "status", "reason", "connector", "ts", "attempt", "partition", "archived_ms")


class Rows:
    """Decoded rows of some archive entries, per table, as columns (each table's lists in its column order):
    the Parquet writer takes columns, and extending them costs far less than a list per row."""

    __slots__ = ("actions", "events", "outcomes")

    def __init__(self) -> None:
        self.events: list[list[Any]] = [[] for _ in EVENT_COLUMNS]
        self.actions: list[list[Any]] = [[] for _ in ACTION_COLUMNS]
        self.outcomes: list[list[Any]] = [[] for _ in OUTCOME_COLUMNS]

    def tables(self) -> list[tuple[str, list[list[Any]]]]:
        """(table, columns) of every table."""
        return [("events", self.events), ("actions", self.actions), ("outcomes", self.outcomes)]


def row_count(columns: list[list[Any]]) -> int:
    """How many rows a table's columns hold."""
    return len(columns[0])


def _append_row(columns: list[list[Any]], row: Sequence[Any]) -> None:
    for column, value in zip(columns, row, strict=True):
        column.append(value)


def entry_ms(entry_id: bytes) -> int:
    """The Redis time (ms) in a stream entry id."""
    return int(entry_id.split(b"-", 1)[0])


def entry_seq(entry_id: bytes) -> int:
    """The sequence number in a stream entry id (its order among entries of the same ms)."""
    return int(entry_id.split(b"-", 1)[1])


def decode_entry(partition: int, entry_id: bytes, fields: dict[bytes, bytes], into: Rows) -> None:
    """Add one archive entry's rows to `into`, all or none; DecodeError when it cannot be read."""
    archived = entry_ms(entry_id)
    try:
        # Everything is read and checked before anything is added: a bad entry adds no partial rows.
        events = _unpacked(fields, EVENTS_FIELD, {"v": ARCHIVE_CODEC_VERSION, "id": []})
        actions = _unpacked(fields, ACTIONS_FIELD, {"v": ARCHIVE_CODEC_VERSION, "rows": []})
        not_written = set(_unpacked(fields, NOT_WRITTEN_FIELD, []))
        cancelled = [(str(user_id), str(action_id)) for user_id, action_id in _unpacked(fields, CANCELLED_FIELD, [])]
        _check_version(events.get("v"))
        _check_version(actions.get("v"))
        count = len(events["id"])
        if count and not all(len(events[name]) == count for name in ("u", "t", "ts", "r", "o", "a")):
            raise DecodeError("event columns of different lengths")
        if any(len(row) != len(ACTION_COLUMNS) - 2 for row in actions["rows"]):
            raise DecodeError("an action row of the wrong length")
        if count:
            _events(events, count, partition, archived, entry_seq(entry_id), into)
        _actions(actions, not_written, partition, archived, into)
        for user_id, action_id in cancelled:
            row = [action_id, user_id, CANCELLED, CANCELLED_REASON, "", archived, 0, partition, archived]
            _append_row(into.outcomes, row)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"unreadable archive entry {entry_id!r} of partition {partition}: {exc}") from exc


def _check_version(version: Any) -> None:
    if version != ARCHIVE_CODEC_VERSION:
        raise DecodeError(f"unknown archive codec version {version!r}")


def _unpacked(fields: dict[bytes, bytes], name: bytes, missing: Any) -> Any:
    return msgpack.unpackb(fields[name], raw=False) if name in fields else missing


def _events(data: dict[str, Any], count: int, partition: int, archived: int, seq: int, into: Rows) -> None:
    # JSON text, so both engines (and a ClickHouse String column) read attrs the same way.
    attrs = [json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str) for value in data["a"]]
    columns = into.events
    values = (data["id"], data["u"], data["t"], data["ts"], data["r"], data["o"], attrs)
    for column, given in zip(columns[:7], values, strict=True):
        column.extend(given)
    columns[7].extend(repeat(partition, count))
    columns[8].extend(repeat(archived, count))
    # (partition, archived_ms, entry_seq, position) is the order the partition's owner processed them in:
    # what a replay of the archive (measure.recompute) must follow.
    columns[9].extend(repeat(seq, count))
    columns[10].extend(range(count))
    if ORIGIN_DELIVERY in data["o"]:
        for row in zip(data["id"], data["u"], data["t"], data["ts"], data["r"], data["o"], attrs, strict=True):
            if row[5] == ORIGIN_DELIVERY and row[2] in OUTCOME_STATUSES:
                _append_row(into.outcomes, _outcome(row, partition, archived))


def _outcome(row: tuple[Any, ...], partition: int, archived: int) -> list[Any]:
    """The outcome row of a delivery outcome event (`connectors.delivery_ledger.outcome_event`), whose id ends
    in the attempt number."""
    event_id, user_id, event_type, ts, _, _, _ = row
    attrs = json.loads(row[6])
    connector = attrs.get("channel") if attrs.get("type") == "message" else attrs.get("type")
    attempt = event_id.rsplit(":", 1)[-1]
    return [
        attrs.get("action_id"), user_id, OUTCOME_STATUSES[event_type], attrs.get("reason") or "",
        connector or "", ts, int(attempt) if attempt.isdigit() else 0, partition, archived,
    ]  # fmt: skip


def _actions(data: dict[str, Any], not_written: set[str], partition: int, archived: int, into: Rows) -> None:
    for row in data["rows"]:
        if row[0] in not_written:
            continue  # the ledger already held it: archived when it was first written
        _append_row(into.actions, [*row, partition, archived])
        status = row[15]
        if status in FINAL_AT_CREATION:
            # Final at creation (a tag applied by the owner): its outcome row is the action's own.
            _append_row(into.outcomes, [row[0], row[1], status, "", row[2], row[13], 0, partition, archived])


async def backlog(redis: Redis, partitions: int) -> int:
    """Entries waiting in the archive streams, over all partitions."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.xlen(archive_key(partition))
        lengths: list[Any] = await pipe.execute()
    return sum(int(length) for length in lengths)
