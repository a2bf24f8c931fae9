"""What the chaos test reads back from Redis and the provider stand-in, and how it waits: when events were
appended, Redis kills and what they rolled back or lost, settling, ledgers, pending absences, repeated POSTs."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from cep import ledger, streams, timers
from cep.evaluator import TIMER_SEPARATOR
from cep.events import Event, partition_of
from tests.chaos.backends import RedisUnderTest
from tests.chaos.processes import progress_counts, redis_down
from tests.chaos.trace import HOUR
from tests.connectors.providers import FakeMerchant, Request


class StreamWatch:
    """Follows every partition stream as it grows and notes when each event was first appended: its entry id's
    time, the Redis server's clock. Best effort (an entry trimmed before it is read is missed): it only dates
    what a Redis kill lost; what the streams received, in order, is read from the AOF (tests/chaos/aof.py)."""

    def __init__(self, redis: aioredis.Redis, partitions: int) -> None:
        self._redis = redis
        self._partitions = partitions
        self.appended_ms: dict[str, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Read until `stop`, then drain what is left; Redis restarts are waited out."""
        # One reader per partition: on a cluster one XREAD cannot name streams in different slots.
        await asyncio.gather(*(self._follow(partition, stop) for partition in range(self._partitions)))

    async def _follow(self, partition: int, stop: asyncio.Event) -> None:
        key, position = streams.events_key(partition), b"0-0"
        while True:
            stopping = stop.is_set()
            try:
                reply: Any = await self._redis.xread({key: position}, count=2_000, block=None if stopping else 100)
            except Exception as exc:
                if not redis_down(exc):
                    raise
                await asyncio.sleep(0.05)
                continue
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    position = entry_id
                    for item in streams.decode_entry(fields):
                        if isinstance(item, Event):
                            self.appended_ms.setdefault(item.event_id, int(entry_id.split(b"-")[0]))
            if stopping and not reply:
                return


@dataclass
class RedisKill:
    """One SIGKILL of a Redis server (the single one, or one cluster master) and its restart: the counters
    (items appended, items committed) of the partitions it holds, just before the kill and just after."""

    server: int
    partitions: list[int]
    killed_at_ms: int  # wall clock, as in stream entry ids
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


async def kill_redis(
    backend: RedisUnderTest, redis: aioredis.Redis, server: int, partitions: int, rng: random.Random
) -> RedisKill:
    """SIGKILL one Redis server, keep it down a moment, restart it on its data dir and port (AOF replayed).

    On a cluster the other masters keep serving: only the partitions on this one stall, for the time it is
    down and the ~2 s a restarted master waits before it serves its slots again.
    """
    held = backend.partitions_on(server, partitions)
    before = await progress_totals(redis, held)
    backend.kill(server)
    killed_at_ms = time.time_ns() // 1_000_000
    down_s = rng.uniform(0.2, 1.0)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(backend.restart, server)  # blocks until it serves again (its AOF loaded)
    return RedisKill(server, held, killed_at_ms, down_s, before, await progress_totals(redis, held))


async def progress_totals(redis: aioredis.Redis, partitions: list[int]) -> tuple[int, int]:
    """(items appended, items committed) over the partitions; retried while a restart settles."""
    for _ in range(50):
        try:
            counts = await progress_counts(redis, partitions)
            return sum(added for added, _ in counts), sum(done for _, done in counts)
        except Exception as exc:
            if not redis_down(exc):
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("redis did not answer for 5 s")


# Valkey with `appendfsync everysec` postpones writing its AOF buffer while a background fsync still runs, for
# up to 2 s, and answers clients meanwhile: a SIGKILL then loses writes it acknowledged (retried on its 100 ms
# cron, hence the margin). Ingest acks wait for WAITAOF and are immune: a loss is a bug, dated by this.
UNWRITTEN_MS = 2_500


def losses_by_kill(
    lost: list[dict[str, Any]], kills: list[RedisKill], watch: StreamWatch, partitions: int
) -> tuple[list[int], list[str]]:
    """Match acknowledged events that Redis lost to the kills that can have taken them.

    A kill can take an event of a partition the killed server held, appended at most UNWRITTEN_MS before the
    SIGKILL (its stream entry's time; an event the watch never saw was appended too late to be seen), and no
    more events than the appends its restart rolled back. Returns the events each kill took and the ids of
    those no kill explains.
    """
    taken = [0] * len(kills)
    unexplained: list[str] = []
    for event in lost:
        partition = partition_of(event["user_id"], partitions)
        appended = watch.appended_ms.get(event["event_id"])
        for index, kill in enumerate(kills):
            in_window = appended is None or kill.killed_at_ms - UNWRITTEN_MS <= appended <= kill.killed_at_ms
            if partition in kill.partitions and in_window and taken[index] < kill.lost_appends:
                taken[index] += 1
                break
        else:
            unexplained.append(event["event_id"])
    return taken, unexplained


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
        except Exception as exc:
            if not redis_down(exc):
                raise
            busy, idle = f"redis error {exc!r}", False
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
        try:
            books = await ledgers(redis, partitions, users)
        except Exception as exc:  # the client recovering from the node restarts: read again
            if not redis_down(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
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


def request_key(request: Request) -> str:
    """The Idempotency-Key of a request the provider saw ("" without one)."""
    return request.headers.get("Idempotency-Key", "")


def reposts(merchant: FakeMerchant) -> dict[str, int]:
    """POSTs of an effect the provider had already applied (at-least-once delivery, absorbed by its dedupe):
    after it had answered OK (the delivered mark was lost: a crash, a lapsed lease), or after it applied the
    effect but answered with an error or not at all (an ordinary retry)."""
    applied: set[str] = set()
    answered_ok: set[str] = set()
    after_ok = after_failed_reply = 0
    for request in merchant.requests:
        key = request_key(request)
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
