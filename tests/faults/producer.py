"""A steady HTTP producer and a /healthz watcher for the fault suite: what a client saw while Redis misbehaved.

The producer posts a batch of `pay` events at a fixed pace, whatever happens to earlier batches, and resends
each batch with the same event ids until it is acknowledged, as operations.md tells clients to: after a 503
(waiting its Retry-After), a timeout or a dropped connection. Anything else (a 500, a 503 without
Retry-After, an item refused) is recorded as a fault of the server, and resent too so the run can finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# Longer than the health check's own 2 s PING, shorter than a fault: a hung Redis shows as retries.
REQUEST_TIMEOUT_S = 2.5
RETRY_PAUSE_S = 0.2  # after a timeout or a dropped connection (no Retry-After to follow)
MAX_RETRY_AFTER_S = 1.0  # the server says "1"; a bound keeps a wrong header from stalling the run


@dataclass
class Batch:
    """One request's events, when it was first sent and when it was acknowledged."""

    events: list[dict[str, Any]]
    first_sent: float
    acked_at: float | None = None
    sends: int = 0


@dataclass
class SteadyProducer:
    """Posts `batch` events every `batch / rate` seconds to `POST /v1/events` until stopped."""

    base_url: str
    session: aiohttp.ClientSession
    users: int = 40
    rate: float = 200.0  # events per second
    batch: int = 10
    batches: list[Batch] = field(default_factory=list)
    replies: Counter[str] = field(default_factory=Counter)  # "200", "503", "timeout", "connection", ...
    server_faults: list[str] = field(default_factory=list)
    _sending: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event produced so far."""
        return [event for batch in self.batches for event in batch.events]

    @property
    def acked(self) -> int:
        """Events acknowledged so far."""
        return sum(len(batch.events) for batch in self.batches if batch.acked_at is not None)

    @property
    def resends(self) -> int:
        """Requests sent again because the first (or a later) one got no ack."""
        return sum(batch.sends - 1 for batch in self.batches if batch.sends)

    async def run(self, stop: asyncio.Event) -> None:
        """Produce at a steady pace until `stop`, then wait until every batch is acknowledged."""
        interval = self.batch / self.rate
        started = time.monotonic()
        while not stop.is_set():
            index = len(self.batches)
            first = index * self.batch
            events = [
                {"event_id": f"f{n}", "user_id": f"u{n % self.users}", "type": "pay", "attrs": {"amount": 1}}
                for n in range(first, first + self.batch)
            ]
            batch = Batch(events, time.monotonic())
            self.batches.append(batch)
            task = asyncio.create_task(self._deliver(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
            # A fixed schedule, not "sleep after each send": a hung request does not slow the producer down.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(started + (index + 1) * interval - time.monotonic(), 0))
        while self._sending:
            await asyncio.gather(*self._sending)

    async def cancel(self) -> None:
        """Abandon the batches still being sent (when a test fails)."""
        for task in list(self._sending):
            task.cancel()
        for task in list(self._sending):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _deliver(self, batch: Batch) -> None:
        ids = [event["event_id"] for event in batch.events]
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        while True:
            batch.sends += 1
            pause = RETRY_PAUSE_S
            try:
                async with self.session.post(
                    f"{self.base_url}/v1/events", json={"events": batch.events}, timeout=timeout
                ) as response:
                    status = response.status
                    body = await response.json(content_type=None)
                    retry_after = response.headers.get("Retry-After")
            except TimeoutError:
                self.replies["timeout"] += 1
            except aiohttp.ClientError:
                self.replies["connection"] += 1
            else:
                self.replies[str(status)] += 1
                if status == 200 and body.get("accepted") == ids and not body.get("errors"):
                    batch.acked_at = time.monotonic()
                    return
                if status == 503 and retry_after is not None:
                    pause = min(float(retry_after), MAX_RETRY_AFTER_S)
                else:
                    self.server_faults.append(f"{status} Retry-After={retry_after}: {str(body)[:300]}")
            await asyncio.sleep(pause)


@dataclass
class HealthWatch:
    """Polls a process's /healthz and keeps every answer: (monotonic time, HTTP status or 0 for no answer)."""

    url: str
    session: aiohttp.ClientSession
    every_s: float = 0.1
    answers: list[tuple[float, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop`."""
        # Longer than the check's PING timeout (2 s): a hung Redis must show as 503, not as no answer.
        timeout = aiohttp.ClientTimeout(total=4)
        while not stop.is_set():
            try:
                async with self.session.get(self.url, timeout=timeout) as response:
                    status = response.status
                    body = await response.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError):
                status, body = 0, {}
            self.answers.append((time.monotonic(), status))
            for problem in body.get("problems") or ():
                if problem not in self.problems:
                    self.problems.append(problem)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)

    def unhealthy_between(self, start: float, end: float) -> bool:
        """Whether a 503 was answered in the window."""
        return any(status == 503 for at, status in self.answers if start <= at <= end)

    def healthy_again_after(self, lifted: float) -> float | None:
        """Seconds from `lifted` to the first 200 that follows the last 503 (None: not healthy again)."""
        last_bad = max((at for at, status in self.answers if status != 200), default=lifted)
        good = [at for at, status in self.answers if status == 200 and at > max(last_bad, lifted)]
        return round(good[0] - lifted, 2) if good else None
