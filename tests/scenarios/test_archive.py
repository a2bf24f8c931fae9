"""The event archive through the real server on a real Redis (single and cluster): every processed event and
created action lands in the archive's files once (duplicates and backfills do not), delivery outcomes land with
their reason, compaction keeps the rows, retention drops old days, and a drain cut short by a crash is
written again without duplicates."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from beacon.redis_server import free_port
from cep import archive_stream, streams
from cep.archive_stream import Rows
from measure import archive_files
from measure.archive_query import funnel, query
from measure.archiver import ArchiveLimits, Archiver
from tests.chaos.processes import BeaconProcess, beacon_env, kill9_and_restart, wait_healthy
from tests.harness import Beacon, eventually, running_beacon, server_settings
from tests.scenarios.conftest import LIVE_PARTITIONS, LIVE_T0
from tests.scenarios.journeys_kit import ServeClient, outbox_action_ids

DAY = 86_400_000
RULESET = {
    "id": "buyers",
    "rules": [
        {
            "id": "big-pay",
            "when": {"event": "pay", "where": {"field": "amount", "op": ">=", "value": 100}},
            "then": [{"action": "coupon", "coupon_id": "C-10"}, {"action": "tag", "add": ["buyer"]}],
            "reentry": {"policy": "always"},
        }
    ],
}


async def rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    return await asyncio.to_thread(query, data_dir, sql)


async def archived(data_dir: Path, redis: aioredis.Redis, table: str, count: int) -> list[tuple[Any, ...]]:
    """Wait until the archive streams are drained and `table` holds `count` rows; its (id, ...) rows."""

    async def probe() -> tuple[int, int]:
        ((found,),) = await rows(data_dir, f"SELECT count(*) FROM {table}")
        return await archive_stream.backlog(redis, LIVE_PARTITIONS), int(found)

    assert await eventually(probe, lambda state: state == (0, count), timeout_s=15) == (0, count)
    return await rows(data_dir, f"SELECT * FROM {table} ORDER BY 1")


@pytest.fixture
async def archiving(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Beacon]:
    """A server that archives into tmp_path every 50 ms (and delivers: the coupon has no provider, so it dies)."""
    settings = server_settings(
        redis_url,
        partitions=LIVE_PARTITIONS,
        archive=True,
        data_dir=tmp_path,
        archive_flush_ms=100,
        run_connectors=True,
    )
    async with running_beacon(settings, clock=clock) as beacon:
        yield beacon


def pay(event_id: str, user_id: str, amount: int, ts: int) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user_id, "type": "pay", "ts": ts, "attrs": {"amount": amount}}


async def test_processed_events_actions_and_outcomes_land_once(
    archiving: Beacon, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    status, body = await archiving.call("PUT", "/v1/rulesets/buyers", json=RULESET)
    assert status == 200, body
    events = [pay(f"e{n}", f"u{n % 3}", 50 + 40 * n, LIVE_T0 + n) for n in range(5)]
    status, body = await archiving.post_events(events)
    assert status == 200, body
    # Sent again: the engine dedupes by event id, and so does the archive.
    status, body = await archiving.post_events(events[:2])
    assert status == 200, body

    # e2, e3, e4 fire (amount >= 100): a coupon each and a tag for u2, u0 (u1 twice: one tag_added only).
    actions = await archived(tmp_path, redis_client, "actions", 6)
    by_type = sorted((row[2], row[3], row[5], row[15]) for row in actions)
    assert by_type == [("coupon", "buyers", "big-pay", "pending")] * 3 + [("tag", "buyers", "big-pay", "delivered")] * 3
    # The producer's five events and one tag_added per user that got the tag; each once.
    found = await archived(tmp_path, redis_client, "events", 5 + 3 + 3)
    ids = [row[0] for row in found]
    assert len(ids) == len(set(ids))
    producer = sorted((row[0], row[1], row[2], row[3], row[6]) for row in found if row[5] == "")
    assert producer == sorted(
        (e["event_id"], e["user_id"], "pay", e["ts"], f'{{"amount":{e["attrs"]["amount"]}}}') for e in events
    )
    assert sorted(row[2] for row in found if row[5] == "action") == ["tag_added"] * 3
    # Outcomes: the tags applied at creation, and the coupons dead (no coupon provider is configured).
    outcomes = await archived(tmp_path, redis_client, "outcomes", 6)
    coupons = {row[0] for row in actions if row[2] == "coupon"}
    dead = sorted((row[0], row[2], row[4]) for row in outcomes if row[0] in coupons)
    assert [(status, connector) for _, status, connector in dead] == [("dead", "coupon")] * 3
    assert all(row[3] for row in outcomes if row[0] in coupons), outcomes  # each dead one says why
    assert {row[2] for row in outcomes if row[0] not in coupons} == {"delivered"}
    result = await asyncio.to_thread(funnel, tmp_path, "buyers", goal="pay")
    assert (result.triggers, result.actions, result.users, result.delivered) == (3, 6, 3, 3)


async def test_a_delayed_action_cancelled_with_its_ruleset_has_a_cancelled_outcome(
    archiving: Beacon, redis_client: aioredis.Redis, tmp_path: Path, clock: ManualClock
) -> None:
    delayed = {
        "id": "later",
        "rules": [
            {"id": "r", "when": {"event": "pay"}, "then": [{"action": "coupon", "coupon_id": "C", "delay": "1h"}]}
        ],
    }
    assert (await archiving.call("PUT", "/v1/rulesets/later", json=delayed))[0] == 200
    assert (await archiving.post_events([pay("d1", "u9", 10, LIVE_T0)]))[0] == 200
    ((action_id, status),) = [(row[0], row[15]) for row in await archived(tmp_path, redis_client, "actions", 1)]
    assert status == "scheduled"
    assert (await archiving.call("DELETE", "/v1/rulesets/later"))[0] == 200
    clock.advance(2 * 3_600_000)  # the delay falls due with its ruleset gone: cancelled by the commit
    outcomes = await archived(tmp_path, redis_client, "outcomes", 1)
    assert [(row[0], row[1], row[2], row[3]) for row in outcomes] == [(action_id, "u9", "cancelled", "ruleset_deleted")]


async def test_compaction_merges_files_and_keeps_every_row(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path, clock: ManualClock
) -> None:
    settings = server_settings(
        redis_url, partitions=LIVE_PARTITIONS, archive=True, data_dir=tmp_path, archive_flush_ms=100,
        archive_compact_files=3,
    )  # fmt: skip
    async with running_beacon(settings, clock=clock) as beacon:
        sent = 0
        for wave in range(8):
            # Each wave is drained into files of its own before the next arrives.
            batch = [pay(f"w{wave}-{n}", f"u{n}", 10, LIVE_T0 + wave) for n in range(20)]
            assert (await beacon.post_events(batch))[0] == 200
            sent += len(batch)
            await archived(tmp_path, redis_client, "events", sent)
        day_dir = tmp_path / "archive" / "events" / f"day={archive_files.day_of(LIVE_T0)}"

        def levels() -> list[int | None]:
            return sorted(archive_files.level_of(p.name) for p in day_dir.glob("*.parquet"))

        async def merged() -> list[int | None]:
            return await asyncio.to_thread(levels)

        # 8 waves x 2 partitions of drain files, merged 3 at a time: fewer files, some of level 1 or more.
        found = await eventually(merged, lambda found: len(found) < 2 * 8 and max(found or [0]) >= 1, timeout_s=10)
        assert len(found) < 2 * 8 and max(found) >= 1, found  # type: ignore[type-var]
        assert await rows(tmp_path, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(sent, sent)]
        # The day over, it ends as one file with the same rows.
        clock.advance(DAY)
        assert await eventually(merged, lambda found: found == [archive_files.FINAL_LEVEL], timeout_s=10) == [
            archive_files.FINAL_LEVEL
        ]
        assert await rows(tmp_path, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(sent, sent)]


async def test_retention_drops_days_past_it(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path, clock: ManualClock
) -> None:
    settings = server_settings(
        redis_url, partitions=LIVE_PARTITIONS, archive=True, data_dir=tmp_path, archive_flush_ms=100,
        archive_retention_days=3,
    )  # fmt: skip
    async with running_beacon(settings, clock=clock) as beacon:
        # An event from 5 days ago is processed and archived, into a day already past the retention.
        old = [pay("old", "u1", 10, LIVE_T0 - 5 * DAY)]
        recent = [pay(f"r{n}", "u1", 10, LIVE_T0 - DAY + n) for n in range(3)]
        today = [pay(f"t{n}", "u2", 10, LIVE_T0 + n) for n in range(2)]
        assert (await beacon.post_events(old + recent + today))[0] == 200
        await archived(tmp_path, redis_client, "events", 5)
        assert await rows(tmp_path, "SELECT event_id FROM events ORDER BY 1") == [
            ("r0",),
            ("r1",),
            ("r2",),
            ("t0",),
            ("t1",),
        ]
        # Two days later yesterday is 3 days old: dropped; today's rows stay.
        clock.advance(2 * DAY)

        async def kept() -> list[tuple[Any, ...]]:
            return await rows(tmp_path, "SELECT event_id FROM events ORDER BY 1")

        assert await eventually(kept, lambda found: found == [("t0",), ("t1",)], timeout_s=10) == [("t0",), ("t1",)]
        assert not (tmp_path / "archive" / "events" / f"day={archive_files.day_of(LIVE_T0 - DAY)}").exists()


async def test_a_drain_cut_short_is_written_again_once(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path, clock: ManualClock
) -> None:
    """A crash after a drain's files were renamed into place but before its entries left the stream: the next
    archiver, which drains more entries by then (so its files have other names), deletes those files first."""
    settings = server_settings(
        redis_url, partitions=LIVE_PARTITIONS, archive=True, run_archiver=False, data_dir=tmp_path
    )
    async with running_beacon(settings, clock=clock) as beacon:
        assert (await beacon.post_events([pay(f"s{n}", f"u{n}", 10, LIVE_T0 + n) for n in range(30)]))[0] == 200
        await processed(redis_client)
        crashed = Archiver(redis_client, tmp_path, LIVE_PARTITIONS, clock, ArchiveLimits(), asyncio.Event())
        crashed._writer = archive_files.ParquetWriter()
        for partition in range(LIVE_PARTITIONS):
            # What a drain does before its trim.
            found: Any = await redis_client.xrange(archive_stream.archive_key(partition))
            decoded = Rows()
            for entry_id, fields in found:
                archive_stream.decode_entry(partition, entry_id, fields, decoded)
            await asyncio.to_thread(crashed._write, partition, found[0][0], found[-1][0], decoded)
        crashed._writer.close()
        assert await rows(tmp_path, "SELECT count(*) FROM events") == [(30,)]
        assert (await beacon.post_events([pay(f"m{n}", f"u{n}", 10, LIVE_T0 + n) for n in range(10)]))[0] == 200
        await processed(redis_client)
        restarted = Archiver(redis_client, tmp_path, LIVE_PARTITIONS, clock, ArchiveLimits(), asyncio.Event())
        await restarted.cycle()
        assert await archive_stream.backlog(redis_client, LIVE_PARTITIONS) == 0
        assert await rows(tmp_path, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(40, 40)]


async def processed(redis: aioredis.Redis) -> None:
    """Wait until every stream entry is committed (and so archived in the archive streams)."""
    assert await eventually(lambda: streams.backlog(redis, LIVE_PARTITIONS), lambda lag: lag == 0) == 0


CRASH_EVENTS = 4_000


async def test_every_event_and_action_is_archived_once_across_sigkills_of_serve(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """`beacon serve` SIGKILLed twice, preferably mid-batch, while events stream in (each request retried until
    acknowledged, as a producer does): the archive ends with each event and each action exactly once."""
    data_dir = tmp_path / "data"
    env = beacon_env(
        redis_url, free_port(), LIVE_PARTITIONS, BEACON_RUN_CONNECTORS="false", BEACON_ARCHIVE="on",
        BEACON_DATA_DIR=str(data_dir), BEACON_ARCHIVE_FLUSH_MS="100", BEACON_WORKER_BATCH="50",
    )  # fmt: skip
    serve = BeaconProcess("serve", env, tmp_path, "serve")
    rng = random.Random(12)
    async with aiohttp.ClientSession() as session:
        try:
            serve.start()
            await wait_healthy(serve, session)
            client = ServeClient(session, serve.port)
            status, body = await client.call("PUT", "/v1/rulesets/buyers", json=RULESET)
            assert status == 200, body
            now = int(time.time() * 1000)
            events = [pay(f"k{n:05d}", f"u{n % 500}", 50 + n % 100, now + n) for n in range(CRASH_EVENTS)]

            producing = asyncio.create_task(client.post_until_acknowledged(events, 100))
            kills = await kill9_and_restart(serve, redis_client, LIVE_PARTITIONS, rng, session)
            await asyncio.wait_for(producing, 60)
            await eventually(lambda: streams.backlog(redis_client, LIVE_PARTITIONS), lambda lag: lag == 0, 30)
            await eventually(lambda: archive_stream.backlog(redis_client, LIVE_PARTITIONS), lambda n: n == 0, 30)
        finally:
            serve.stop()
    print("kills:", kills)
    ((total, distinct),) = await rows(data_dir, "SELECT count(*), count(DISTINCT event_id) FROM events")
    assert total == distinct  # nothing twice, chained tag_added events included
    produced = await rows(data_dir, "SELECT event_id FROM events WHERE origin = ''")
    assert sorted(row[0] for row in produced) == sorted(e["event_id"] for e in events)
    # Every action the ledger's outbox holds (one per firing: amounts >= 100), archived once; the tag actions too.
    coupons = await outbox_action_ids(redis_client, LIVE_PARTITIONS)
    assert len(coupons) == len(set(coupons)) == sum(1 for e in events if e["attrs"]["amount"] >= 100)
    archived_coupons = await rows(data_dir, "SELECT action_id FROM actions WHERE action_type = 'coupon'")
    assert sorted(row[0] for row in archived_coupons) == sorted(coupons)
    ((tags, tag_ids),) = await rows(
        data_dir, "SELECT count(*), count(DISTINCT action_id) FROM actions WHERE action_type = 'tag'"
    )
    assert tags == tag_ids == len(coupons)
