"""Fixtures for connector tests: the fake providers on loopback, a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from beacon.clock import ManualClock
from tests.connectors.providers import FakeMerchant, FakeWeChat


@pytest.fixture
async def merchant() -> AsyncIterator[FakeMerchant]:
    """A merchant / gateway API that succeeds unless told otherwise."""
    server = await FakeMerchant().start()
    yield server
    await server.close()


@pytest.fixture
async def wechat() -> AsyncIterator[FakeWeChat]:
    """A WeChat / WeCom API with valid credentials matching `fast_settings`."""
    server = await FakeWeChat().start()
    yield server
    await server.close()


@pytest.fixture
def clock() -> ManualClock:
    """Time that moves only when a test moves it (2023-11-14 22:13:20 UTC at the start)."""
    return ManualClock()
