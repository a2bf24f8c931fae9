"""Users, actions and dead letters in a real browser: a user's profile and trace, and a dead letter replayed
through the console until it is delivered (connectors on, a local provider refusing, then accepting)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, expect

from connectors.settings import HttpEndpoint
from tests.connectors.kit import fast_settings
from tests.console.conftest import open_console
from tests.harness import Beacon, eventually, running_beacon, server_settings

pytestmark = pytest.mark.console

KEY = "console-admin"
WELCOME = {
    "id": "welcome",
    "rules": [
        {
            "id": "on-follow",
            "when": {"event": "follow"},
            "then": [{"action": "tag", "add": ["welcomed"]}, {"action": "coupon", "coupon_id": "WELCOME-10"}],
        }
    ],
}


class CouponProvider:
    """The merchant's coupon API: refuses every coupon for good (400) until it is told to accept them."""

    def __init__(self) -> None:
        self.accepting = False
        self.server = TestServer(web.Application(), host="127.0.0.1")
        self.server.app.router.add_post("/coupons", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        if not self.accepting:
            return web.json_response({"error": "unknown coupon"}, status=400)
        return web.json_response({"ok": True})


@pytest.fixture
async def provider() -> AsyncIterator[CouponProvider]:
    found = CouponProvider()
    await found.server.start_server()
    yield found
    await found.server.close()


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis, provider: CouponProvider) -> AsyncIterator[Beacon]:
    connectors = msgspec.structs.replace(
        fast_settings(), coupon=HttpEndpoint(str(provider.server.make_url("/coupons")))
    )
    settings = server_settings(
        redis_url,
        run_connectors=True,
        connectors=connectors,
        api_keys={KEY: frozenset({"rules", "events", "admin"})},
    )
    async with running_beacon(settings, api_key=KEY) as running:
        yield running


async def coupon_status(beacon: Beacon) -> str:
    return next((a["status"] for a in await beacon.actions("alice") if a["type"] == "coupon"), "none")


async def test_a_user_s_profile_and_trace_and_a_dead_letter_replayed(
    beacon: Beacon, browser: Browser, provider: CouponProvider
) -> None:
    await beacon.put_ruleset(WELCOME)
    status, body = await beacon.call("PATCH", "/v1/users/alice", json={"attrs": {"region": "SH"}})
    assert status == 200, body
    status, body = await beacon.post_events([{"user_id": "alice", "type": "follow"}])
    assert status == 200, body
    # The provider refuses the coupon for good: it goes dead, listed among the dead letters.
    assert await eventually(lambda: coupon_status(beacon), lambda found: found == "dead") == "dead"

    console = await open_console(browser, beacon.url("").rstrip("/"))
    await console.sign_in(KEY)
    await console.page.get_by_role("link", name="Users").click()
    await console.page.get_by_label("User id").fill("alice")
    await console.page.get_by_label("User id").press("Enter")
    await expect(console.page.get_by_role("heading", name="User alice")).to_be_visible()
    await expect(console.page.get_by_role("list", name="Tags")).to_contain_text("welcomed")
    await expect(console.page.get_by_role("table", name="Profile attributes")).to_contain_text("SH")
    trace = console.page.get_by_test_id("trace-table")
    fired = trace.get_by_role("row").filter(has_text="welcome/on-follow").filter(has_text="fired")
    await expect(fired).to_contain_text("delivered")  # the tag
    await expect(fired).to_contain_text("dead")  # the coupon
    await console.screenshot("user")

    provider.accepting = True
    await console.page.get_by_role("link", name="Dead letters").click()
    table = console.page.get_by_test_id("dead-letters-table")
    await expect(table).to_contain_text("alice")
    await console.screenshot("dead-letters")
    await table.get_by_role("checkbox").first.check()
    await console.page.get_by_role("button", name="Replay selected (1)").click()
    await expect(console.page.get_by_test_id("replay-outcome")).to_contain_text("Replayed 1, refused 0")
    await expect(console.page.get_by_text("No dead letters.")).to_be_visible()
    assert await eventually(lambda: coupon_status(beacon), lambda found: found == "delivered") == "delivered"

    await console.page.get_by_role("link", name="Actions").click()
    rows = console.page.get_by_test_id("actions-table").get_by_role("row").filter(has_text="coupon")
    await expect(rows).to_contain_text("delivered")
    await console.screenshot("actions")
    assert console.errors == []
