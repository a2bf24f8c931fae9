"""A console page with 10,000 rulesets (and a 10,000-user audience) renders its first page in under a second."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, expect

from rules.store import RulesetStore
from tests.console.conftest import MEASURED, Console, open_console
from tests.harness import Beacon, running_beacon, server_settings

pytestmark = pytest.mark.console

COUNT = 10_000
# Measured from the navigation's start to the first page of rows on screen: the page, its scripts, the API call
# for the first page (the server reads the 10,000 ids, then only that page's 50 documents) and the render. The
# issue's target is 1 s. When the API listed all 10,000 in one reply (the server reading every document), an
# idle 2-vCPU machine took about 0.5 s, and 1.5 s shared with other jobs (load 6); a page at a time, a shared
# 2-vCPU machine (load 2) takes about 0.2 s, of which the API call 15 ms. The assertion allows 2.5 s for the median
# of three loads, and the figure is printed with the API's share. Pagination itself is checked exactly: one page
# of rows in the DOM, not 10,000.
TARGET_MS = 1000.0
API_SHARE: list[float] = []  # of each load: how long its API call took, start to last byte
BOUND_MS = 2500.0


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    # No workers: nothing here processes events, and each would compile the 10,000 rulesets for nothing.
    async with running_beacon(server_settings(redis_url, run_workers=False)) as running:
        yield running


async def rendered_ms(console: Console, route: str, done: str) -> float:
    """Milliseconds from the start of a fresh page load of `route` until `done` (a JS condition) holds."""
    # A new query string makes it a real navigation (a changed hash alone would not reload the page).
    await console.page.goto(f"{console.base}/console/?measure={route}#/{route}")
    handle = await console.page.wait_for_function(f"() => ({done}) ? performance.now() : null", polling="raf")
    rendered = float(await handle.json_value())
    api_ms = await console.page.evaluate(
        "Math.max(0, ...performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('/v1/')).map(e => e.responseEnd - e.fetchStart))"
    )
    API_SHARE.append(float(api_ms))
    return rendered


async def median_ms(console: Console, route: str, done: str) -> list[float]:
    """Three fresh loads' times (the median is judged: one slow load on a busy CI machine is noise)."""
    return [await rendered_ms(console, route, done) for _ in range(3)]


def report(what: str, times: list[float]) -> None:
    """Print the figures and keep them for the run's summary."""
    each = ", ".join(f"{time:.0f}" for time in times)
    api_ms = statistics.median(API_SHARE[-len(times) :])
    median = statistics.median(times)
    verdict = "within" if median < TARGET_MS else "over"
    line = (
        f"console: {what}: first page rendered in {median:.0f} ms (median of {each} ms, of which the API call"
        f" {api_ms:.0f} ms; {verdict} the 1 s target)"
    )
    MEASURED.append(line)
    print(line)


async def test_ten_thousand_rulesets_and_users_render_a_page_in_under_a_second(
    beacon: Beacon, browser: Browser, redis_client: aioredis.Redis
) -> None:
    store = RulesetStore(redis_client)
    document = {"rules": [{"id": "r", "when": {"event": "pay"}, "then": [{"action": "tag", "add": ["payer"]}]}]}
    for start in range(0, COUNT, 50):  # within the client's connection pool
        await asyncio.gather(
            *(store.put(f"rs-{n:05d}", {"id": f"rs-{n:05d}", **document}, 0) for n in range(start, start + 50))
        )
    ids = [f"user-{n:05d}" for n in range(COUNT)]
    status, body = await beacon.call("PUT", "/v1/audiences/everyone", json={"ids": ids})
    assert status == 200 and body["size"] == COUNT, body

    console = await open_console(browser, beacon.url("").rstrip("/"))
    await console.sign_in()
    # Signing in lands on the rulesets: let that listing finish, or the first measured load would queue behind it.
    await expect(console.page.get_by_test_id("pager-range")).to_have_text(f"1–50 of {COUNT}")
    pager = "document.querySelector('[data-testid=pager-range]')"
    rulesets = await median_ms(console, "rulesets", f"{pager}?.textContent === '1–50 of {COUNT}'")
    await expect(console.page.get_by_role("link", name="rs-00000")).to_be_visible()
    assert await console.page.get_by_test_id("rulesets-table").locator("tbody tr").count() == 50
    await console.screenshot("rulesets-10k")
    report("10,000 rulesets", rulesets)
    assert statistics.median(rulesets) < BOUND_MS, rulesets
    # The next page and back, and a filter, each one request for one page.
    table = console.page.get_by_test_id("rulesets-table")
    await console.page.get_by_role("button", name="Next").click()
    await expect(console.page.get_by_test_id("pager-range")).to_have_text(f"51–100 of {COUNT}")
    await expect(table.locator("tbody tr").first).to_contain_text("rs-00050")
    await console.page.get_by_role("button", name="Previous").click()
    await expect(table.locator("tbody tr").first).to_contain_text("rs-00000")
    await console.page.get_by_label("Filter by id").fill("RS-0999")
    await expect(console.page.get_by_test_id("pager-range")).to_have_text("1–10 of 10")
    await expect(table.locator("tbody tr").first).to_contain_text("rs-09990")

    # The users of a 10,000-member audience, a page at a time by the API's cursor.
    rows = "document.querySelectorAll('[data-testid=members-table] tbody tr').length"
    users = await median_ms(
        console, "users?from=aud:everyone", f"{rows} > 0 && {pager}?.textContent.endsWith('of {COUNT}')"
    )
    await console.screenshot("users-10k")
    report("a 10,000-user audience", users)
    assert statistics.median(users) < BOUND_MS, users
    assert console.errors == []
