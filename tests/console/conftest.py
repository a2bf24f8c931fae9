"""Browser fixtures: Debian's chromium driven headless by Playwright against the real app on a real socket.

The tests skip, saying why, only when chromium is absent; CI (`.ci/run`) installs it, and Playwright comes
with the `test` extra.
Screenshots go to `.console-artifacts/` at the repository root (or `CONSOLE_TEST_ARTIFACTS`), printed at the
end of the run with the render timings the tests measured.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

# Not BEACON_* names: settings refuse BEACON_* variables that no part of the server reads.
CHROMIUM = os.environ.get("CONSOLE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("CONSOLE_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / ".console-artifacts")
# Expectations wait up to 15 s, as page actions do (set in `open_console`): Playwright's 5 s default is short on
# a CI machine busy with the server, Redis and chromium at once.
expect.set_options(timeout=15_000)
# What the tests measured, printed in the terminal summary (a figure only the log would otherwise show).
MEASURED: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Where the screenshots are, and the render times."""
    if ARTIFACTS.is_dir() and any(ARTIFACTS.glob("*.png")):
        terminalreporter.write_line(f"console screenshots: {ARTIFACTS}")
    for line in MEASURED:
        terminalreporter.write_line(line)


def chromium_installed() -> bool:
    """Whether the browser the tests drive is there."""
    return Path(CHROMIUM).is_file()


def artifact(name: str) -> Path:
    """Where the screenshot `name` goes (the directory is made on first use)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{name}.png"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless chromium (Debian's: Playwright's own browsers are never downloaded)."""
    if not chromium_installed():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Console:
    """One browser tab on a running server's console."""

    page: Page
    base: str
    errors: list[str] = field(default_factory=list)

    def url(self, route: str = "") -> str:
        """The console's URL for a hash route (`rulesets/x`)."""
        return f"{self.base}/console/#/{route}"

    async def sign_in(self, key: str = "") -> None:
        """Sign in through the form, as a user would."""
        await self.page.goto(f"{self.base}/console/")
        await self.page.get_by_label("API key").fill(key)
        await self.page.get_by_role("button", name="Sign in").click()
        await self.page.get_by_role("navigation", name="Sections").wait_for()

    async def open(self, route: str) -> None:
        """Go to a hash route of the signed-in console."""
        await self.page.goto(self.url(route))

    async def screenshot(self, name: str) -> Path:
        """Save the page as `<name>.png` among the artifacts."""
        path = artifact(name)
        await self.page.screenshot(path=str(path), full_page=True)
        return path


async def open_console(browser: Browser, base: str) -> Console:
    """A 1280 px wide tab (the width the console is laid out for) that records the page's script errors."""
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    # Waits the tests make are expectations with deadlines (Playwright's auto-waiting), never sleeps.
    page.set_default_timeout(15_000)
    console = Console(page, base)
    page.on("pageerror", lambda error: console.errors.append(str(error)))
    return console
