"""Partition ownership: each partition's stream is consumed by exactly one live process at a time.

A consumer group alone would hand one user's events to several consumers, which then process them
concurrently and out of order; and a dead consumer's unacknowledged entries would be replayed after
newer ones. So a process consumes a partition only while it holds the partition's lease
(`b:{p:<n>}:owner`), and on taking one over it first replays whatever the previous owner left
unacknowledged. Processes announce themselves in `b:{workers}:members` (scored by lease expiry); with
L live processes sorted by name, the i-th one's share is P // L, plus one for the first P % L of them,
so the shares add up to P exactly and a newcomer always gets partitions released to it.
"""

from __future__ import annotations

from redis.asyncio import Redis

from cep.leases import lease_call, release
from cep.scripts import ScriptCall, run_scripts

MEMBERS_KEY = "b:{workers}:members"


def owner_key(partition: int) -> str:
    """Who consumes a partition now (value: the owner's name; expires unless renewed)."""
    return f"b:{{p:{partition}}}:owner"


# KEYS[1] members ZSET owner -> lease expiry ms; ARGV[1] owner, ARGV[2] now ms, ARGV[3] lease ms
# Returns the live processes' names (the caller included).
MEMBERS_SCRIPT = """
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 10)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class Ownership:
    """This process's leases; `heartbeat()` renews, acquires its fair share and names what to release."""

    def __init__(self, redis: Redis, partitions: int, owner: str, lease_ms: int) -> None:
        self._redis = redis
        self._partitions = partitions
        self.owner = owner
        self.lease_ms = lease_ms
        self.owned: set[int] = set()

    async def heartbeat(self, now_ms: int) -> tuple[set[int], set[int]]:
        """Renew held leases and take free ones up to the fair share: returns (acquired, to_release)."""
        (members,) = await run_scripts(
            self._redis, [ScriptCall(MEMBERS_SCRIPT, [MEMBERS_KEY], [self.owner, now_ms, self.lease_ms])]
        )
        live = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
        rank = live.index(self.owner) if self.owner in live else len(live)
        count = max(len(live), 1)
        share = self._partitions // count + (1 if rank < self._partitions % count else 0)
        renewals = sorted(self.owned)
        held = await run_scripts(
            self._redis,
            [lease_call(owner_key(p), self.owner, self.lease_ms, take=False) for p in renewals],
        )
        self.owned = {p for p, ok in zip(renewals, held, strict=True) if ok == 1}
        acquired: set[int] = set()
        # Start at a partition that depends on the owner so that newcomers do not all race for partition 0.
        offset = hash(self.owner) % self._partitions
        for step in range(self._partitions):
            if len(self.owned) >= share:
                break
            partition = (offset + step) % self._partitions
            if partition in self.owned:
                continue
            (got,) = await run_scripts(
                self._redis, [lease_call(owner_key(partition), self.owner, self.lease_ms, take=True)]
            )
            if got == 1:
                self.owned.add(partition)
                acquired.add(partition)
        extra = len(self.owned) - share
        to_release = set(sorted(self.owned)[-extra:]) if extra > 0 else set()
        return acquired, to_release

    async def release(self, partition: int) -> None:
        """Give up one partition (after its loop stopped) so another process takes it at once."""
        self.owned.discard(partition)
        await release(self._redis, [owner_key(partition)], self.owner)

    async def leave(self) -> None:
        """Release every partition and leave the member set (clean shutdown)."""
        for partition in sorted(self.owned):
            await self.release(partition)
        await self._redis.zrem(MEMBERS_KEY, self.owner)
