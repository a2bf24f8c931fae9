"""A segment backfilled from the event archive, through the real server on a real Redis (single and cluster),
with the archive written by the real archiver into a temporary data directory: events processed before the
segment existed fill it as a file of the same events would, silently, once however often it runs; a
process without the archive answers 409; bad bodies are 422s naming their field."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from cep import archive_stream
from measure.archive_query import query
from tests.harness import Beacon, eventually, running_beacon, server_settings
from tests.processes import run_beacon
from tests.scenarios.conftest import LIVE_PARTITIONS, LIVE_T0
from tests.scenarios.test_seed_scenarios import event, settled
from tests.scenarios.test_segments import BUYERS, FANS, REPEAT, members, put_segment

T0 = LIVE_T0
DAY = 86_400_000
ON_PAY = {
    "id": "on-pay",
    "rules": [{"id": "thanks", "when": {"event": "pay"}, "then": [{"action": "tag", "add": ["payer"]}]}],
}
# Processed before any segment exists. Within the 30 days before T0: a paid twice, b once, c once (and once
# 40 days ago), e once after following; d followed and did not pay; f only viewed; g paid twice 45 days ago.
HISTORY = [
    event("a", "pay", T0 - 10 * DAY, amount=5),
    event("a", "pay", T0 - 3 * DAY, amount=7),
    event("b", "pay", T0 - 5 * DAY, amount=5),
    event("c", "pay", T0 - 40 * DAY, amount=5),
    event("c", "pay", T0 - 1 * DAY, amount=5),
    event("d", "follow", T0 - 2 * DAY),
    event("e", "follow", T0 - 2 * DAY),
    event("e", "pay", T0 - 1 * DAY, amount=9),
    event("f", "view", T0 - 1 * DAY),
    event("f", "view", T0 - 1 * DAY + 1),
    event("g", "pay", T0 - 45 * DAY, amount=5),
    event("g", "pay", T0 - 44 * DAY, amount=5),
]
EXPECTED = {"buyers": ["a", "b", "c", "e"], "repeat": ["a"], "fans-no-order": ["d"]}


@pytest.fixture
async def archiving(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Beacon]:
    """A server that archives into tmp_path every 100 ms."""
    settings = server_settings(
        redis_url, partitions=LIVE_PARTITIONS, archive=True, data_dir=tmp_path, archive_flush_ms=100
    )
    async with running_beacon(settings, clock=clock) as beacon:
        yield beacon


async def post_archived(beacon: Beacon, redis: aioredis.Redis, data_dir: Path, events: list[dict[str, Any]]) -> None:
    """Post producer events and wait until they are processed and in the archive's files."""
    ((before,),) = await asyncio.to_thread(query, data_dir, "SELECT count(*) FROM events WHERE origin = ''")
    status, body = await beacon.post_events(events)
    assert status == 200, body

    async def probe() -> tuple[int, int]:
        ((found,),) = await asyncio.to_thread(query, data_dir, "SELECT count(*) FROM events WHERE origin = ''")
        return await archive_stream.backlog(redis, LIVE_PARTITIONS), int(found)

    wanted = (0, int(before) + len(events))
    assert await eventually(probe, lambda state: state == wanted, timeout_s=15) == wanted


async def backfill(beacon: Beacon, segment_id: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = await beacon.call("POST", f"/v1/segments/{segment_id}:backfill", json=body)
    assert status == 200, answer
    return dict(answer)


async def memberships(beacon: Beacon) -> dict[str, list[str]]:
    return {segment_id: await members(beacon, segment_id) for segment_id in EXPECTED}


@pytest.mark.parametrize("source", ["archive", "file"])
async def test_a_backfill_from_the_archive_fills_segments_as_the_same_file_would(
    archiving: Beacon, redis_client: aioredis.Redis, tmp_path: Path, source: str
) -> None:
    await archiving.put_ruleset(ON_PAY)
    await post_archived(archiving, redis_client, tmp_path, HISTORY)
    for document in (BUYERS, REPEAT, FANS):
        await put_segment(archiving, document)
    await settled(redis_client)
    live_actions = await archiving.actions()
    assert len(live_actions) == 8  # a tag for each payment made live, before the segments existed
    for attempt in range(2):  # run twice: the second changes nothing
        if source == "archive":
            # The default window: the segment's longest behaviour window (30 days) back from now.
            answer = await backfill(archiving, "repeat", {"source": "archive"})
            assert answer["elapsed_ms"] >= 0, answer
            window = {
                key: answer[key] for key in ("source", "from_ms", "to_ms", "types", "read", "accepted", "skipped")
            }
            # a twice, b, c's recent payment and e's: not c's and g's older ones, nor the tag_added events.
            assert window == {
                "source": "archive",
                "from_ms": T0 - 30 * DAY,
                "to_ms": T0,
                "types": ["pay"],
                "read": 5,
                "accepted": 5,
                "skipped": {},
            }, answer
            answer = await backfill(archiving, "fans-no-order", {"source": "archive"})
            assert (answer["types"], answer["read"], answer["accepted"]) == (["follow", "pay"], 7, 7), answer
        else:
            answer = await backfill(archiving, "repeat", {"events": HISTORY})
            assert (answer["accepted"], answer["ignored"]) == (8, {"follow": 2, "view": 2}), answer
            answer = await backfill(archiving, "fans-no-order", {"events": HISTORY})
            assert (answer["accepted"], answer["ignored"]) == (10, {"view": 2}), answer
        await settled(redis_client)
        assert await memberships(archiving) == EXPECTED, f"attempt {attempt + 1}"
        assert await archiving.actions() == live_actions  # silent: nothing acted on the past
    # The archive's events and the file's get the same ids: feeding the other source afterwards adds nothing.
    if source == "archive":
        await backfill(archiving, "repeat", {"events": HISTORY})
    else:
        await backfill(archiving, "repeat", {"source": "archive"})
    await settled(redis_client)
    assert await memberships(archiving) == EXPECTED
    # Nothing a backfill fed was archived (it would be read back by the next one).
    ((fed,),) = await asyncio.to_thread(query, tmp_path, "SELECT count(*) FROM events WHERE origin = 'backfill'")
    assert fed == 0


async def test_events_processed_live_since_the_segment_exists_are_not_counted_twice(
    archiving: Beacon, redis_client: aioredis.Redis, tmp_path: Path, clock: ManualClock
) -> None:
    await post_archived(archiving, redis_client, tmp_path, [event("h", "pay", T0 - 20 * DAY, amount=1)])
    await put_segment(archiving, REPEAT)
    # One more payment each for h and for k, processed live (kept in the segment's history) and archived.
    live = [event("h", "pay", T0 - DAY, amount=1), event("k", "pay", T0 - DAY, amount=1)]
    await post_archived(archiving, redis_client, tmp_path, live)
    await settled(redis_client)
    assert await members(archiving, "repeat") == []
    # The window holds all three: h's first payment is new to the history, the other two are already there.
    answer = await backfill(archiving, "repeat", {"source": "archive", "from": "2025-12-01"})
    assert (answer["from_ms"], answer["read"], answer["accepted"]) == (T0 - 31 * DAY, 3, 3), answer
    await settled(redis_client)
    assert await members(archiving, "repeat") == ["h"]  # two payments: k paid once, not twice
    # A window that ends before them reads none of them; `to` as a date is that whole day.
    answer = await backfill(archiving, "repeat", {"source": "archive", "from": 0, "to": "2025-12-01"})
    assert (answer["to_ms"], answer["read"]) == (T0 - 30 * DAY - 1, 0), answer


async def test_a_process_without_the_archive_answers_409(
    redis_url: str, archiving: Beacon, redis_client: aioredis.Redis, tmp_path: Path, clock: ManualClock
) -> None:
    await post_archived(archiving, redis_client, tmp_path, [event("a", "pay", T0 - DAY, amount=1)])
    await put_segment(archiving, BUYERS)
    assert (await archiving.put_ruleset(ON_PAY)) == 1
    # Another serve with a data directory of its own: the archive's files are not there.
    elsewhere = server_settings(
        redis_url, partitions=LIVE_PARTITIONS, archive=True, data_dir=tmp_path / "other", archive_flush_ms=100
    )
    off = server_settings(redis_url, partitions=LIVE_PARTITIONS)  # the archive off
    for settings, code, words in (
        (elsewhere, "archive_elsewhere", "lives in the data directory of another process"),
        (off, "archive_off", "the event archive is off (BEACON_ARCHIVE)"),
    ):
        async with running_beacon(settings, clock=clock) as other:
            status, body = await other.call("POST", "/v1/segments/buyers:backfill", json={"source": "archive"})
            assert (status, body["error"]["code"], body["error"]["path"]) == (409, code, "source"), body
            assert words in body["error"]["message"], body
            # A report replayed from the archive says the same (one check for both).
            status, report = await other.call("GET", "/v1/reports/rulesets/on-pay", params={"source": "archive"})
            assert (status, report) == (409, body), report
    # The serve that archives reads it.
    assert (await backfill(archiving, "buyers", {"source": "archive"}))["read"] == 1


async def test_bad_backfill_bodies_are_422s_naming_the_field(beacon: Beacon) -> None:
    status, body = await beacon.call("POST", "/v1/segments/nope:backfill", json={"source": "archive"})
    assert status == 404, body
    await put_segment(beacon, BUYERS)
    for payload, path in (
        ({"source": "files"}, "source"),
        ({"source": None}, "source"),
        ({"source": "archive", "events": [event("a", "pay", T0)]}, "events"),
        ({"source": "archive", "from": "2026-13-01"}, "from"),
        ({"source": "archive", "from": True}, "from"),
        ({"source": "archive", "from": -5}, "from"),
        ({"source": "archive", "to": "yesterday"}, "to"),
        ({"source": "archive", "to": 10**16}, "to"),
        ({"source": "archive", "from": T0, "to": T0 - 1}, "from"),
        ({"source": "archive", "from": "2026-01-02", "to": "2026-01-01T12:00:00+08:00"}, "from"),
        ({"source": "archive", "window": "30d"}, "window"),
        ({"events": [event("a", "pay", T0)], "from": T0}, "from"),
    ):
        status, body = await beacon.call("POST", "/v1/segments/buyers:backfill", json=payload)
        assert (status, body["error"]["path"]) == (422, path), (payload, body)
    # Well-formed bounds reach the archive check (this server has none).
    good = {"source": "archive", "from": "2025-12-01T00:00:00Z", "to": "2026-01-01T08:00:00+08:00"}
    status, body = await beacon.call("POST", "/v1/segments/buyers:backfill", json=good)
    assert (status, body["error"]["code"]) == (409, "archive_off"), body


async def test_the_command_backfills_from_the_archive(
    archiving: Beacon, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    await post_archived(archiving, redis_client, tmp_path, HISTORY)
    await put_segment(archiving, REPEAT)
    url = archiving.url("").rstrip("/")
    code, out, err = await run_beacon(
        "segments", "backfill", "repeat", "--archive", "--from", "2025-12-02", BEACON_URL=url
    )
    assert code == 0, err
    assert out.startswith("backfilled 5 events into repeat from the archive (2025-12-02 00:00:00 .. 2026-01-01"), out
    assert "types: pay); read 5, skipped: none;" in out, out
    await settled(redis_client)
    assert await members(archiving, "repeat") == ["a"]
    code, _, err = await run_beacon(
        "segments", "backfill", "repeat", "--events", "x.jsonl", "--to", "1", BEACON_URL=url
    )
    assert code == 2 and "--from and --to go with --archive" in err, err
