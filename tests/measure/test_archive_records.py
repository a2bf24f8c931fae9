"""Archive records: what the owner encodes decodes into the tables' rows; an unreadable entry adds nothing and
the archiver writes the entries around it; an empty archive answers queries with no rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from beacon.errors import DecodeError
from cep.archive_stream import (
    ACTION_COLUMNS,
    ACTIONS_FIELD,
    EVENT_COLUMNS,
    EVENTS_FIELD,
    NOT_WRITTEN_FIELD,
    Rows,
    archive_key,
    decode_entry,
    encode_actions,
    encode_events,
    row_count,
)
from cep.events import ORIGIN_DELIVERY, Event
from cep.firing import CreatedAction
from measure.archive_query import funnel, query
from measure.archiver import ArchiveLimits, Archiver

NOW = 1_767_225_600_000


def action(action_id: str, user_id: str, status: str = "pending") -> CreatedAction:
    record = {
        "action_id": action_id, "user_id": user_id, "type": "message", "ruleset_id": "rs", "ruleset_version": 2,
        "rule_id": "r", "params": {"channel": "sms", "template": "hi"}, "created_at": NOW, "due_at": NOW,
        "trigger_id": "e1",
    }  # fmt: skip
    return CreatedAction(action_id, record, status, None)


def rows_of(columns: list[list[object]]) -> list[tuple[object, ...]]:
    return list(zip(*columns, strict=True))


def test_events_actions_and_outcomes_decode_to_rows() -> None:
    events = [
        Event("e1", "u1", "pay", NOW, {"amount": 12, "sku": "K1", "名": "值"}, NOW + 3),
        Event("outcome:a2:dead:3", "u1", "action_dead", NOW + 5, {"action_id": "a2", "type": "message",
              "channel": "sms", "reason": "http_5xx"}, NOW + 5, ORIGIN_DELIVERY),
    ]  # fmt: skip
    fields = {
        EVENTS_FIELD: encode_events(events),
        ACTIONS_FIELD: encode_actions([action("a1", "u1"), action("a2", "u1"), action("t1", "u1", "delivered")]),
        NOT_WRITTEN_FIELD: msgpack.packb(["a1"]),  # the ledger held a1 already: archived before
    }
    into = Rows()
    decode_entry(3, f"{NOW + 9}-4".encode(), fields, into)
    assert rows_of(into.events)[0] == (
        "e1",
        "u1",
        "pay",
        NOW,
        NOW + 3,
        "",
        '{"amount":12,"sku":"K1","名":"值"}',
        3,
        NOW + 9,
        4,  # the entry id's sequence number
        0,  # the event's place in its batch
    )
    assert rows_of(into.events)[1][-2:] == (4, 1)
    assert len(EVENT_COLUMNS) == len(into.events) and row_count(into.events) == 2
    actions = rows_of(into.actions)
    assert [row[0] for row in actions] == ["a2", "t1"] and len(actions[0]) == len(ACTION_COLUMNS)
    assert actions[0][9:12] == (None, "sms", "hi")
    # The delivery outcome event and the action final at creation are outcome rows.
    assert rows_of(into.outcomes) == [
        ("a2", "u1", "dead", "http_5xx", "sms", NOW + 5, 3, 3, NOW + 9),
        ("t1", "u1", "delivered", "", "message", NOW, 0, 3, NOW + 9),
    ]


@pytest.mark.parametrize(
    "fields",
    [
        {EVENTS_FIELD: b"\xc1"},  # not msgpack
        {EVENTS_FIELD: msgpack.packb({"v": 99, "id": []})},  # a codec version this build does not know
        {
            EVENTS_FIELD: encode_events([Event("e", "u", "t", 1)]),
            ACTIONS_FIELD: msgpack.packb({"v": 1, "rows": [["x"]]}),
        },
    ],
)
def test_an_unreadable_entry_adds_no_row(fields: dict[bytes, bytes]) -> None:
    into = Rows()
    with pytest.raises(DecodeError):
        decode_entry(0, b"1-0", fields, into)
    assert (row_count(into.events), row_count(into.actions), row_count(into.outcomes)) == (0, 0, 0)


async def test_the_archiver_skips_an_unreadable_entry_and_writes_the_others(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    key = archive_key(0)
    await redis_client.xadd(key, {EVENTS_FIELD: encode_events([Event("a", "u", "pay", NOW)])})
    await redis_client.xadd(key, {EVENTS_FIELD: b"\xc1"})
    await redis_client.xadd(key, {EVENTS_FIELD: encode_events([Event("b", "u", "pay", NOW)])})
    archiver = Archiver(redis_client, tmp_path, 1, ManualClock(NOW), ArchiveLimits(), asyncio.Event())
    await archiver.cycle()
    assert await redis_client.xlen(key) == 0
    assert query(tmp_path, "SELECT event_id FROM events ORDER BY 1") == [("a",), ("b",)]


def test_an_empty_archive_answers_with_no_rows(tmp_path: Path) -> None:
    assert query(tmp_path, "SELECT count(*) FROM events JOIN actions USING (user_id)") == [(0,)]
    result = funnel(tmp_path, "rs")
    assert (result.actions, result.delivered, result.converted) == (0, 0, 0)
