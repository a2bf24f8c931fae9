"""The rulesets pages in a real browser: a validation error shown at its path, fixed and saved, a dry-run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, expect

from tests.console.conftest import Console, open_console
from tests.harness import Beacon, running_beacon, server_settings

pytestmark = pytest.mark.console

KEY = "console-key"
BROKEN = {
    "description": "Carted and did not pay",
    "rules": [
        {
            "id": "cart-no-pay",
            "when": {"absence": {"first": {"event": "add_to_cart"}, "missing": {"event": "pay"}, "within": "30x"}},
            "then": [{"action": "tag", "add": ["cart_abandoner"]}],
        }
    ],
}
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    settings = server_settings(redis_url, api_keys={KEY: frozenset({"rules", "events", "admin"})})
    async with running_beacon(settings, api_key=KEY) as running:
        yield running


async def replace_editor_text(console: Console, text: str) -> None:
    """Select everything in the CodeMirror editor and type `text` over it, as a paste would."""
    editor = console.page.get_by_role("textbox", name="ruleset document (JSON)")
    await editor.click()
    await console.page.keyboard.press("Control+A")
    await console.page.keyboard.insert_text(text)


async def test_a_validation_error_shows_at_its_path_then_the_fixed_ruleset_saves_and_dry_runs(
    beacon: Beacon, browser: Browser
) -> None:
    console = await open_console(browser, beacon.url("").rstrip("/"))
    await console.sign_in(KEY)
    await console.open("rulesets")
    await console.page.get_by_role("link", name="New ruleset").click()
    await console.page.get_by_label("Id of the new ruleset").fill("cart-no-pay")

    # Completion from the language's JSON Schema: the keys a rule's `when` may hold, where the cursor is.
    head, tail = '{"rules": [{"id": "r", "when": {', "}}]}"
    await replace_editor_text(console, head + tail)
    for _ in tail:
        await console.page.keyboard.press("ArrowLeft")
    await console.page.keyboard.press("Control+Space")
    completions = console.page.locator(".cm-tooltip-autocomplete")
    for key in ('"absence"', '"sequence"', '"threshold"', '"event"'):
        await expect(completions).to_contain_text(key)
    await console.page.keyboard.press("Escape")

    await replace_editor_text(console, json.dumps(BROKEN, indent=2))
    await console.page.get_by_role("button", name="Save").click()

    # The server's 422 names the path; the editor underlines the value there and the list names it.
    errors = console.page.get_by_test_id("validation-errors")
    await expect(errors).to_contain_text("rules[0].when.absence.within")
    await expect(errors).to_contain_text("is not a duration")
    underlined = console.page.locator(".cm-lintRange-error")
    await expect(underlined.first).to_have_text('"30x"')
    await console.screenshot("rulesets-validation-error")

    fixed = json.dumps(BROKEN, indent=2).replace('"30x"', '"30m"')
    await replace_editor_text(console, fixed)
    await console.page.get_by_role("button", name="Save").click()
    await expect(console.page.get_by_role("heading", name="Ruleset cart-no-pay")).to_be_visible()
    status, stored = await beacon.call("GET", "/v1/rulesets/cart-no-pay")
    assert status == 200 and stored["document"]["rules"][0]["when"]["absence"]["within"] == "30m", stored

    await console.page.get_by_role("tab", name="Dry-run").click()
    events = [
        {"user_id": "u1", "type": "add_to_cart", "ts": T0},
        {"user_id": "u2", "type": "add_to_cart", "ts": T0},
        {"user_id": "u2", "type": "pay", "ts": T0 + 60_000},
    ]
    await console.page.get_by_label("Events").fill(json.dumps(events))
    await console.page.get_by_role("button", name="Run dry-run").click()
    result = console.page.get_by_test_id("dry-run-result")
    # u1 never paid: the absence fires 30 minutes (and the lateness) after the cart; u2 paid in time.
    await expect(result.get_by_role("heading")).to_have_text("1 firing")
    await expect(result.get_by_role("cell", name="u1", exact=True)).to_be_visible()
    await expect(result.get_by_role("cell", name="cart-no-pay", exact=True)).to_be_visible()
    await expect(console.page.get_by_test_id("timeline").locator("canvas")).to_be_visible()
    await console.screenshot("rulesets-dry-run")

    # The backtest counts what the dry-run lists: per rule and per day.
    await console.page.get_by_role("button", name="Backtest (counts)").click()
    backtest = console.page.get_by_test_id("backtest-result")
    await expect(backtest.get_by_role("heading")).to_have_text("Backtest over 3 events of 2 users: 1 firing")
    await expect(backtest.get_by_role("row").filter(has_text="cart-no-pay")).to_contain_text("tag: 1")
    await expect(console.page.get_by_test_id("backtest-chart").locator("canvas")).to_be_visible()
    await console.screenshot("rulesets-backtest")

    # A second version, compared with the first: the changed value is marked on both sides.
    await console.page.get_by_role("tab", name="Edit").click()
    await replace_editor_text(console, fixed.replace('"30m"', '"45m"'))
    await console.page.get_by_role("button", name="Save").click()
    await expect(console.page.get_by_role("tab", name="Versions (2)")).to_be_visible()
    await console.page.get_by_role("tab", name="Versions (2)").click()
    await expect(console.page.locator(".cm-merge-a .cm-changedLine")).to_contain_text('"30m"')
    await expect(console.page.locator(".cm-merge-b .cm-changedLine")).to_contain_text('"45m"')
    await console.screenshot("rulesets-versions")

    await console.open("rulesets")
    await expect(console.page.get_by_test_id("pager-range")).to_have_text("1–1 of 1")
    await console.screenshot("rulesets-list")
    assert console.errors == []
