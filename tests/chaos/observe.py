"""What the chaos test reads back from Redis and the provider stand-in, and how it waits: stream order as
appended, Redis kills and what they rolled back, settling, ledgers, pending absences, repeated POSTs."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from beacon.redis_server import EmbeddedRedis
from cep import ledger, streams, timers
from cep.evaluator import TIMER_SEPARATOR
from cep.events import Event
from tests.chaos.processes import progress_counts
from tests.chaos.trace import HOUR
from tests.connectors.providers import FakeMerchant


class StreamWatch:
    """Follows every partition stream as it grows: each user's event ids in the order first appended."""

    def __init__(self, redis: aioredis.Redis, partitions: int) -> None:
        self._redis = redis
        self._positions: dict[Any, Any] = {streams.events_key(p): "0-0" for p in range(partitions)}
        self.order: dict[str, list[str]] = defaultdict(list)
        self.seen: set[str] = set()
        self.copies = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Read until `stop`, then drain what is left; Redis restarts are waited out."""
        while True:
            stopping = stop.is_set()
            try:
                reply: Any = await self._redis.xread(self._positions, count=2_000, block=None if stopping else 100)
            except (RedisError, OSError):
                await asyncio.sleep(0.05)
                continue
            for key, entries in reply or ():
                for entry_id, fields in entries:
                    self._positions[key.decode() if isinstance(key, bytes) else key] = entry_id
                    for item in streams.decode_entry(fields):
                        if isinstance(item, Event):
                            self.copies += 1
                            if item.event_id not in self.seen:
                                self.seen.add(item.event_id)
                                self.order[item.user_id].append(item.event_id)
            if stopping and not reply:
                return


@dataclass
class RedisKill:
    """One Redis SIGKILL: the streams' counters (items appended, items committed) just before and after."""

    down_s: float
    before: tuple[int, int]
    after: tuple[int, int]

    @property
    def lost_appends(self) -> int:
        """Appended items Redis had answered for before the kill and no longer has after it."""
        return max(self.before[0] - self.after[0], 0)

    @property
    def lost_commits(self) -> int:
        """Committed items the restart rolled back (their batches are processed again)."""
        return max(self.before[1] - self.after[1], 0)


async def kill_redis(server: EmbeddedRedis, redis: aioredis.Redis, partitions: int, rng: random.Random) -> RedisKill:
    """SIGKILL Redis, keep it down a moment, restart it on its data dir and port (AOF replayed)."""
    before = await progress_totals(redis, partitions)
    server.kill()
    down_s = rng.uniform(0.2, 1.0)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(server.start)  # blocks until PING answers, i.e. the AOF is loaded
    return RedisKill(down_s, before, await progress_totals(redis, partitions))


async def progress_totals(redis: aioredis.Redis, partitions: int) -> tuple[int, int]:
    """(items appended, items committed) over all partitions; retried while a restart settles."""
    for _ in range(50):
        try:
            counts = await progress_counts(redis, list(range(partitions)))
            return sum(added for added, _ in counts), sum(done for _, done in counts)
        except (RedisError, OSError):
            await asyncio.sleep(0.1)
    raise AssertionError("redis did not answer for 5 s")


async def uncommitted(redis: aioredis.Redis, partitions: int) -> list[int]:
    """Partitions whose stream has an entry after the committed position (read from the positions themselves,
    not from the appended/committed counters, which the test checks separately)."""
    behind = []
    for partition in range(partitions):
        newest = await redis.xrevrange(streams.events_key(partition), count=1)
        committed, _ = await streams.progress(redis, partition)
        if newest and newest[0][0] != committed:
            behind.append(partition)
    return behind


async def settled(redis: aioredis.Redis, partitions: int, deadline: float) -> None:
    """Wait until every appended entry is committed and no timer is due before the trial deadlines, 1 s in a row."""
    quiet_since: float | None = None
    busy = "never polled"
    while time.monotonic() < deadline:
        try:
            behind = await uncommitted(redis, partitions)
            soon = time.time_ns() // 1_000_000 + HOUR
            due = sum([len((await timers.due(redis, p, soon, 1))[0]) for p in range(partitions)])
            busy = f"partitions with uncommitted entries {behind}, timers due within the hour: {due}"
            idle = not behind and not due
        except (RedisError, OSError) as exc:
            busy, idle = f"redis error {exc}", False
        if not idle:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 1.0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not settled: {busy}")


async def ledgers(redis: aioredis.Redis, partitions: int, users: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every user's ledger (records with their delivery status)."""
    return {user: await ledger.user_actions(redis, partitions, user, limit=10_000) for user in users}


async def delivered(
    redis: aioredis.Redis, partitions: int, users: list[str], deadline: float
) -> dict[str, list[dict[str, Any]]]:
    """Poll the ledgers until no action is on its way (pending, scheduled, delivering, failed)."""
    final = {"delivered", "dead", "skipped", "cancelled"}
    while True:
        books = await ledgers(redis, partitions, users)
        moving = [action for actions in books.values() for action in actions if action["status"] not in final]
        if not moving or time.monotonic() > deadline:
            return books
        await asyncio.sleep(0.2)


def trigger_of(trigger_id: str) -> str:
    """The reference's trigger for a ledger trigger id: an absence's `due:<state>:<A id>` is the A event's id."""
    return trigger_id.split(":", 2)[2] if trigger_id.startswith("due:") else trigger_id


async def pending_absences(redis: aioredis.Redis, partitions: int) -> tuple[set[tuple[str, str]], list[str]]:
    """The absence timers left, as (user, A event id), and any other timer (there should be none)."""
    absences, others = set(), []
    for partition in range(partitions):
        for raw in await redis.zrange(timers.timers_key(partition), 0, -1):
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            kind, user, *rest = member.split(TIMER_SEPARATOR)
            if kind == "a":
                absences.add((user, rest[-1]))
            else:
                others.append(member)
    return absences, others


def reposts(merchant: FakeMerchant) -> dict[str, int]:
    """POSTs of an effect the provider had already applied (at-least-once delivery, absorbed by its dedupe):
    after it had answered OK (the delivered mark was lost: a crash, a lapsed lease), or after it applied the
    effect but answered with an error or not at all (an ordinary retry)."""
    applied: set[str] = set()
    answered_ok: set[str] = set()
    after_ok = after_failed_reply = 0
    for request in merchant.requests:
        key = request.headers.get("Idempotency-Key", "")
        if key in answered_ok:
            after_ok += 1
        elif key in applied:
            after_failed_reply += 1
        if request.mode == "ok" or request.mode.startswith("apply+"):
            applied.add(key)
        if request.mode == "ok":
            answered_ok.add(key)
    return {"reposts_after_ok": after_ok, "reposts_after_failed_reply": after_failed_reply}


def sample(items: Any, count: int = 5) -> list[Any]:
    """A few items of a collection, sorted, for assertion messages."""
    return sorted(items, key=str)[:count]
