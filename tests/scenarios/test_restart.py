"""Pending absences and delayed actions survive a process restart and a Redis restart (AOF), on a single
server and on a 3-master cluster (every node restarted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from beacon.clock import ManualClock
from beacon.redis_server import EmbeddedCluster, EmbeddedRedis
from beacon.services import connect
from cep.outbox import outbox_key
from tests.harness import running_beacon, server_settings
from tests.scenarios.library import library_ruleset
from tests.scenarios.test_seed_scenarios import DAY, MINUTE, T0, advance, event, kinds, settled


@pytest.mark.parametrize("kind", ["single", "cluster"])
async def test_restarts_lose_no_timer_and_fire_none_twice(tmp_path: Path, kind: str) -> None:
    server: EmbeddedRedis | EmbeddedCluster
    server = EmbeddedCluster(tmp_path / "cluster") if kind == "cluster" else EmbeddedRedis(tmp_path / "redis")
    server.start()
    clock = ManualClock(T0)
    settings = server_settings(server.url, partitions=2)
    redis = connect(settings)
    try:
        async with running_beacon(settings, clock=clock) as beacon:
            await beacon.put_ruleset(library_ruleset("cart-recovery"))
            await beacon.put_ruleset(library_ruleset("welcome-on-follow"))
            await beacon.post_events(
                [event(f"cart-{i}", "add_to_cart", T0 + i, sku="S1") for i in range(20)]
                + [event(f"fan-{i}", "follow", T0 + i) for i in range(20)]
            )
            await settled(redis)
            # Half the carts fall due before the process restarts.
            await advance(beacon, redis, clock, T0 + 30 * MINUTE + 2_000 + 9)
            assert sum([len(await beacon.actions(f"cart-{i}")) for i in range(20)]) == 10

        # Process restart: a fresh app (new workers, new sweeper) on the same Redis.
        async with running_beacon(settings, clock=clock) as beacon:
            await advance(beacon, redis, clock, T0 + 3 * DAY + 10)  # every cart, every intro
        await redis.aclose()

        server.stop()  # Redis restart (every node of a cluster): SIGTERM flushes the append-only file
        server.restart() if isinstance(server, EmbeddedCluster) else server.start()
        redis = connect(settings)
        async with running_beacon(settings, clock=clock) as beacon:
            await advance(beacon, redis, clock, T0 + 10 * DAY)
            for i in range(20):
                assert kinds(await beacon.actions(f"cart-{i}")) == [("cart-no-pay-30m", "message")], i
                fan = await beacon.actions(f"fan-{i}")
                assert sorted(a["status"] for a in fan) == ["delivered", "pending", "pending", "pending"], i
            entries = sum([await redis.xlen(outbox_key(p)) for p in range(2)])
            assert entries == 20 + 3 * 20  # one SMS per cart, welcome + intro + coupon per fan: none twice
    finally:
        await redis.aclose()
        server.stop()
