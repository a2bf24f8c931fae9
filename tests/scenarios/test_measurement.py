"""Measurement through the real server, its connectors and a local provider, on a real Redis (single and
cluster), on a manual clock: a scripted campaign — deliveries, a failure, a late delivery, clicks,
payments in and out of the goal window, a split with a holdout arm — gives exactly the report a hand
calculation gives, for every attribution model."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from beacon.clock import ManualClock
from beacon.metrics import REGISTRY
from beacon.redis_server import free_port
from cep import archive_stream, streams
from cep.journeys import split_arm
from cep.reports import lift
from connectors.settings import HttpEndpoint
from rules.journey_model import Split
from rules.journey_schema import parse_journey
from tests.chaos.processes import BeaconProcess, beacon_env, kill9_and_restart, wait_healthy
from tests.connectors.kit import fast_settings
from tests.harness import Beacon, eventually, running_beacon, server_settings
from tests.scenarios.conftest import LIVE_PARTITIONS
from tests.scenarios.journeys_kit import ServeClient
from tests.scenarios.test_seed_scenarios import DAY, MINUTE, T0, advance, event, settled

HOUR = 60 * MINUTE
LANDING = "https://shop.example/landing"
CAMPAIGN = {
    "id": "welcome",
    "rules": [
        {
            "id": "coupon",
            "when": {"event": "follow"},
            "then": [
                {
                    "action": "coupon",
                    "coupon_id": "{{event.coupon}}",
                    "params": {"landing": '{{link "' + LANDING + '"}}'},
                }
            ],
            "goal": {"event": "pay", "within": "7d", "value": "amount"},
        }
    ],
}
AB = {
    "id": "ab",
    "entry": {"event": "signup"},
    "start": "split",
    "nodes": {
        "split": {"split": [{"weight": 50, "next": "gift"}, {"weight": 50, "holdout": True}]},
        "gift": {"do": [{"action": "coupon", "coupon_id": "OK", "params": {"landing": '{{link "' + LANDING + '"}}'}}]},
    },
    "goal": {"event": "pay", "within": "7d", "value": "amount"},
}


class Provider:
    """The merchant's coupon API: `BAD` is refused for good (400), `SLOW` fails once (500), the rest pass."""

    def __init__(self) -> None:
        self.slow_seen = 0
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        coupon = body.get("coupon_id")
        if coupon == "BAD":
            return web.json_response({"error": "unknown coupon"}, status=400)
        if coupon == "SLOW" and self.slow_seen == 0:
            self.slow_seen += 1
            return web.json_response({"error": "busy"}, status=500)
        return web.json_response({"ok": True})


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    found = Provider()
    app = web.Application()
    app.router.add_post("/coupons", found.handle)
    found.server = TestServer(app, host="127.0.0.1")
    await found.server.start_server()
    yield found
    await found.server.close()


@pytest.fixture
async def delivering(
    redis_url: str, redis_client: aioredis.Redis, clock: ManualClock, provider: Provider, tmp_path: Path
) -> AsyncIterator[Beacon]:
    """The server with its connectors delivering coupons to the provider, archiving into tmp_path."""
    assert provider.server is not None
    connectors = msgspec.structs.replace(
        fast_settings(), coupon=HttpEndpoint(str(provider.server.make_url("/coupons")))
    )
    settings = server_settings(
        redis_url,
        partitions=LIVE_PARTITIONS,
        run_connectors=True,
        connectors=connectors,
        archive=True,
        data_dir=tmp_path,
        archive_flush_ms=100,
    )
    async with running_beacon(settings, clock=clock) as running:
        yield running


async def statuses(beacon: Beacon) -> dict[str, str]:
    return {a["user_id"]: a["status"] for a in await beacon.actions() if a["type"] == "coupon"}


async def click(beacon: Beacon, action: dict[str, Any]) -> None:
    token = urlsplit(action["params"]["params"]["landing"]).path.removeprefix("/c/")
    async with beacon.session.get(beacon.url(f"/c/{token}"), allow_redirects=False) as response:
        assert (response.status, response.headers.get("Location")) == (302, LANDING)


def conversions(model: str) -> float:
    """beacon_conversions_total of the campaign in this process (the server runs in it)."""
    return (
        REGISTRY.get_sample_value("beacon_conversions_total", {"kind": "ruleset", "id": "welcome", "model": model}) or 0
    )


async def report(beacon: Beacon, path: str, **params: str) -> dict[str, Any]:
    status, body = await beacon.call("GET", path, params={"from": "2026-01-01", "to": "2026-01-20", **params})
    assert status == 200, body
    return dict(body)


async def test_a_scripted_campaign_reports_what_a_hand_calculation_gives(
    delivering: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    beacon = delivering
    before = {model: conversions(model) for model in ("acted", "reach", "click")}
    clicks_before = REGISTRY.get_sample_value("beacon_clicks_total", {"kind": "ruleset", "id": "welcome"}) or 0
    await beacon.put_ruleset(CAMPAIGN)
    coupons = {"u1": "OK", "u2": "OK", "u3": "BAD", "u4": "SLOW", "u5": "OK", "u6": "OK"}
    await beacon.post_events([event(user, "follow", T0, coupon=coupon) for user, coupon in coupons.items()])
    expected = {
        "u1": "delivered",
        "u2": "delivered",
        "u3": "dead",
        "u4": "failed",
        "u5": "delivered",
        "u6": "delivered",
    }
    await eventually(lambda: statuses(beacon), lambda found: found == expected, timeout_s=10)
    await settled(redis_client)
    (u1,) = await beacon.actions("u1")
    await click(beacon, u1)
    await click(beacon, u1)  # clicked twice: one click
    payments = [
        ("u1", 100, T0 + 10 * MINUTE),  # after delivery and click: every model
        ("u2", 50, T0 + 20 * MINUTE),  # delivered, not clicked: acted and reach
        ("u3", 30, T0 + 30 * MINUTE),  # delivery dead: acted only
        ("u4", 20, T0 + HOUR),  # delivered only later (a retry at T0 + 2 h): acted only
        ("u6", 10, T0 + 40 * MINUTE),  # converts ...
        ("u6", 5, T0 + 50 * MINUTE),  # ... once per touch: not again
        ("u5", 70, T0 + 8 * DAY),  # outside the 7-day window
        ("u7", 99, T0 + HOUR),  # never touched
    ]
    await beacon.post_events([event(user, "pay", ts, amount=amount) for user, amount, ts in payments])
    await settled(redis_client)
    await advance(beacon, redis_client, clock, T0 + 2 * HOUR)  # u4's retry is due
    await eventually(lambda: statuses(beacon), lambda found: found["u4"] == "delivered", timeout_s=10)
    await settled(redis_client)

    found = await report(beacon, "/v1/reports/rulesets/welcome", by="day")
    funnel = {
        "triggered": 6,
        "entered": 0,
        "acted": 6,
        "delivered": 5,
        "skipped": 0,
        "dead": 1,
        "clicked": 1,
        "converted": {"acted": 5, "reach": 3, "click": 1},
        "revenue": {"acted": 210.0, "reach": 160.0, "click": 100.0},
    }
    assert found["funnel"] == funnel
    assert found["rules"] == {"coupon": funnel}
    assert found["days"] == [{"day": "2026-01-01", **funnel}]
    # Prometheus counts the same conversions and clicks as they are committed.
    assert {model: conversions(model) - before[model] for model in before} == {"acted": 5, "reach": 3, "click": 1}
    clicks = REGISTRY.get_sample_value("beacon_clicks_total", {"kind": "ruleset", "id": "welcome"}) or 0
    assert clicks - clicks_before == 1
    (failure,) = found["failures"]
    (u3,) = await beacon.actions("u3")
    assert (failure["status"], failure["count"], failure["sample_action_ids"]) == ("dead", 1, [u3["action_id"]])
    # Recomputed from the event archive (the archived events replayed through the evaluator): the same report.
    await eventually(lambda: archive_stream.backlog(redis_client, LIVE_PARTITIONS), lambda left: left == 0, 15)
    replayed = await report(beacon, "/v1/reports/rulesets/welcome", by="day", source="archive")
    assert {key: replayed[key] for key in ("funnel", "rules", "days")} == {
        "funnel": funnel,
        "rules": {"coupon": funnel},
        "days": [{"day": "2026-01-01", **funnel}],
    }
    csv_url = beacon.url("/v1/reports/rulesets/welcome")
    async with beacon.session.get(csv_url, params={"format": "csv", "to": "2026-01-05"}) as response:
        assert (response.status, response.content_type) == (200, "text/csv")
        lines = (await response.text()).splitlines()
    assert lines[1:] == [
        "total,,6,0,6,5,0,1,1,5,3,1,210.0,160.0,100.0",
        "coupon,,6,0,6,5,0,1,1,5,3,1,210.0,160.0,100.0",
    ]


async def test_split_arms_report_lift_against_the_holdout(
    delivering: Beacon, redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    beacon = delivering
    status, body = await beacon.call("PUT", "/v1/journeys/ab", json=AB)
    assert status == 200, body
    users = [f"s{n:03d}" for n in range(120)]
    await beacon.post_events([event(user, "signup", T0) for user in users])
    split = parse_journey(AB).nodes["split"]
    assert isinstance(split, Split)
    arm = {user: split_arm(split, user, "ab", "split") for user in users}
    treated = [user for user in users if arm[user] == 0]
    await eventually(lambda: statuses(beacon), lambda found: len(found) == len(treated), timeout_s=10)
    await eventually(lambda: statuses(beacon), lambda found: set(found.values()) == {"delivered"}, timeout_s=10)
    await settled(redis_client)
    clickers = [user for n, user in enumerate(users) if arm[user] == 0 and n % 4 == 0]
    for user in clickers:
        (action,) = await beacon.actions(user)
        await click(beacon, action)
    payers = [user for n, user in enumerate(users) if n % 3 == 0]
    await beacon.post_events([event(user, "pay", T0 + HOUR, amount=10) for user in payers])
    await settled(redis_client)

    found = await report(beacon, "/v1/reports/journeys/ab")
    arms = found["arms"]["split"]
    held = [user for user in users if arm[user] == 1]
    paid_treated = [user for user in payers if arm[user] == 0]
    paid_held = [user for user in payers if arm[user] == 1]
    clicked_paid = [user for user in paid_treated if user in clickers]
    assert arms["arm0"]["entered"] == len(treated) and arms["holdout"]["entered"] == len(held)
    assert arms["arm0"]["converted"] == {
        "acted": len(paid_treated),
        "reach": len(paid_treated),
        "click": len(clicked_paid),
    }
    assert arms["holdout"]["converted"] == {"acted": len(paid_held), "reach": 0, "click": 0}
    assert arms["arm0"]["revenue"]["acted"] == 10.0 * len(paid_treated)
    assert arms["arm0"]["lift"] == lift(len(paid_treated), len(treated), len(paid_held), len(held))
    assert found["funnel"]["entered"] == len(users)
    assert found["funnel"]["converted"] == {
        "acted": len(payers), "reach": len(paid_treated), "click": len(clicked_paid)
    }  # fmt: skip
    assert (found["funnel"]["acted"], found["funnel"]["delivered"], found["funnel"]["clicked"]) == (
        len(treated), len(treated), len(clickers)
    )  # fmt: skip
    assert found["nodes"]["gift"]["acted"] == len(treated)
    await eventually(lambda: archive_stream.backlog(redis_client, LIVE_PARTITIONS), lambda left: left == 0, 15)
    replayed = await report(beacon, "/v1/reports/journeys/ab", source="archive")
    assert {key: replayed[key] for key in ("funnel", "nodes", "arms")} == {
        key: found[key] for key in ("funnel", "nodes", "arms")
    }


def test_lift_matches_newcombes_published_intervals() -> None:
    """Newcombe (1998), Table II, method 10 (hybrid score, no continuity correction), examples (a), (c), (e)."""
    for (a, m, b, n), (low, high) in (
        ((56, 70, 48, 80), (0.0524, 0.3339)),
        ((9, 10, 3, 10), (0.1705, 0.8090)),
        ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ):
        found = lift(a, m, b, n)
        assert found["ci95"] is not None
        assert [round(bound, 4) for bound in found["ci95"]] == [low, high], (a, m, b, n)
    assert lift(0, 0, 1, 2)["lift"] is None


async def test_bad_report_queries_are_refused(beacon: Beacon) -> None:
    status, body = await beacon.call("GET", "/v1/reports/rulesets/nope")
    assert status == 404, body
    await beacon.put_ruleset(CAMPAIGN)
    for params, path in (
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-02-01", "to": "2026-01-01"}, "from"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "from"),
        ({"by": "week"}, "by"),
        ({"format": "xml"}, "format"),
        ({"colour": "red"}, "colour"),
    ):
        status, body = await beacon.call("GET", "/v1/reports/rulesets/welcome", params=params)
        assert (status, body["error"]["path"]) == (422, path), (params, body)


CRASH_USERS = [f"c{n:04d}" for n in range(800)]


async def test_a_sigkill_mid_batch_neither_loses_nor_double_counts_a_conversion(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """Payments stream in (each request retried until acknowledged) while `beacon serve` is SIGKILLed twice,
    preferably mid-batch: every touched payer converts exactly once, in the counters and in the report."""
    env = beacon_env(redis_url, free_port(), LIVE_PARTITIONS, BEACON_RUN_CONNECTORS="false", BEACON_WORKER_BATCH="40")
    serve = BeaconProcess("serve", env, tmp_path, "serve")
    rng = random.Random(21)
    async with aiohttp.ClientSession() as session:
        try:
            serve.start()
            await wait_healthy(serve, session)
            client = ServeClient(session, serve.port)
            status, body = await client.call("PUT", "/v1/rulesets/welcome", json=CAMPAIGN)
            assert status == 200, body
            now = int(time.time() * 1000)
            follows = [event(user, "follow", now, coupon="OK") for user in CRASH_USERS]
            status, body = await client.call("POST", "/v1/events", json={"events": follows})
            assert status == 200, body
            await eventually(lambda: streams.backlog(redis_client, LIVE_PARTITIONS), lambda lag: lag == 0, 20)
            pays = [
                {**event(user, "pay", now + 1_000 + n, amount=1), "event_id": f"pay-{user}"}
                for n, user in enumerate(CRASH_USERS)
            ]

            producing = asyncio.create_task(client.post_until_acknowledged(pays, 40))
            kills = await kill9_and_restart(serve, redis_client, LIVE_PARTITIONS, rng, session)
            await asyncio.wait_for(producing, 60)
            await eventually(lambda: streams.backlog(redis_client, LIVE_PARTITIONS), lambda lag: lag == 0, 30)
            print(f"kills: {kills}")
            status, found = await client.call("GET", "/v1/reports/rulesets/welcome")
            assert status == 200, found
            assert found["funnel"]["triggered"] == len(CRASH_USERS)
            assert found["funnel"]["converted"] == {"acted": len(CRASH_USERS), "reach": 0, "click": 0}, kills
            assert found["funnel"]["revenue"]["acted"] == float(len(CRASH_USERS)), kills
        finally:
            serve.stop()
