"""Identities: aliases (`openid`, `unionid`, `phone`, `member_id`) that name one user, and the merges of users.

The one module that spells these key families and runs their Lua:

- `b:{p:<n>}:alias:<type>:<id>` STRING -> user id, in the partition `n = partition_of("<type>:<id>")`. An
  alias's first event (an alias nobody linked) creates the user `<type>:<id>`, whose state lives in that
  same partition: RESOLVE_SCRIPT writes the alias and that user's alias SET in one atomic step. Alias keys
  spread over the partitions' slots like users do, so a Redis Cluster holds them evenly.
- `b:{p:<n>}:u:<user>:aliases` SET of `<type>:<id>` in the user's partition: what `GET /v1/users/{id}`
  lists.
- `b:{ids}:merged` HASH source -> target: every merge ever decided, in one slot. MERGE_SCRIPT decides a
  merge between the *heads* of the two users (a head is a user not merged into anyone), so the merges
  form a forest: no user is merged twice and no chain of forwards loops, even when two requests link
  two users in opposite directions at once. Merges are rare (a login linking a guest to a member), so
  one slot is not a hot spot.

A link is atomic per alias (first link wins); an alias that already names another user is a merge of that
user into the requested one. The merge itself runs through the partitions' streams (`cep.merges`): a
`merge_out` item to the source's partition, then its state to the target's, each step atomic with its
partition's commit. What this module does outside a commit (re-pointing a merged user's aliases) is
idempotent, so a retried request completes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from cep.events import partition_of, partition_tag
from cep.scripts import ScriptCall, run_scripts
from cep.user_state import user_key

ALIAS_TYPES = ("openid", "unionid", "phone", "member_id")
ALIASES = "aliases"  # the per-user family (`cep.user_state.user_key`) of a user's alias SET
MERGED_KEY = "b:{ids}:merged"
MAX_CHAIN = 64  # merges followed from a user to its head; a longer chain means the registry is corrupt

# KEYS[2i - 1] alias i's key, KEYS[2i] the alias SET of the user its first event creates (all of one
#   partition's slot: the alias key and that user share it)
# ARGV[i] alias i (`<type>:<id>`, which is also that user's id)
# Returns {user, created, ...}: per alias the user it names, and 1 if this call created that user. An unknown
# alias becomes that new user atomically, so concurrent first events agree on whom they belong to.
RESOLVE_SCRIPT = """
local found = {}
for i = 1, #ARGV do
  local owner = redis.call('GET', KEYS[2 * i - 1])
  if owner then
    found[#found + 1] = owner
    found[#found + 1] = 0
  else
    redis.call('SET', KEYS[2 * i - 1], ARGV[i])
    redis.call('SADD', KEYS[2 * i], ARGV[i])
    found[#found + 1] = ARGV[i]
    found[#found + 1] = 1
  end
end
return found
"""

# KEYS[1] the alias key    ARGV[1] the user to link it to
# Returns the user the alias named before (false: none, and now it names ARGV[1]). First link wins: an alias
# that names someone else is left alone here (the caller merges that user into ARGV[1]).
LINK_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if owner then return owner end
redis.call('SET', KEYS[1], ARGV[1])
return false
"""

# KEYS[1] the alias key    ARGV[1] the user it should name now, ARGV[2..] users it may name before
# Re-points an alias from a merged user to the merge's target; an alias that names anyone else (linked again
# meanwhile) is left alone. Returns 1 when re-pointed.
REPOINT_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
for i = 2, #ARGV do
  if owner == ARGV[i] then
    redis.call('SET', KEYS[1], ARGV[1])
    return 1
  end
end
return 0
"""

# KEYS[1] the merge registry HASH source -> target
# ARGV[1] a user an alias named, ARGV[2] the user the alias is being linked to, ARGV[3] the longest chain
# Follows each to its head (a user merged into nobody). Different heads: records head(ARGV[1]) -> head(ARGV[2])
# and returns {source head, target head, 1}. The same head: returns {ARGV[1], what ARGV[1] was merged into
# ('' when it is the head itself), 0}, so a request retried after a crash re-sends that merge (idempotent).
MERGE_SCRIPT = """
local function head(user)
  for _ = 1, tonumber(ARGV[3]) do
    local target = redis.call('HGET', KEYS[1], user)
    if not target then return user end
    user = target
  end
  return nil
end
local source, target = head(ARGV[1]), head(ARGV[2])
if not source or not target then return redis.error_reply('merge chain longer than ' .. ARGV[3]) end
if source == target then
  return {ARGV[1], redis.call('HGET', KEYS[1], ARGV[1]) or '', 0}
end
redis.call('HSET', KEYS[1], source, target)
return {source, target, 1}
"""

# KEYS[1] the merge registry    ARGV[1] a user, ARGV[2] the longest chain
# Returns the user's head: itself unless it was merged, else the end of its chain of merges.
HEAD_SCRIPT = """
local user = ARGV[1]
for _ = 1, tonumber(ARGV[2]) do
  local target = redis.call('HGET', KEYS[1], user)
  if not target then return user end
  user = target
end
return redis.error_reply('merge chain longer than ' .. ARGV[2])
"""

IDENTITY_SCRIPTS = (RESOLVE_SCRIPT, LINK_SCRIPT, REPOINT_SCRIPT, MERGE_SCRIPT, HEAD_SCRIPT)


@dataclass(frozen=True, slots=True)
class Alias:
    """One alias: its type (one of ALIAS_TYPES) and its id within the type."""

    type: str
    id: str

    @property
    def name(self) -> str:
        """`<type>:<id>`: how aliases are listed, and the id of the user an unlinked alias's first event creates."""
        return f"{self.type}:{self.id}"


def parse_alias_name(name: str) -> Alias:
    """Inverse of `Alias.name`."""
    kind, _, alias_id = name.partition(":")
    return Alias(kind, alias_id)


@dataclass(frozen=True, slots=True)
class Merge:
    """A merge to carry out: `source`'s state goes into `target`'s (both heads when decided)."""

    source: str
    target: str


@dataclass(slots=True)
class LinkResult:
    """What a link request did: the user the aliases now name, and the merges it decided or re-sent."""

    user_id: str  # the user the aliases name now: the requested one, or the user it was merged into
    linked: list[Alias]  # newly linked
    already: list[Alias]  # linked to the user before (or now, through a merge)
    merges: list[Merge]
    # Users whose aliases now belong to `user_id` (merged into it, or merged while this request ran), and the
    # aliases this request found naming them: `move_aliases` re-points them.
    sources: list[str]
    moving: list[Alias]


def alias_key(alias: Alias, partitions: int) -> str:
    """The key of one alias, in the partition of the user its first event creates."""
    return f"b:{{{partition_tag(partition_of(alias.name, partitions))}}}:alias:{alias.name}"


def aliases_key(user_id: str, partitions: int) -> str:
    """A user's alias SET, in the user's partition."""
    return user_key(partition_of(user_id, partitions), user_id, ALIASES)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def resolve(redis: Redis, partitions: int, aliases: Sequence[Alias]) -> tuple[dict[Alias, str], int]:
    """The user each alias names, creating `<type>:<id>` for an unknown one, and how many were created: one
    pipelined round trip for all of them, one script call per partition (100 calls of one alias each cost
    3.3 ms of client time where one call per partition costs a fraction of it)."""
    by_partition: dict[int, list[Alias]] = {}
    for alias in dict.fromkeys(aliases):
        by_partition.setdefault(partition_of(alias.name, partitions), []).append(alias)
    groups = list(by_partition.values())
    calls = []
    for group in groups:
        keys = [key for alias in group for key in (alias_key(alias, partitions), aliases_key(alias.name, partitions))]
        calls.append(ScriptCall(RESOLVE_SCRIPT, keys, [alias.name for alias in group]))
    replies = await run_scripts(redis, calls)
    found: dict[Alias, str] = {}
    created = 0
    for group, reply in zip(groups, replies, strict=True):
        for index, alias in enumerate(group):
            found[alias] = _text(reply[2 * index])
            created += int(reply[2 * index + 1])
    return found, created


async def lookup(redis: Redis, partitions: int, alias: Alias) -> str | None:
    """The user an alias names, or None (creates nothing)."""
    raw = await redis.get(alias_key(alias, partitions))
    return None if raw is None else _text(raw)


async def head_of(redis: Redis, user_id: str) -> str:
    """The user `user_id` was merged into in the end (itself when never merged)."""
    (head,) = await run_scripts(redis, [ScriptCall(HEAD_SCRIPT, [MERGED_KEY], [user_id, MAX_CHAIN])])
    return _text(head)


async def aliases_of(redis: Redis, partitions: int, user_id: str) -> list[Alias]:
    """The aliases linked to a user, sorted."""
    members = await redis.smembers(aliases_key(user_id, partitions))
    return [parse_alias_name(_text(member)) for member in sorted(_text(m) for m in members)]


async def link(redis: Redis, partitions: int, user_id: str, aliases: Sequence[Alias]) -> LinkResult:
    """Link the aliases to the user (its head, if it was merged): each alias atomically, first link wins; an
    alias naming another user merges that user into this one. Returns the merges to carry out (`cep.merges`
    appends them); the caller re-points the merged users' aliases with `move_aliases` once they are queued."""
    target = await head_of(redis, user_id)
    distinct = list(dict.fromkeys(aliases))
    owners = await run_scripts(
        redis, [ScriptCall(LINK_SCRIPT, [alias_key(alias, partitions)], [target]) for alias in distinct]
    )
    linked: list[Alias] = []
    already: list[Alias] = []
    others: dict[str, list[Alias]] = {}
    for alias, owner in zip(distinct, owners, strict=True):
        if owner is None:
            linked.append(alias)
        elif _text(owner) == target:
            already.append(alias)
        else:
            others.setdefault(_text(owner), []).append(alias)
    merges: list[Merge] = []
    if others:
        replies = await run_scripts(
            redis, [ScriptCall(MERGE_SCRIPT, [MERGED_KEY], [other, target, MAX_CHAIN]) for other in others]
        )
        for reply in replies:
            source, into, new = _text(reply[0]), _text(reply[1]), int(reply[2])
            if new or into:
                merges.append(Merge(source, into))
    if linked:
        await redis.sadd(aliases_key(target, partitions), *(alias.name for alias in linked))
    moving = [alias for owner_aliases in others.values() for alias in owner_aliases]
    already.extend(moving)  # linked to the target once `move_aliases` re-points them
    sources = [*others, *(merge.source for merge in merges)]
    # The target itself may have been merged away while this ran (a link in the other direction at once): the
    # aliases then belong to the user it went into, as does everything the target had.
    final = await head_of(redis, target) if others else target
    if final != target:
        sources.append(target)
        moving.extend(linked)
    sources = [source for source in dict.fromkeys(sources) if source != final]
    return LinkResult(final, linked, already, merges, sources, moving)


async def move_aliases(
    redis: Redis, partitions: int, target: str, sources: Sequence[str], also: Sequence[Alias] = ()
) -> None:
    """Re-point every alias of the merged `sources` (and `also`) to `target`, and move them to its alias SET.

    Not one atomic step (the keys live in several slots), but each part is idempotent and conditional: an
    alias is re-pointed only while it still names one of the sources. Interrupted, the aliases left behind
    still work (their events are forwarded from the merged user) and the next link completes the move.
    """
    names: dict[str, None] = {alias.name: None for alias in also}
    for source in sources:
        members = await redis.smembers(aliases_key(source, partitions))
        names.update((_text(member), None) for member in members)
    if not names:
        return
    moving = [parse_alias_name(name) for name in names]
    await run_scripts(
        redis,
        [ScriptCall(REPOINT_SCRIPT, [alias_key(alias, partitions)], [target, *sources]) for alias in moving],
    )
    await redis.sadd(aliases_key(target, partitions), *names)
    for source in sources:
        await redis.srem(aliases_key(source, partitions), *names)
