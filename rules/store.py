"""Ruleset and journey storage in Redis (`b:{rs}:*`): versioned documents, the active index, a change counter.

Every PUT makes a new version number that is never reused, even after a delete, so action
idempotency keys (which include the version) stay unique. Each process watches `rev` and recompiles
when it moves: replacing a ruleset or a journey takes effect everywhere without a restart. Rulesets and
journeys share the counter (one read tells a worker whether either changed) and keep their documents
under their own prefixes (journeys: `b:{rs}:j:*`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from beacon.errors import NotFoundError

REV_KEY = "b:{rs}:rev"  # counter bumped on every change of a ruleset or a journey
KEEP_VERSIONS = 20
# Running journey instances finish on the version they started: versions are kept longer, and an
# instance whose version was dropped (after this many newer ones) is cancelled.
KEEP_JOURNEY_VERSIONS = 100
RULESETS = ""  # key prefix of each kind of document
JOURNEYS = "j:"
SEGMENTS = "g:"
ITEM_INDEXES = "x:"
PLANS = "n:"


def index_key(kind: str) -> str:
    """HASH id -> JSON {"version", "updated_ms"} of each active document of a kind."""
    return f"b:{{rs}}:{kind}index"


def seq_key(kind: str) -> str:
    """HASH id -> last version number handed out."""
    return f"b:{{rs}}:{kind}seq"


def versions_key(kind: str, document_id: str) -> str:
    """HASH version -> JSON {"document", "created_ms"} of one document's kept versions."""
    return f"b:{{rs}}:{kind}v:{document_id}"


# KEYS[1] index, KEYS[2] seq, KEYS[3] rev, KEYS[4] versions of this ruleset
# ARGV[1] ruleset id, ARGV[2] JSON {"document", "created_ms"} (stored as given: cjson would round
# numbers to 14 digits), ARGV[3] now (ms), ARGV[4] versions to keep
# Returns the new version number.
PUT_SCRIPT = """
local version = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[4], version, ARGV[2])
-- `born`: the version that created the document (again after a delete): a journey's users' marks are
-- kept under it, so a journey re-created under a deleted id starts afresh for every user.
local born = version
local meta = redis.call('HGET', KEYS[1], ARGV[1])
if meta then born = cjson.decode(meta).born or 1 end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({version = version, updated_ms = tonumber(ARGV[3]), born = born}))
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
    born: int = 1  # the version that created it (after its last delete, if any)


class RulesetStore:
    """Reads and writes one kind of document (rulesets by default); scripts registered once, called by SHA."""

    def __init__(self, redis: Redis, kind: str = RULESETS) -> None:
        self._redis = redis
        self.redis = redis
        self._kind = kind
        # A plan runs as a journey (`rules.plans`): its users wait on its versions like a journey's.
        self._keep = KEEP_JOURNEY_VERSIONS if kind in (JOURNEYS, PLANS) else KEEP_VERSIONS
        self.what = {JOURNEYS: "journey", SEGMENTS: "segment", ITEM_INDEXES: "item index", PLANS: "plan"}.get(
            kind, "ruleset"
        )
        self._put = redis.register_script(PUT_SCRIPT)
        self._delete = redis.register_script(DELETE_SCRIPT)

    async def put(self, ruleset_id: str, document: dict[str, Any], now_ms: int) -> int:
        """Store a validated document as the new active version; returns the version number."""
        text = json.dumps({"document": document, "created_ms": now_ms}, ensure_ascii=False)
        keys = [index_key(self._kind), seq_key(self._kind), REV_KEY, versions_key(self._kind, ruleset_id)]
        return int(await self._put(keys=keys, args=[ruleset_id, text, now_ms, self._keep]))

    async def delete(self, ruleset_id: str) -> None:
        """Remove a ruleset and its versions; NotFoundError if it does not exist."""
        keys = [index_key(self._kind), REV_KEY, versions_key(self._kind, ruleset_id)]
        if not await self._delete(keys=keys, args=[ruleset_id]):
            raise NotFoundError(f"no {self.what} {ruleset_id!r}", path="id")

    async def revision(self) -> int:
        """The change counter (0 before the first change)."""
        return int(await self._redis.get(REV_KEY) or 0)

    async def active(self) -> tuple[int, list[StoredRuleset]]:
        """The revision and every active ruleset, read in one transaction so they agree."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(REV_KEY)
            pipe.hgetall(index_key(self._kind))
            rev_raw, index = await pipe.execute()
        metas = {key.decode(): json.loads(value) for key, value in index.items()}
        stored = await self._documents(metas)
        return int(rev_raw or 0), sorted(stored, key=lambda item: item.id)

    async def ids(self) -> list[str]:
        """Every active document's id, in no order: the index's fields only, no document read or decoded.

        A list's page is chosen from these (`api.paging`), then only its documents are loaded: with 10,000
        rulesets this is a few ms where reading and decoding every document took most of half a second.
        """
        return [_text(field) for field in await self._redis.hkeys(index_key(self._kind))]

    async def load(self, document_ids: Sequence[str]) -> list[StoredRuleset]:
        """The active version of each of `document_ids` that is active, in the order given."""
        if not document_ids:
            return []
        raw_metas = await self._redis.hmget(index_key(self._kind), list(document_ids))
        metas = {
            document_id: json.loads(raw)
            for document_id, raw in zip(document_ids, raw_metas, strict=True)
            if raw is not None  # deleted since its id was read
        }
        return await self._documents(metas)

    async def _documents(self, metas: dict[str, dict[str, Any]]) -> list[StoredRuleset]:
        """The documents of the versions the index metadata names (`{id: {"version", "updated_ms", "born"}}`)."""
        if not metas:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for ruleset_id, meta in metas.items():
                pipe.hget(versions_key(self._kind, ruleset_id), str(meta["version"]))
            docs = await pipe.execute()
        stored = []
        for (ruleset_id, meta), raw in zip(metas.items(), docs, strict=True):
            if raw is None:  # deleted between the two reads; the next revision check catches up
                continue
            body = json.loads(raw)
            stored.append(
                StoredRuleset(
                    ruleset_id,
                    int(meta["version"]),
                    body["document"],
                    int(meta["updated_ms"]),
                    int(meta.get("born") or 1),
                )
            )
        return stored

    async def get(self, ruleset_id: str, version: int | None = None) -> StoredRuleset:
        """The active (or a kept older) version of a ruleset; NotFoundError otherwise."""
        meta_raw = await self._redis.hget(index_key(self._kind), ruleset_id)
        if meta_raw is None:
            raise NotFoundError(f"no {self.what} {ruleset_id!r}", path="id")
        meta = json.loads(meta_raw)
        wanted = int(meta["version"]) if version is None else version
        raw = await self._redis.hget(versions_key(self._kind, ruleset_id), str(wanted))
        if raw is None:
            raise NotFoundError(f"{self.what} {ruleset_id!r} has no kept version {wanted}", path="version")
        body = json.loads(raw)
        return StoredRuleset(ruleset_id, wanted, body["document"], int(body["created_ms"]))

    async def versions(self, ruleset_id: str) -> list[int]:
        """Kept version numbers of a ruleset, oldest first."""
        fields = await self._redis.hkeys(versions_key(self._kind, ruleset_id))
        return sorted(int(field) for field in fields)

    async def kept(self, document_id: str) -> dict[int, dict[str, Any]]:
        """Every kept version's document of one id (journeys: running instances stay on their version)."""
        raw = await self._redis.hgetall(versions_key(self._kind, document_id))
        return {int(version): json.loads(body)["document"] for version, body in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
