"""Ruleset storage in Redis (`b:{rs}:*`): versioned documents, the active index, a change counter.

Every PUT makes a new version number that is never reused, even after a delete, so action
idempotency keys (which include the version) stay unique. Each process watches `rev` and recompiles
when it moves: replacing a ruleset takes effect everywhere without a restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from beacon.errors import NotFoundError

INDEX_KEY = "b:{rs}:index"  # HASH id -> JSON {"version", "updated_ms"} of the active version
SEQ_KEY = "b:{rs}:seq"  # HASH id -> last version number handed out
REV_KEY = "b:{rs}:rev"  # counter bumped on every change
KEEP_VERSIONS = 20


def versions_key(ruleset_id: str) -> str:
    """HASH version -> JSON {"document", "created_ms"} of one ruleset's kept versions."""
    return f"b:{{rs}}:v:{ruleset_id}"


# KEYS[1] index, KEYS[2] seq, KEYS[3] rev, KEYS[4] versions of this ruleset
# ARGV[1] ruleset id, ARGV[2] JSON {"document", "created_ms"} (stored as given: cjson would round
# numbers to 14 digits), ARGV[3] now (ms), ARGV[4] versions to keep
# Returns the new version number.
PUT_SCRIPT = """
local version = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[4], version, ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({version = version, updated_ms = tonumber(ARGV[3])}))
local old = version - tonumber(ARGV[4])
if old > 0 then
  local fields = redis.call('HKEYS', KEYS[4])
  for _, field in ipairs(fields) do
    if tonumber(field) <= old then redis.call('HDEL', KEYS[4], field) end
  end
end
redis.call('INCR', KEYS[3])
return version
"""

# KEYS[1] index, KEYS[2] rev, KEYS[3] versions of this ruleset; ARGV[1] ruleset id
# Returns 1 if the ruleset existed, else 0 (and changes nothing).
DELETE_SCRIPT = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('INCR', KEYS[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class StoredRuleset:
    """An active ruleset as stored: its id, version, document and when it was stored."""

    id: str
    version: int
    document: dict[str, Any]
    updated_ms: int


class RulesetStore:
    """Reads and writes rulesets; scripts registered once and called by SHA."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._put = redis.register_script(PUT_SCRIPT)
        self._delete = redis.register_script(DELETE_SCRIPT)

    async def put(self, ruleset_id: str, document: dict[str, Any], now_ms: int) -> int:
        """Store a validated document as the new active version; returns the version number."""
        text = json.dumps({"document": document, "created_ms": now_ms}, ensure_ascii=False)
        keys = [INDEX_KEY, SEQ_KEY, REV_KEY, versions_key(ruleset_id)]
        return int(await self._put(keys=keys, args=[ruleset_id, text, now_ms, KEEP_VERSIONS]))

    async def delete(self, ruleset_id: str) -> None:
        """Remove a ruleset and its versions; NotFoundError if it does not exist."""
        removed = await self._delete(keys=[INDEX_KEY, REV_KEY, versions_key(ruleset_id)], args=[ruleset_id])
        if not removed:
            raise NotFoundError(f"no ruleset {ruleset_id!r}", path="id")

    async def revision(self) -> int:
        """The change counter (0 before the first change)."""
        return int(await self._redis.get(REV_KEY) or 0)

    async def active(self) -> tuple[int, list[StoredRuleset]]:
        """The revision and every active ruleset, read in one transaction so they agree."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(REV_KEY)
            pipe.hgetall(INDEX_KEY)
            rev_raw, index = await pipe.execute()
        metas = {key.decode(): json.loads(value) for key, value in index.items()}
        if not metas:
            return int(rev_raw or 0), []
        async with self._redis.pipeline(transaction=False) as pipe:
            for ruleset_id, meta in metas.items():
                pipe.hget(versions_key(ruleset_id), str(meta["version"]))
            docs = await pipe.execute()
        stored = []
        for (ruleset_id, meta), raw in zip(metas.items(), docs, strict=True):
            if raw is None:  # deleted between the two reads; the next revision check catches up
                continue
            body = json.loads(raw)
            stored.append(StoredRuleset(ruleset_id, int(meta["version"]), body["document"], int(meta["updated_ms"])))
        return int(rev_raw or 0), sorted(stored, key=lambda item: item.id)

    async def get(self, ruleset_id: str, version: int | None = None) -> StoredRuleset:
        """The active (or a kept older) version of a ruleset; NotFoundError otherwise."""
        meta_raw = await self._redis.hget(INDEX_KEY, ruleset_id)
        if meta_raw is None:
            raise NotFoundError(f"no ruleset {ruleset_id!r}", path="id")
        meta = json.loads(meta_raw)
        wanted = int(meta["version"]) if version is None else version
        raw = await self._redis.hget(versions_key(ruleset_id), str(wanted))
        if raw is None:
            raise NotFoundError(f"ruleset {ruleset_id!r} has no kept version {wanted}", path="version")
        body = json.loads(raw)
        return StoredRuleset(ruleset_id, wanted, body["document"], int(body["created_ms"]))

    async def versions(self, ruleset_id: str) -> list[int]:
        """Kept version numbers of a ruleset, oldest first."""
        fields = await self._redis.hkeys(versions_key(ruleset_id))
        return sorted(int(field) for field in fields)
