"""Injectable clocks: the core asks a Clock for 'now' so tests can drive time without sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Source of wall-clock time in milliseconds since the epoch."""

    def now_ms(self) -> int:
        """Current time, ms since the epoch."""
        ...


class SystemClock:
    """The real wall clock."""

    def now_ms(self) -> int:
        """Current wall-clock time in ms."""
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that only moves when told to; waiters on `changed` wake on every move."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms
        self.changed = asyncio.Event()

    def now_ms(self) -> int:
        """The time last set."""
        return self._now

    def set(self, now_ms: int) -> None:
        """Move the clock to `now_ms` (never backwards)."""
        self._now = max(self._now, now_ms)
        self.changed.set()
        self.changed = asyncio.Event()

    def advance(self, delta_ms: int) -> None:
        """Move the clock forward by `delta_ms`."""
        self.set(self._now + delta_ms)
