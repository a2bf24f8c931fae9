"""Per-connector rate limits: one token bucket in Redis shared by every process, taken by one Lua call."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from cep.scripts import ScriptCall, run_scripts
from connectors.settings import RateLimit


def bucket_key(bucket: str) -> str:
    """The token bucket of one connector (its own hash tag: buckets are global, not per user)."""
    return f"b:{{rl:{bucket}}}:tokens"


# KEYS[1] = the bucket HASH {tokens, ts}.
# ARGV[1] = now ms, ARGV[2] = rate (tokens per second), ARGV[3] = burst (capacity),
# ARGV[4] = how far ahead (ms) a caller may book a token.
# Returns {granted, wait_ms}: {1, 0} send now; {1, w} a token is booked for now + w (send then without
# asking again); {0, w} the bookings already reach past the limit: ask again in w ms.
# Tokens may go negative: a negative balance is the queue of booked sends, so a burst of deferred
# actions wakes up spread at the bucket's rate instead of all retrying at once.
TAKE_SCRIPT = """
local now = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2]) / 1000
local burst = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
-- Another process's clock may lag ours: time never runs backwards for the bucket.
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * per_ms)
  ts = now
end
local after = tokens - 1
local wait = 0
if after < 0 then wait = math.ceil(-after / per_ms) end
if wait > tonumber(ARGV[4]) then
  return {0, wait - tonumber(ARGV[4])}
end
redis.call('HSET', KEYS[1], 'tokens', tostring(after), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - after) / per_ms) + 1000)
return {1, wait}
"""


@dataclass(frozen=True, slots=True)
class Grant:
    """A bucket's answer: `granted` with `wait_ms` 0 (now) or > 0 (booked); not granted: ask after `wait_ms`."""

    granted: bool
    wait_ms: int


async def take_token(redis: Redis, bucket: str, limit: RateLimit, now_ms: int, max_wait_ms: int) -> Grant:
    """Take (or book) one token from `bucket`."""
    call = ScriptCall(TAKE_SCRIPT, [bucket_key(bucket)], [now_ms, repr(limit.rate_per_s), limit.burst, max_wait_ms])
    ((granted, wait),) = await run_scripts(redis, [call])
    return Grant(bool(granted), int(wait))
