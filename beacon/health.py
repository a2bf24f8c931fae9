"""Whether a Beacon process is healthy: Redis answers, its loops run, and its processing is not stalled.

`/healthz` answers 503 with the problems listed when any of these holds (the same rules in `serve`,
`worker` and `connectors`, for the parts each runs):

- **redis**: Redis does not answer a PING within `PING_TIMEOUT_S` now, or no sample below has succeeded
  for the stall window (`BEACON_HEALTH_STALL_MS`): Redis errors persist.
- **loop ended**: a background loop of the process (the worker, the connectors, ...) has stopped while
  the process is not shutting down. They are meant to run until shutdown, retrying on their own.
- **partition stalled** (workers): a partition this process owns, under one lease epoch, has had a
  backlog (items appended, not committed) at every sample for the stall window, and its committed count
  has not moved since the first of those samples.
- **outbox stalled** (connectors): a partition's outbox has held entries that no consumer has read at
  every sample for the stall window, and the consumer group's read position has not moved. A provider
  that holds every delivery slot (`BEACON_CONNECTOR_CONCURRENCY`) that long stalls it too.
- **writes refused**: at the last sample Redis refused a write (out of memory at `maxmemory`, MISCONF on a
  full disk, a read-only replica) in the slot of some partition. PING still answers then, and a partition
  need not stall: the owner's commits can slip under the limit while every ingest request is refused
  (the fault suite saw /healthz 200 through 4 s of 503s on a master at maxmemory).

Samples are taken every quarter of the window (at most every `MAX_SAMPLE_EVERY_S`), so a stall is
reported between one window and one window plus a sample interval after it began. A worker that owns
no partition (more workers than partitions) is healthy: it is a standby.

What went wrong is shown, never where Redis is: redis-py's errors name its address (`Error 111 connecting
to 10.0.0.5:6379`, a unix socket's path, cluster nodes) and /healthz may be reachable by more people than
the logs are, so every problem line goes through `hide_addresses`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from beacon import metrics
from beacon.pause import pause
from beacon.redis_errors import describe
from cep import streams
from cep.events import partition_tag
from cep.outbox import outbox_key
from cep.worker import Worker
from connectors.consumer import GROUP

log = logging.getLogger("beacon.health")

PING_TIMEOUT_S = 2.0
MAX_SAMPLE_EVERY_S = 2.0
PROBE_TTL_MS = 60_000  # the write probes' keys expire: nothing to clean up when the processes go
HIDDEN_ADDRESS = "<address>"
# URLs; a unix socket's path; IPv6 (two colons or more, with its port); host:port, [v6]:port; bare IPv4. A host
# name never appears in redis-py's messages without its port.
_ADDRESSES = re.compile(
    r"\b[a-z][a-z0-9+.-]*://\S+"
    r"|(?<=unix socket: )\S+?(?=\.?(?:\s|$))"
    r"|\[[0-9A-Fa-f:.]+(?:%\w+)?\](?::\d{1,5})?"
    r"|(?<![\w:])[0-9A-Fa-f]*(?::[0-9A-Fa-f.]*){2,}(?:%\w+)?(?<!\.)"
    r"|\b[A-Za-z0-9_.-]+:\d{1,5}\b"
    r"|\b\d{1,3}(?:\.\d{1,3}){3}\b"
    r"|\('[^']*', \d{1,5}(?:, \d+)*\)"  # the (host, port) tuple of an OSError text
)


def probe_key(partition: int) -> str:
    """The key the health sample writes in a partition's slot to learn whether Redis accepts writes there."""
    return f"b:{{{partition_tag(partition)}}}:health"


def hide_addresses(text: str) -> str:
    """`text` with every network address or socket path in it replaced by `HIDDEN_ADDRESS`."""
    return _ADDRESSES.sub(HIDDEN_ADDRESS, text)


@dataclass(slots=True)
class _Watch:
    """What one partition (or outbox) looked like: its position, and since when it has been stuck."""

    position: tuple[Any, ...]  # (epoch, items committed) of a partition; the last read id of an outbox
    stuck_since: float | None  # first sample with work waiting and no progress since; None: not stuck
    waiting: int  # items (or, for an outbox, 1 when entries wait unread)


class HealthMonitor:
    """Samples this process's processing in the background; `check()` gives the verdict."""

    def __init__(
        self,
        redis: Redis,
        stall_ms: int,
        *,
        worker: Worker | None,
        outbox_partitions: int,
        tasks: Sequence[asyncio.Task[None]],
        stopping: asyncio.Event,
        probe_partitions: int = 0,
    ) -> None:
        self._redis = redis
        self._probe_partitions = probe_partitions  # 0: no write probe
        self.stall_s = stall_ms / 1000
        self._worker = worker
        self._outbox_partitions = outbox_partitions  # 0: this process does not deliver
        self._tasks = list(tasks)
        self._stopping = stopping
        self._partitions: dict[int, _Watch] = {}
        self._outboxes: dict[int, _Watch] = {}
        self._last_sample_ok = time.monotonic()
        self._last_error = ""
        self._refused_writes: dict[int, str] = {}  # partition -> what Redis answered its probe, last sample

    @property
    def sample_every_s(self) -> float:
        """Seconds between samples."""
        return min(MAX_SAMPLE_EVERY_S, self.stall_s / 4)

    async def run(self) -> None:
        """Sample until the process stops; a failed sample is remembered, never raised."""
        while not self._stopping.is_set():
            await self.sample()
            metrics.set_health_problems(len(self.problems()))
            await pause(self._stopping, self.sample_every_s)

    async def sample(self) -> None:
        """Read the committed counts of the partitions owned and the outboxes' read positions."""
        now = time.monotonic()
        try:
            if self._worker is not None:
                await self._sample_partitions(now)
            if self._outbox_partitions:
                await self._sample_outboxes(now)
            if self._probe_partitions:
                await self._probe_writes()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis down or refusing: reported once it lasts a whole window
            self._last_error = str(exc) or type(exc).__name__
            log.debug("health sample failed: %s", exc)
            return
        self._last_sample_ok = now

    async def check(self) -> list[str]:
        """The problems now (none: healthy); pings Redis, the rest comes from the samples."""
        problems: list[str] = []
        try:
            await asyncio.wait_for(self._redis.ping(), PING_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            problems.append(hide_addresses(f"redis: {str(exc) or type(exc).__name__}"))
        return problems + self.problems()

    def problems(self) -> list[str]:
        """What the samples and the loops say is wrong."""
        now = time.monotonic()
        problems = []
        if not self._stopping.is_set():
            for task in self._tasks:
                if task.done():
                    cause = "cancelled" if task.cancelled() else repr(task.exception())
                    problems.append(f"loop ended: {task.get_name()} ({cause})")
        if now - self._last_sample_ok >= self.stall_s:
            problems.append(
                f"redis: errors for {now - self._last_sample_ok:.0f}s (last: {self._last_error or 'no answer'})"
            )
        for partition, watch in sorted(self._partitions.items()):
            if watch.stuck_since is not None and now - watch.stuck_since >= self.stall_s:
                problems.append(
                    f"partition {partition} stalled: {watch.waiting} item(s) waiting, "
                    f"nothing committed for {now - watch.stuck_since:.0f}s"
                )
        for partition, watch in sorted(self._outboxes.items()):
            if watch.stuck_since is not None and now - watch.stuck_since >= self.stall_s:
                problems.append(
                    f"outbox {partition} stalled: entries waiting, none read for {now - watch.stuck_since:.0f}s"
                )
        if self._refused_writes:
            where = ", ".join(str(partition) for partition in sorted(self._refused_writes))
            problems.append(
                f"redis refuses writes (partition {where}): {self._refused_writes[min(self._refused_writes)]}"
            )
        return [hide_addresses(problem) for problem in problems]

    async def _sample_partitions(self, now: float) -> None:
        assert self._worker is not None
        owned = dict(self._worker.ownership.owned)  # partition -> epoch, as this process believes
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in owned:
                pipe.hmget(streams.progress_key(partition), [streams.PROGRESS_ADDED, streams.PROGRESS_COUNT])
            replies = await pipe.execute()
        seen = {}
        for (partition, epoch), (added, done) in zip(owned.items(), replies, strict=True):
            committed = int(done or 0)
            waiting = max(int(added or 0) - committed, 0)
            seen[partition] = _advance(self._partitions.get(partition), (epoch, committed), waiting, now)
        self._partitions = seen

    async def _sample_outboxes(self, now: float) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in range(self._outbox_partitions):
                pipe.xinfo_stream(outbox_key(partition))
                pipe.xinfo_groups(outbox_key(partition))
            replies = await pipe.execute(raise_on_error=False)
        seen = {}
        for partition in range(self._outbox_partitions):
            stream, groups = replies[2 * partition], replies[2 * partition + 1]
            if isinstance(stream, Exception) or isinstance(groups, Exception):
                continue  # no outbox or no group yet: the consumer creates them as it starts
            group = next((g for g in groups if _text(g.get("name")) == GROUP), None)
            if group is None:
                continue
            read = streams.stream_id(group["last-delivered-id"])
            unread = streams.stream_id(stream["last-generated-id"]) > read
            seen[partition] = _advance(self._outboxes.get(partition), (read,), int(unread), now)
        self._outboxes = seen

    async def _probe_writes(self) -> None:
        """Write one short-lived key in each partition's slot (on a cluster: on the master that holds it) and
        note which writes Redis refused. A lost connection raises instead: the "errors for Ns" rule covers it."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in range(self._probe_partitions):
                pipe.set(probe_key(partition), b"1", px=PROBE_TTL_MS)
            replies = await pipe.execute(raise_on_error=False)
        self._refused_writes = {
            partition: describe(reply) for partition, reply in enumerate(replies) if isinstance(reply, ResponseError)
        }


def _advance(previous: _Watch | None, position: tuple[Any, ...], waiting: int, now: float) -> _Watch:
    """The watch after one sample: stuck from the first sample with work waiting and the position unmoved."""
    if not waiting:
        return _Watch(position, None, 0)
    if previous is None or previous.position != position:
        return _Watch(position, now, waiting)  # moved (or new): stuck only if it stays here
    return _Watch(position, previous.stuck_since if previous.stuck_since is not None else now, waiting)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
