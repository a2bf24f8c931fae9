"""Reading the archive for a segment backfill: only the types, times and origins asked for, in batches; a day
whose files a compaction replaces under the read comes whole, once; unreadable attributes are counted, not
fed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cep.archive_stream import EVENTS_FIELD, Rows, decode_entry, encode_events
from cep.events import ORIGIN_ACTION, ORIGIN_BACKFILL, ORIGIN_DELIVERY, ORIGIN_TIMER, Event, backfill_id
from measure import archive_backfill, archive_files
from measure.archive_backfill import Fed, backfill_events, read_batches

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def write_day(data_dir: Path, name: str, events: list[Event], partition: int = 0) -> Path:
    """The events as one drain file of their day, written by the drain's own writer."""
    rows = Rows()
    entry_id = f"{T0}-{partition}".encode()
    decode_entry(partition, entry_id, {EVENTS_FIELD: encode_events(events)}, rows)
    writer = archive_files.ParquetWriter()
    try:
        (day,) = archive_files.split_by_day("events", rows.events)
        path = archive_files.archive_root(data_dir) / "events" / f"day={day}" / name
        writer.write("events", rows.events, path)
        return path
    finally:
        writer.close()


def read_all(data_dir: Path, types: list[str], from_ms: int, to_ms: int) -> list[tuple[object, ...]]:
    found = []
    for batch in read_batches(data_dir, types, from_ms, to_ms):
        assert not batch.restart
        found += batch.rows
    return sorted(found)


def test_only_the_types_window_and_origins_asked_for_are_read(tmp_path: Path) -> None:
    events = [
        Event("p1", "u1", "pay", T0 - 2 * DAY, {"amount": 5}),
        Event("p2", "u2", "pay", T0 - DAY, {}),
        Event("v1", "u1", "view", T0 - DAY, {"sku": "K"}),
        Event("t1", "u1", "tag_added", T0 - DAY, {"tag": "payer"}, 0, ORIGIN_ACTION),
        Event("o1", "u1", "action_delivered", T0 - DAY, {"action_id": "a"}, 0, ORIGIN_DELIVERY),
        Event("b1", "u3", "pay", T0 - DAY, {}, 0, ORIGIN_BACKFILL),  # never archived by the engine: never fed either
        Event("d1", "u3", "pay", T0 - DAY, {}, 0, ORIGIN_TIMER),
        Event("p3", "u3", "pay", T0, {"amount": 1}),
    ]
    for number, event in enumerate(events):
        write_day(tmp_path, f"p{number:05d}_{T0}-0_{T0}-0.parquet", [event], number)
    assert read_all(tmp_path, ["pay"], T0 - 2 * DAY, T0) == [
        ("u1", "pay", T0 - 2 * DAY, '{"amount":5}'),
        ("u2", "pay", T0 - DAY, "{}"),
        ("u3", "pay", T0, '{"amount":1}'),
    ]
    # Both bounds are included; the days outside them are not opened.
    assert read_all(tmp_path, ["pay", "tag_added", "action_delivered"], T0 - DAY, T0 - 1) == [
        ("u1", "action_delivered", T0 - DAY, '{"action_id":"a"}'),
        ("u1", "tag_added", T0 - DAY, '{"tag":"payer"}'),
        ("u2", "pay", T0 - DAY, "{}"),
    ]
    assert read_all(tmp_path, ["follow"], 0, T0) == []
    assert read_all(tmp_path / "none", ["pay"], 0, T0) == []  # no archive yet


def test_a_day_whose_files_a_compaction_replaces_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_backfill, "BATCH_ROWS", 100)
    first = [Event(f"a{n}", f"u{n}", "pay", T0 + n, {"n": n}) for n in range(5_000)]
    second = [Event(f"b{n}", f"v{n}", "pay", T0 + n, {"n": n}) for n in range(5_000)]
    inputs = [write_day(tmp_path, f"p{p:05d}_{T0}-0_{T0}-0.parquet", part, p) for p, part in enumerate((first, second))]
    batches = read_batches(tmp_path, ["pay"], T0, T0 + DAY)
    started = next(batches)
    assert (started.restart, len(started.rows)) == (False, 100)
    # The archiver merges the day's files meanwhile: the read's files are gone.
    writer = archive_files.ParquetWriter()
    try:
        archive_files.compact(writer, inputs, inputs[0].parent / "c1_merged.parquet")
    finally:
        writer.close()
    # Files already open stay readable (a restart is for a file gone between the scan's listing and its
    # opening): either way the day's rows come once each, after the last restart if there is one.
    rows = started.rows
    for batch in batches:
        rows = [] if batch.restart else rows + batch.rows
    assert len(rows) == 10_000 and len({row[0] for row in rows}) == 10_000


def test_rows_become_backfill_events_with_ids_from_their_content() -> None:
    fed = Fed()
    rows = [
        ("u1", "pay", T0, '{"amount":5}'),
        ("u1", "pay", T0, "not json"),
        ("u2", "view", T0, "[1]"),
        ("u3", "pay", T0, "{}"),
    ]
    events = backfill_events(rows, T0 + 7, fed)
    assert fed.skipped == {"unreadable": 2}
    assert [(e.user_id, e.type, e.ts, e.attrs, e.received_ms, e.origin) for e in events] == [
        ("u1", "pay", T0, {"amount": 5}, T0 + 7, ORIGIN_BACKFILL),
        ("u3", "pay", T0, {}, T0 + 7, ORIGIN_BACKFILL),
    ]
    # The id a file's event without one gets: the same content, the same id (no attributes and {} alike).
    assert events[0].event_id == backfill_id(Event("other", "u1", "pay", T0, json.loads('{"amount": 5}')))
    assert events[1].event_id == backfill_id(Event("x", "u3", "pay", T0))
