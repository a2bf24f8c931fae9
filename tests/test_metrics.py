"""The metrics issue 14 asked for, on the real app over real sockets and a real Redis; the exposition passes
`promtool check metrics`, and the Grafana dashboard and alert rules in deploy/ name only metrics that exist."""

from __future__ import annotations

import asyncio
import json
import platform
import re
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from beacon import services
from cep import outbox, streams
from cep.events import Event, partition_of
from cep.timers import timers_key
from connectors.consumer import GROUP
from tests.connectors.kit import PARTITIONS, fast_settings, put_actions, record, wait_status
from tests.connectors.providers import FakeMerchant
from tests.harness import Beacon, eventually, running_beacon, server_settings

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "beacon.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not on PATH (Debian's prometheus package ships it; .ci/run installs it)"
)
Labels = frozenset[tuple[str, str]]


@pytest.fixture(autouse=True)
def fast_gauges(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Gauges read from Redis every 50 ms instead of every 2 s, so a test sees them change at once."""
    monkeypatch.setattr(services, "LAG_EVERY_S", 0.05)
    yield


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    """A server without workers or connectors: nothing moves unless the test moves it."""
    async with running_beacon(server_settings(redis_url, run_workers=False)) as running:
        yield running


@pytest.fixture
async def merchant() -> AsyncIterator[FakeMerchant]:
    """A merchant API on loopback that succeeds unless scripted otherwise (as in tests/connectors)."""
    server = await FakeMerchant().start()
    yield server
    await server.close()


async def scrape(beacon: Beacon) -> str:
    """The server's /metrics text."""
    status, text = await beacon.call("GET", "/metrics")
    assert status == 200
    return str(text)


def samples(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value (None: not in the exposition)."""
    return samples(text).get((name, frozenset(labels.items())))


async def wait_value(beacon: Beacon, name: str, expected: float, **labels: str) -> float | None:
    """Scrape until the sample has `expected` (the gauges are read from Redis in the background)."""

    async def probe() -> float | None:
        return value(await scrape(beacon), name, **labels)

    return await eventually(probe, lambda found: found == expected)


async def test_http_requests_count_under_their_route_template_and_status(beacon: Beacon) -> None:
    """Before: no HTTP metrics at all. The raw path (which holds ids) must never become a label."""
    before = await scrape(beacon)
    route = "/v1/rulesets/{id}"

    def requests(text: str, path: str, method: str, status: str) -> float:
        return value(text, "beacon_http_requests_total", route=path, method=method, status=status) or 0.0

    def timed(text: str, path: str, method: str) -> float:
        return value(text, "beacon_http_request_duration_seconds_count", route=path, method=method) or 0.0

    assert (await beacon.call("GET", "/v1/rulesets/no-such-ruleset-7"))[0] == 404
    assert (await beacon.call("GET", "/v1/rulesets/no-such-ruleset-8"))[0] == 404
    assert (await beacon.call("GET", "/no/such/path/9"))[0] == 404
    assert (await beacon.call("PROPFIND", "/v1/rulesets"))[0] == 405
    after = await scrape(beacon)
    assert requests(after, route, "GET", "404") == requests(before, route, "GET", "404") + 2
    assert timed(after, route, "GET") == timed(before, route, "GET") + 2
    assert requests(after, "unmatched", "GET", "404") == requests(before, "unmatched", "GET", "404") + 1
    # A method outside the usual set (the parser knows ~30, WebDAV's too) is "other": fewer series. No route
    # takes it, so it is unmatched too (aiohttp does not say which resource refused the method).
    assert requests(after, "unmatched", "other", "405") == requests(before, "unmatched", "other", "405") + 1
    routes = {dict(labels)["route"] for name, labels in samples(after) if name == "beacon_http_requests_total"}
    assert not [r for r in routes if "no-such" in r or "/no/" in r], routes
    # The scrape that showed `before` was itself counted, under its own route.
    assert requests(after, "/metrics", "GET", "200") >= 1


def fresh_ms() -> int:
    """A record's time: now, so that the connectors do not skip it as stale (docs/connectors.md)."""
    return int(time.time() * 1000)


async def test_deliveries_carry_their_reason_and_dead_letters_are_a_gauge(
    redis_url: str, redis_client: aioredis.Redis, merchant: FakeMerchant
) -> None:
    """Before: deliveries had no reason label, and nothing showed how many actions were dead-lettered."""
    settings = server_settings(redis_url, run_workers=False, run_connectors=True, connectors=fast_settings(merchant))
    merchant.script.append("400")
    coupon = record("dl-metrics", "coupon", {"coupon_id": "C-7"}, fresh_ms())
    sms = record("no-phone", "sms", {"template": "hello"}, fresh_ms())
    async with running_beacon(settings) as beacon:
        before = await scrape(beacon)
        dead_before = value(
            before, "beacon_action_deliveries_total", connector="coupon", outcome="dead", reason="http_4xx"
        )
        await put_actions(redis_client, [coupon, sms])
        await wait_status(redis_client, coupon, {"dead"})
        await wait_status(redis_client, sms, {"skipped"}, reason="no_recipient")
        assert await wait_value(beacon, "beacon_dead_letter_entries", 1.0) == 1.0
        after = await scrape(beacon)
        dead = value(after, "beacon_action_deliveries_total", connector="coupon", outcome="dead", reason="http_4xx")
        assert dead == (dead_before or 0.0) + 1
        skipped = value(
            after, "beacon_action_deliveries_total", connector="sms", outcome="skipped", reason="no_recipient"
        )
        assert skipped is not None and skipped >= 1

        status, body = await beacon.call("POST", "/v1/dead-letters:replay", json={"all": True})
        assert status == 200 and body["replayed"] == [coupon["action_id"]], body
        await wait_status(redis_client, coupon, {"delivered"})
        # Replayed, it is no longer a dead letter: the gauge falls back.
        assert await wait_value(beacon, "beacon_dead_letter_entries", 0.0) == 0.0
        delivered = value(
            await scrape(beacon), "beacon_action_deliveries_total", connector="coupon", outcome="delivered", reason=""
        )
        assert delivered is not None and delivered >= 1


async def test_outbox_backlog_counts_unread_and_unacknowledged_entries(
    beacon: Beacon, redis_client: aioredis.Redis
) -> None:
    """Before: the outbox's backlog was invisible; a stopped connectors process showed no number growing."""
    records = [record(f"ob-{n}", "coupon", {"coupon_id": "C-1"}, fresh_ms()) for n in range(3)]
    await put_actions(redis_client, records)
    assert await wait_value(beacon, "beacon_outbox_backlog_entries", 3.0) == 3.0  # no consumer group yet
    partition = partition_of(records[0]["user_id"], PARTITIONS)
    key = outbox.outbox_key(partition)
    await streams.ensure_group(redis_client, key, GROUP)
    reply: Any = await redis_client.xreadgroup(GROUP, "test-consumer", {key: ">"}, count=1)
    ((entry_id, _),) = reply[0][1]
    assert await wait_value(beacon, "beacon_outbox_backlog_entries", 3.0) == 3.0  # read, not acknowledged
    await redis_client.xack(key, GROUP, entry_id)
    assert await wait_value(beacon, "beacon_outbox_backlog_entries", 2.0) == 2.0


async def test_stream_lag_seconds_is_the_age_of_the_oldest_uncommitted_entry(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Before: lag only in entries, which says nothing about how late processing is."""
    user = "lagging-user"
    partition = str(partition_of(user, PARTITIONS))
    idle = str(1 - int(partition))
    async with running_beacon(server_settings(redis_url, run_workers=False)) as beacon:
        await streams.append_events(redis_client, [Event("lag-1", user, "view", 1_700_000_000_000)], PARTITIONS)
        await asyncio.sleep(0.4)

        async def probe() -> float:
            return value(await scrape(beacon), "beacon_stream_lag_seconds", partition=partition) or 0.0

        waited = await eventually(probe, lambda age: age >= 0.4)
        assert 0.4 <= waited < 30, waited
        assert value(await scrape(beacon), "beacon_stream_lag_seconds", partition=idle) == 0.0
    # Workers commit the entry: nothing waits any more.
    async with running_beacon(server_settings(redis_url)) as beacon:
        assert await wait_value(beacon, "beacon_stream_lag_seconds", 0.0, partition=partition) == 0.0


async def test_build_info_health_and_the_process_and_platform_collectors(beacon: Beacon) -> None:
    """Before: no build info, no process CPU or memory, no Python version in the scrape."""
    text = await scrape(beacon)
    info = [labels for name, labels in samples(text) if name == "beacon_build_info"]
    assert len(info) == 1, info
    labels = dict(info[0])
    assert labels["python"] == platform.python_version() and re.fullmatch(r"\d+\.\d+.*", labels["version"])
    assert value(text, "beacon_build_info", **labels) == 1.0
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert (value(text, name) or 0) > 0, name
    assert any(name == "python_info" for name, _ in samples(text))
    assert await wait_value(beacon, "beacon_health_problems", 0.0) == 0.0


async def run_promtool(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
    """promtool's exit code and its stdout and stderr together."""
    assert PROMTOOL is not None
    process = await asyncio.create_subprocess_exec(
        PROMTOOL,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def busy_scrape(beacon: Beacon, redis_client: aioredis.Redis) -> str:
    """A scrape after traffic that fills the labelled series: an ingest, a 404, an outbox entry."""
    await beacon.post_events([{"user_id": "u-lint", "type": "view"}])
    await beacon.call("GET", "/v1/rulesets/none")
    await put_actions(redis_client, [record("u-lint", "coupon", {"coupon_id": "C-1"}, fresh_ms())])
    await wait_value(beacon, "beacon_outbox_backlog_entries", 1.0)
    return await scrape(beacon)


@needs_promtool
async def test_a_live_scrape_passes_promtool_check_metrics(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    """promtool lints the exposition (counters end in _total, base units, no abbreviations...): no problem."""
    code, out = await run_promtool("check", "metrics", stdin=(await busy_scrape(beacon, redis_client)).encode())
    assert (code, out.strip()) == (0, ""), out


@needs_promtool
async def test_the_alert_rules_and_the_dashboard_queries_parse(tmp_path: Path) -> None:
    """`promtool check rules` on deploy/prometheus/alerts.yml, and on the dashboard's queries made into rules
    (Grafana's variables replaced by values) so a broken panel query fails here, not on a wall screen."""
    code, out = await run_promtool("check", "rules", str(ALERTS))
    assert code == 0, out
    rules = "".join(
        f"      - record: beacon:dashboard_query_{n}\n        expr: {json.dumps(expr)}\n"
        for n, expr in enumerate(_grafana_queries(), 1)
    )
    queries = tmp_path / "dashboard_queries.yml"
    queries.write_text(f"groups:\n  - name: dashboard\n    rules:\n{rules}")
    code, out = await run_promtool("check", "rules", str(queries))
    assert code == 0, out


async def test_the_dashboard_and_alert_rules_name_only_metrics_a_live_scrape_has(
    beacon: Beacon, redis_client: aioredis.Redis
) -> None:
    """Every metric the dashboard and the alert rules refer to is in a scrape (or is Prometheus's own `up`),
    so a renamed metric cannot leave a panel empty or an alert silent."""
    exposed = set()
    for family in text_string_to_metric_families(await busy_scrape(beacon, redis_client)):
        exposed.update(sample.name for sample in family.samples)
        if family.type == "histogram":  # a series with no observation yet still has these names
            exposed.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
        if family.type == "counter":
            exposed.add(f"{family.name}_total")
        if family.type == "gauge":  # a labelled gauge without a child yet (no journey) has no sample
            exposed.add(family.name)
    alert_text = ALERTS.read_text()
    named = {
        "dashboard": {name for query in _grafana_queries() for name in _metric_names(query)},
        "alerts": _metric_names(alert_text),
    }
    assert len(named["dashboard"]) >= 15 and len(named["alerts"]) >= 5, named
    for where, names in named.items():
        assert not sorted(names - exposed), f"{where} names metrics no scrape has: {sorted(names - exposed)}"
    assert re.search(r"\bup\{", alert_text)


def _grafana_queries() -> list[str]:
    """The dashboard's panel queries and variable queries, with Grafana's variables given values."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queries += [
        variable["definition"].removeprefix("label_values(").rsplit(",", 1)[0]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    values = {"$__rate_interval": "5m", "$job": "beacon", "$instance": ".*"}
    return [re.sub(r"\$\w+", lambda m: values[m.group(0)], query) for query in queries]


def _metric_names(text: str) -> set[str]:
    """Names with our prefixes or the client library's (process_, python_) in PromQL or rule text."""
    return set(re.findall(r"\b(?:beacon|process|python)_[a-z0-9_]+\b", text))


async def test_pending_timers_counts_the_timer_sets(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    """Before: `beacon_pending_timers` was declared but never set, so it always read 0."""
    await redis_client.zadd(timers_key(0), {"d\x1fu1\x1fa1\x1frs": 9_999_999_999_999, "d\x1fu2\x1fa2\x1frs": 1})
    await redis_client.zadd(timers_key(1), {"d\x1fu3\x1fa3\x1frs": 9_999_999_999_999})
    assert await wait_value(beacon, "beacon_pending_timers", 3.0) == 3.0  # over every partition
    await redis_client.zrem(timers_key(0), "d\x1fu2\x1fa2\x1frs")
    assert await wait_value(beacon, "beacon_pending_timers", 2.0) == 2.0
