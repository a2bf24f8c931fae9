"""Who owns a stored ruleset (`b:{rs}:<kind>owners`): only its owner's keys, or an admin key, may replace or delete it.

An API key may name an owner (`BEACON_API_KEYS` entry `key:scopes:owner`). A ruleset created with such a key
records that owner; a key of another owner, or one that owns nothing, then gets 403 on PUT and DELETE. A
ruleset created with a key that owns nothing has no owner and stays open to every `rules` key, as before
owners existed; an owned key that replaces it becomes its owner. An admin key may change any ruleset and
keeps its owner. The record outlives the document by a moment at most: DELETE drops it after the document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from beacon.errors import ForbiddenError
from rules.store import RULESETS


def owners_key(kind: str = RULESETS) -> str:
    """HASH document id -> owner name, for one kind of stored document (rulesets by default)."""
    return f"b:{{rs}}:{kind}owners"


# KEYS[1] owners. ARGV[1] document id, ARGV[2] the caller's owner ('' when the key owns nothing), ARGV[3] '1'
# when the caller may override an owner (admin), ARGV[4] '1' to record the caller as the owner of an unowned
# document (a PUT; a DELETE only checks).
# Returns false when the caller may go ahead, else the owner in the way. Check and record are one step, so two
# owners creating the same id at once cannot both pass.
CLAIM_SCRIPT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and current ~= ARGV[2] and ARGV[3] ~= '1' then return current end
if not current and ARGV[2] ~= '' and ARGV[4] == '1' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return false
"""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as far as ownership goes: the key's owner (None: owns nothing) and whether it is admin."""

    owner: str | None
    admin: bool


class Owners:
    """Checks and records the owners of one kind of stored document."""

    def __init__(self, redis: Redis, kind: str = RULESETS) -> None:
        self._redis = redis
        self._key = owners_key(kind)
        self._claim = redis.register_script(CLAIM_SCRIPT)

    async def claim(self, document_id: str, caller: Caller, *, record: bool) -> None:
        """Let `caller` change the document or raise ForbiddenError; with `record`, an unowned one becomes its."""
        args = [document_id, caller.owner or "", "1" if caller.admin else "0", "1" if record else "0"]
        holder = await self._claim(keys=[self._key], args=args)
        if holder is not None:
            raise ForbiddenError(
                f"{document_id!r} belongs to another owner; only its owner's keys or an admin key may change it",
                path="id",
            )

    async def release(self, document_id: str) -> None:
        """Forget the owner of a deleted document, so the id is free again."""
        await self._redis.hdel(self._key, document_id)

    async def owner(self, document_id: str) -> str | None:
        """The recorded owner, or None."""
        raw = await self._redis.hget(self._key, document_id)
        return raw.decode() if isinstance(raw, bytes) else raw

    async def of(self, document_ids: Sequence[str]) -> dict[str, str]:
        """The recorded owners of some documents (one page of a list): {document id: owner}, unowned left out."""
        if not document_ids:
            return {}
        raw = await self._redis.hmget(self._key, list(document_ids))
        return {document_id: _text(value) for document_id, value in zip(document_ids, raw, strict=True) if value}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
