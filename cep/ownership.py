"""Partition ownership: each partition's stream is consumed by exactly one live process at a time.

A consumer group alone would hand one user's events to several consumers, which then process them
concurrently and out of order; and a dead consumer's unacknowledged entries would be replayed after
newer ones. So a process consumes a partition only while it holds the partition's lease
(`b:{p:<n>}:owner`), and on taking one over it first replays whatever the previous owner left
unacknowledged. Processes announce themselves in `b:{workers}:members` (scored by lease expiry) with a
weight; each live process's share is P split in proportion to the weights, the remainders going to the
largest fractions (ties in name order), so the shares add up to P exactly, every process computes the
same split, and a newcomer always gets partitions released to it. `beacon serve` announces a smaller
weight than a `beacon worker` (BEACON_SERVE_PARTITION_WEIGHT) because it also runs the API.

Taking a lease increments the partition's epoch (`b:{p:<n>}:epoch`), and every commit checks it
(`cep.commit`): a process whose lease lapsed — a long pause, a lost connection — cannot write after
another process took the partition over, even if it has not noticed yet.
"""

from __future__ import annotations

from redis.asyncio import Redis

from cep.events import partition_tag
from cep.scripts import ScriptCall, run_scripts

MEMBERS_KEY = "b:{workers}:members"
WEIGHT_SEPARATOR = "@"  # a member is `<owner>@<weight>`; a member without one weighs 1


def owner_key(partition: int) -> str:
    """Who consumes a partition now (value: the owner's name; expires unless renewed)."""
    return f"b:{{{partition_tag(partition)}}}:owner"


def epoch_key(partition: int) -> str:
    """The partition's lease epoch: incremented by every take-over, checked by every commit; never expires."""
    return f"b:{{{partition_tag(partition)}}}:epoch"


# KEYS[1] owner lease, KEYS[2] epoch; ARGV[1] owner, ARGV[2] lease ms, ARGV[3] 1 to take the lease if free
# Returns the epoch the caller holds afterwards (a renewal keeps it, a take-over increments it), or 0.
PARTITION_LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  local epoch = tonumber(redis.call('GET', KEYS[2]) or '0')
  if epoch > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
  return epoch
end
if holder == false and ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return redis.call('INCR', KEYS[2])
end
return 0
"""


# KEYS[1] lease key; ARGV[1] owner. Deletes the lease only if the caller holds it; returns 1 if so.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


async def release(redis: Redis, keys: list[str], owner: str) -> None:
    """Give up the leases among `keys` that `owner` holds, so another process takes them at once."""
    await run_scripts(redis, [ScriptCall(RELEASE_SCRIPT, [key], [owner]) for key in keys])


def partition_lease_call(partition: int, owner: str, lease_ms: int, *, take: bool) -> ScriptCall:
    """Renew (and take, if free and `take`) one partition's lease; replies with the epoch held, or 0."""
    return ScriptCall(
        PARTITION_LEASE_SCRIPT, [owner_key(partition), epoch_key(partition)], [owner, lease_ms, int(take)]
    )


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

    def __init__(self, redis: Redis, partitions: int, owner: str, lease_ms: int, weight: float = 1.0) -> None:
        self._redis = redis
        self._partitions = partitions
        self.owner = owner
        self.lease_ms = lease_ms
        self.owned: dict[int, int] = {}  # partition -> the epoch this process holds it under
        self._member = f"{owner}{WEIGHT_SEPARATOR}{weight:g}"

    async def heartbeat(self, now_ms: int) -> tuple[set[int], set[int]]:
        """Renew held leases and take free ones up to the fair share: returns (acquired, to_release)."""
        (members,) = await run_scripts(
            self._redis, [ScriptCall(MEMBERS_SCRIPT, [MEMBERS_KEY], [self._member, now_ms, self.lease_ms])]
        )
        live = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        share = fair_shares(live, self._partitions).get(self._member, 0)
        renewals = sorted(self.owned)
        held = await run_scripts(
            self._redis, [partition_lease_call(p, self.owner, self.lease_ms, take=False) for p in renewals]
        )
        self.owned = {p: int(epoch) for p, epoch in zip(renewals, held, strict=True) if int(epoch) > 0}
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
                self._redis, [partition_lease_call(partition, self.owner, self.lease_ms, take=True)]
            )
            if int(got) > 0:
                self.owned[partition] = int(got)
                acquired.add(partition)
        extra = len(self.owned) - share
        to_release = set(sorted(self.owned)[-extra:]) if extra > 0 else set()
        return acquired, to_release

    async def release(self, partition: int) -> None:
        """Give up one partition (after its loop stopped) so another process takes it at once."""
        self.owned.pop(partition, None)
        await release(self._redis, [owner_key(partition)], self.owner)

    async def leave(self) -> None:
        """Release every partition and leave the member set (clean shutdown)."""
        for partition in sorted(self.owned):
            await self.release(partition)
        await self._redis.zrem(MEMBERS_KEY, self._member)


def fair_shares(members: list[str], partitions: int) -> dict[str, int]:
    """Each member's number of partitions: `partitions` split in proportion to the weights in the member
    names, the remainders to the largest fractions, ties in name order (the same split for everyone)."""
    weights = {}
    for member in sorted(members):
        _, separator, text = member.rpartition(WEIGHT_SEPARATOR)
        try:
            weight = float(text) if separator else 1.0
        except ValueError:
            weight = 1.0
        weights[member] = weight if weight > 0 else 1.0
    total = sum(weights.values())
    if not total:
        return {}
    quotas = {member: partitions * weight / total for member, weight in weights.items()}
    shares = {member: int(quota) for member, quota in quotas.items()}
    left = partitions - sum(shares.values())
    for member in sorted(quotas, key=lambda name: (-(quotas[name] - shares[name]), name))[:left]:
        shares[member] += 1
    return shares
