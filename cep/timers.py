"""Timers: one sorted set per partition (`b:{p:<n>}:timers`) scored by due time, and its sweeper.

A sweeper holds a per-partition lease so exactly one live process sweeps a partition; a dead
process's lease expires and another takes over. Claiming is one Lua call that moves due members from
the set into the partition's event stream, so a timer is never lost between the two and never
claimed twice: it becomes a synthetic event on the normal worker path, deduped by its event id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from beacon import metrics
from beacon.clock import Clock
from beacon.pause import pause
from cep.leases import lease_call, release
from cep.scripts import ScriptCall, run_scripts
from cep.streams import TIMER_FIELD, events_key

log = logging.getLogger("beacon.timers")

LEASE_MS = 10_000


def timers_key(partition: int) -> str:
    """The timer set of one partition."""
    return f"b:{{p:{partition}}}:timers"


def lease_key(partition: int) -> str:
    """Who sweeps a partition now (value: the owner's name; expires unless renewed)."""
    return f"b:{{p:{partition}}}:sweeper"


# KEYS[1] timers ZSET member -> due ms; KEYS[2] the partition's event stream (same slot)
# ARGV[1] now (ms), ARGV[2] most members to claim, ARGV[3] stream field for timer members
# Returns a flat list [due1, due2, ...] of the claimed timers' due times (for the lag metric).
CLAIM_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local claimed = {}
for i = 1, #due, 2 do
  redis.call('XADD', KEYS[2], '*', ARGV[3], due[i], 'due', due[i + 1])
  redis.call('ZREM', KEYS[1], due[i])
  claimed[#claimed + 1] = due[i + 1]
end
return claimed
"""


def schedule(pipe: Pipeline, partition: int, timers: Iterable[tuple[int, str]]) -> None:
    """ZADD timers on the caller's pipeline; re-adding the same member is a no-op, so retries are safe."""
    mapping = {member: due for due, member in timers}
    if mapping:
        pipe.zadd(timers_key(partition), mapping)


async def pending_count(redis: Redis, partitions: int) -> int:
    """Timers waiting over all partitions."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.zcard(timers_key(partition))
        return sum(await pipe.execute())


class Sweeper:
    """Claims due timers of every partition whose lease this process holds."""

    def __init__(
        self,
        redis: Redis,
        clock: Clock,
        partitions: int,
        owner: str,
        *,
        stopping: asyncio.Event,
        batch: int = 500,
        idle_s: float = 0.05,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._partitions = partitions
        self._owner = owner
        self._batch = batch
        self._idle_s = idle_s
        self._stopping = stopping

    async def sweep_once(self) -> int:
        """One pass over the partitions this process may sweep; returns how many timers it claimed."""
        leases = await run_scripts(
            self._redis,
            [lease_call(lease_key(p), self._owner, LEASE_MS, take=True) for p in range(self._partitions)],
        )
        owned = [p for p, held in enumerate(leases) if held == 1]
        now = self._clock.now_ms()
        calls = [
            ScriptCall(CLAIM_SCRIPT, [timers_key(p), events_key(p)], [now, self._batch, TIMER_FIELD]) for p in owned
        ]
        claimed = 0
        for dues in await run_scripts(self._redis, calls):
            claimed += len(dues)
            for due in dues:
                metrics.on_timer_fired((now - int(float(due))) / 1000)
        return claimed

    async def run(self) -> None:
        """Sweep until cancelled; back to back while there is work, else every `idle_s`."""
        last_count = 0.0
        while not self._stopping.is_set():
            try:
                claimed = await self.sweep_once()
                if asyncio.get_running_loop().time() - last_count > 2.0:
                    last_count = asyncio.get_running_loop().time()
                    metrics.set_pending_timers(await pending_count(self._redis, self._partitions))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("timer sweep failed (%s); retrying", exc)
                claimed = 0
            if not claimed:
                await pause(self._stopping, self._idle_s)

    async def release(self) -> None:
        """Give up this process's leases (on clean shutdown) so another process takes over at once."""
        await release(self._redis, [lease_key(p) for p in range(self._partitions)], self._owner)
