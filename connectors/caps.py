"""Per-user frequency caps (Lua on `{u:<user>}` keys) and quiet hours (pure, zoneinfo)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from cep.scripts import ScriptCall, run_scripts
from connectors.settings import FrequencyCap, QuietHours

# The cap name (in BEACON_CONNECTOR_FREQUENCY_CAPS) that counts every marketing message, whatever its
# channel: "at most 3 marketing touches a week" across SMS, WeChat, mini-program and WeCom.
MARKETING = "marketing"


def is_marketing(record: Mapping[str, Any]) -> bool:
    """A message not marked `"transactional": true` (order notices and the like are exempt from fatigue)."""
    params = record.get("params") or {}
    return record.get("type") == "message" and not (isinstance(params, dict) and params.get("transactional") is True)


def source_cap(record: Mapping[str, Any]) -> tuple[str, FrequencyCap] | None:
    """The fatigue cap of the ruleset or journey that made a marketing message (its record's `fatigue`:
    `{"cap": "journey:<id>", "max", "per_ms"}`), or None."""
    fatigue = record.get("fatigue")
    if not is_marketing(record) or not isinstance(fatigue, dict):
        return None
    return str(fatigue["cap"]), FrequencyCap(int(fatigue["max"]), int(fatigue["per_ms"]))


def cap_key(user_id: str, channel: str) -> str:
    """The ZSET of one user's recent sends on one channel."""
    # Caps are the connectors' own: the user's hash tag is enough (no batch commit touches them).
    return f"b:{{u:{user_id}}}:cap:{channel}"


# KEYS[1] = the user's cap ZSET for one channel (member = action id, score = when it was counted).
# ARGV[1] = now ms, ARGV[2] = window ms, ARGV[3] = limit, ARGV[4] = action id.
# Returns 1 when the action may be sent (counted now, or already counted by an earlier attempt of the
# same action, so a retry never counts twice) and 0 when `limit` sends already fall in (now - window, now].
CAP_SCRIPT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return 1
"""


async def take_cap(redis: Redis, user_id: str, channel: str, action_id: str, cap: FrequencyCap, now_ms: int) -> bool:
    """Count `action_id` against the user's cap on `channel`; False when the cap is reached."""
    call = ScriptCall(CAP_SCRIPT, [cap_key(user_id, channel)], [now_ms, cap.window_ms, cap.limit, action_id])
    (reply,) = await run_scripts(redis, [call])
    return bool(reply)


async def release_cap(redis: Redis, user_id: str, channel: str, action_id: str) -> None:
    """Give back a counted send that never went out (skipped or dead-lettered)."""
    await redis.zrem(cap_key(user_id, channel), action_id)


def quiet_until(now_ms: int, quiet: QuietHours) -> int | None:
    """When the quiet period around `now_ms` ends (ms), or None when `now_ms` is outside it."""
    zone = quiet.zone
    local = datetime.fromtimestamp(now_ms / 1000, zone)
    clock = local.time().replace(tzinfo=None)
    if quiet.start < quiet.end:
        if not quiet.start <= clock < quiet.end:
            return None
        end_day = local.date()
    elif clock >= quiet.start:
        end_day = local.date() + timedelta(days=1)
    elif clock < quiet.end:
        end_day = local.date()
    else:
        return None
    # A wall time inside a DST gap resolves past the gap (fold=0 takes the earlier offset), which is
    # still the first moment after the quiet period.
    end = datetime.combine(end_day, quiet.end, tzinfo=zone)
    return max(int(end.timestamp() * 1000), now_ms + 1)
