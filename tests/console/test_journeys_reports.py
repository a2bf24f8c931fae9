"""Journeys, reports, segments and plans in a real browser: a journey's graph with its live counts, a report's
funnel chart, a plan's runs, a segment's estimate; the keyboard path through sign-in; the /docs page."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, expect

from tests.console.conftest import open_console
from tests.harness import Beacon, eventually, running_beacon, server_settings

pytestmark = pytest.mark.console

KEY = "console-key"
JOURNEY = {
    "id": "onboarding",
    "entry": {"event": "signup"},
    "start": "welcome",
    "nodes": {
        "welcome": {"do": [{"action": "tag", "add": ["welcomed"]}], "next": "vip?"},
        "vip?": {"branch": [{"if": {"profile": "tier", "op": "==", "value": "gold"}, "next": "gift"}], "else": "wait"},
        "gift": {"do": [{"action": "tag", "add": ["gifted"]}]},
        "wait": {"wait": "1d", "next": "nudge"},
        "nudge": {"do": [{"action": "tag", "add": ["nudged"]}]},
    },
}
SEGMENT = {"where": {"tag": "welcomed"}}


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    settings = server_settings(redis_url, api_keys={KEY: frozenset({"rules", "events", "admin"})})
    async with running_beacon(settings, api_key=KEY) as running:
        yield running


async def ok(beacon: Beacon, method: str, path: str, body: Any) -> Any:
    status, answer = await beacon.call(method, path, json=body)
    assert status == 200, answer
    return answer


async def test_a_journey_s_graph_counts_and_its_report_s_funnel(beacon: Beacon, browser: Browser) -> None:
    await ok(beacon, "PUT", "/v1/journeys/onboarding", JOURNEY)
    await ok(beacon, "PATCH", "/v1/users/ann", {"attrs": {"tier": "gold"}})
    await ok(beacon, "POST", "/v1/events", {"events": [{"user_id": u, "type": "signup"} for u in ("ann", "bo", "cy")]})

    async def stats() -> Any:
        return (await beacon.call("GET", "/v1/journeys/onboarding/stats"))[1]

    counted = await eventually(stats, lambda body: body["versions"].get("1", {}).get("journey", {}).get("entered") == 3)
    assert counted["versions"]["1"]["nodes"]["wait"]["waiting"] == 2, counted

    console = await open_console(browser, beacon.url("").rstrip("/"))
    # Keyboard only: the key field has the focus, Enter signs in, the first Tab reaches the skip link.
    await console.page.goto(console.url())
    await expect(console.page.get_by_label("API key")).to_be_focused()
    await console.page.keyboard.type(KEY)
    await console.page.keyboard.press("Enter")
    await console.page.get_by_role("navigation", name="Sections").wait_for()
    await console.page.keyboard.press("Tab")
    await expect(console.page.get_by_role("link", name="Skip to content")).to_be_focused()

    await console.page.get_by_role("link", name="Journeys").click()
    await console.page.get_by_role("link", name="onboarding").click()
    graph = console.page.get_by_test_id("journey-graph")
    await expect(graph.get_by_test_id("graph-node-welcome")).to_contain_text("entered 3")
    await expect(graph.get_by_test_id("graph-node-wait")).to_contain_text("waiting 2")
    await expect(graph.get_by_test_id("graph-node-gift")).to_contain_text("entered 1")
    await expect(graph).to_contain_text("arm0 (1)")
    await expect(graph).to_contain_text("else (2)")
    await console.screenshot("journey-graph")

    # A fourth user enters while the graph is open: the counts follow without a reload.
    await ok(beacon, "POST", "/v1/events", {"events": [{"user_id": "di", "type": "signup"}]})
    await expect(graph.get_by_test_id("graph-node-welcome")).to_contain_text("entered 4", timeout=15_000)

    await console.page.get_by_role("link", name="Reports").click()
    await console.page.get_by_label("Of").select_option("journeys")
    await console.page.get_by_label("Journey", exact=True).select_option("onboarding")
    numbers = console.page.get_by_test_id("funnel-numbers")
    await expect(numbers.get_by_test_id("stage-entered")).to_contain_text("4")
    report = (await beacon.call("GET", "/v1/reports/journeys/onboarding"))[1]
    for stage in ("acted", "delivered", "clicked"):
        await expect(numbers.get_by_test_id(f"stage-{stage}")).to_contain_text(str(report["funnel"][stage]))
    await expect(console.page.get_by_test_id("funnel-chart").locator("canvas")).to_be_visible()
    await expect(console.page.get_by_test_id("trend-chart").locator("canvas")).to_be_visible()
    await console.screenshot("report-funnel")
    assert console.errors == []


async def test_segments_plans_and_the_docs_page(beacon: Beacon, browser: Browser) -> None:
    await ok(beacon, "PUT", "/v1/rulesets/welcome", {"rules": [{"id": "w", "when": {"event": "follow"}, "then": [
        {"action": "tag", "add": ["welcomed"]}]}]})  # fmt: skip
    await ok(beacon, "PUT", "/v1/segments/welcomed", SEGMENT)
    await ok(beacon, "POST", "/v1/events", {"events": [{"user_id": u, "type": "follow"} for u in ("ann", "bo")]})
    await ok(beacon, "PUT", "/v1/audiences/vip", {"ids": ["ann", "bo", "cy"]})
    now = datetime.datetime.now(datetime.UTC).replace(second=0, microsecond=0)
    plan = {"audience": "aud:vip", "schedule": {"at": now.isoformat()}, "then": [{"action": "tag", "add": ["hi"]}]}
    await ok(beacon, "PUT", "/v1/plans/hello", plan)

    async def runs() -> Any:
        return (await beacon.call("GET", "/v1/plans/hello/runs"))[1]["runs"]

    assert [run["status"] for run in await eventually(runs, lambda found: found and found[0]["status"] == "done")] == [
        "done"
    ]

    console = await open_console(browser, beacon.url("").rstrip("/"))
    await console.sign_in(KEY)
    await console.page.get_by_role("link", name="Segments & plans").click()
    segments = console.page.get_by_test_id("segments-table")
    await expect(segments.get_by_role("row").filter(has_text="welcomed")).to_contain_text("2")
    await segments.get_by_role("button", name="Estimate segment welcomed").click()
    await expect(console.page.get_by_label('Condition (the segment language\'s "where")')).to_have_value(
        '{\n  "tag": "welcomed"\n}'
    )
    await console.page.get_by_role("button", name="Estimate", exact=True).click()
    await expect(console.page.get_by_test_id("estimate")).to_contain_text(
        "About 2 of 3 users (exact)"
    )  # cy exists: the plan tagged her
    await console.screenshot("segments")

    await console.page.get_by_role("tab", name="Audiences").click()
    await expect(console.page.get_by_test_id("audiences-table")).to_contain_text("vip")
    await console.page.get_by_role("tab", name="Plans").click()
    await console.page.get_by_role("link", name="hello").click()
    run_row = console.page.get_by_test_id("runs-table").get_by_role("row").nth(1)
    await expect(run_row).to_contain_text("done")
    await expect(run_row.get_by_role("cell").nth(2)).to_have_text("3")  # targeted
    await console.page.get_by_role("button", name="Estimate the audience now").click()
    await expect(console.page.get_by_test_id("plan-estimate")).to_contain_text("3 users now")
    await console.screenshot("plans")

    # /docs: the OpenAPI document as a page of its own, served locally, linked from the console's header.
    await console.page.get_by_role("link", name="API docs").click()
    await expect(console.page.get_by_role("heading", name="Beacon API 0.1.0")).to_be_visible()
    await expect(console.page.get_by_role("row").filter(has_text="/v1/rulesets:validate")).to_contain_text("rules")
    await console.screenshot("docs")
    assert console.errors == []
