"""Leases: a key holding its owner's name with an expiry, taken, renewed and released atomically.

Used for partition ownership (`cep.ownership`) and for the timer sweepers (`cep.timers`).
"""

from __future__ import annotations

from redis.asyncio import Redis

from cep.scripts import ScriptCall, run_scripts

# KEYS[1] lease key; ARGV[1] owner, ARGV[2] lease ms, ARGV[3] 1 to take the lease if free, 0 to only renew
# Returns 1 if the caller holds the lease afterwards, else 0.
LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or (holder == false and ARGV[3] == '1') then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
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


def lease_call(key: str, owner: str, lease_ms: int, *, take: bool) -> ScriptCall:
    """Renew `key` for `owner` (and take it when free, if `take`); run with `run_scripts`."""
    return ScriptCall(LEASE_SCRIPT, [key], [owner, lease_ms, 1 if take else 0])


async def release(redis: Redis, keys: list[str], owner: str) -> None:
    """Give up the leases among `keys` that `owner` holds, so another process takes them at once."""
    await run_scripts(redis, [ScriptCall(RELEASE_SCRIPT, [key], [owner]) for key in keys])
