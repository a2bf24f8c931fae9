"""Audiences in Redis: static lists as one SET per partition (`b:{p:<n>}:aud:<id>`, sharded like users),
expressions evaluated per partition with set operations, and the index of every audience's definition.

- `b:{aud}:index` HASH audience id -> JSON {"kind": "list" | "expr", "size" (lists), "expr" (expressions),
  "created_ms", "updated_ms"}.
- A list is replaced through temporary keys (`b:{p:<n>}:audtmp:<token>:<id>`, with a TTL in case the
  writer dies) filled in pipelined chunks, then RENAMEd over the live key partition by partition: a
  reader of one partition sees the old list or the new one, never a mix.
- An expression is evaluated lazily, partition by partition: SUNIONSTORE / SINTERSTORE / SDIFFSTORE over
  the partition's keys (segment SETs, list SETs, intermediate results) — every key of a partition shares
  its hash tag, so this works on a cluster too — plus the hash sample filtered here. Intermediate results
  live under `b:{p:<n>}:audx:<token>:<n>` for the evaluation only (with a TTL as a safety net).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from cep.events import partition_of, partition_tag
from cep.segment_members import members_key
from rules.audiences import Node, Ref, Sample, parse_expression

INDEX_KEY = "b:{aud}:index"
LIST = "list"
EXPR = "expr"
MAX_IDS = 10_000_000  # ids in one upload (a 413 beyond)
CHUNK = 5_000  # ids buffered before a pipelined write
TEMP_TTL_S = 3_600  # a dead writer's temporary keys expire
EVAL_TTL_S = 600  # an evaluation's intermediate results and member-walk snapshots expire
MEMBERS_PAGE_MAX = 1000

# KEYS[1] the temporary SET, KEYS[2] the live SET (same partition, same slot).
# The temporary key carries a TTL against a dead writer: the live one must not inherit it.
_SWAP = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('PERSIST', KEYS[2])
else
  redis.call('DEL', KEYS[2])
end
return 1
"""


# KEYS[1] the destination, KEYS[2..] the operands (all of one partition: one slot); ARGV[1] the command
# (SUNIONSTORE, SINTERSTORE or SDIFFSTORE), ARGV[2] the TTL in seconds. A script, not a pipeline: a cluster
# client refuses multi-key commands in pipelines, and the result gets its TTL in the same step.
_STORE = """
local n = redis.call(ARGV[1], KEYS[1], unpack(KEYS, 2))
if n > 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return n
"""


async def _store(redis: Redis, command: str, dest: str, keys: list[str]) -> None:
    await redis.register_script(_STORE)(keys=[dest, *keys], args=[command, EVAL_TTL_S])


def list_key(partition: int, audience_id: str) -> str:
    """The SET of one static list's ids in one partition."""
    return f"b:{{{partition_tag(partition)}}}:aud:{audience_id}"


def _temp_key(partition: int, token: str, audience_id: str) -> str:
    return f"b:{{{partition_tag(partition)}}}:audtmp:{token}:{audience_id}"


def _eval_key(partition: int, token: str, n: int) -> str:
    return f"b:{{{partition_tag(partition)}}}:audx:{token}:{n}"


def _snapshot_key(partition: int, audience_id: str, token: str) -> str:
    return f"b:{{{partition_tag(partition)}}}:audsnap:{audience_id}:{token}"


def in_sample(user_id: str, salt: str, percent: float) -> bool:
    """Whether a user falls in a `percent` sample salted by an audience id: blake2b of the pair, so the
    same user stays in (or out) on every evaluation, and different audiences sample independently."""
    digest = hashlib.blake2b(f"{user_id}\x1f{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 1_000_000 < percent * 10_000


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


# -- the index ----------------------------------------------------------------------------------------


async def definitions(redis: Redis) -> dict[str, dict[str, Any]]:
    """Every audience's stored metadata, by id."""
    raw = await redis.hgetall(INDEX_KEY)
    return {_text(key): json.loads(value) for key, value in raw.items()}


async def definition(redis: Redis, audience_id: str) -> dict[str, Any] | None:
    """One audience's stored metadata, or None."""
    raw = await redis.hget(INDEX_KEY, audience_id)
    return None if raw is None else dict(json.loads(raw))


async def _store_meta(redis: Redis, audience_id: str, meta: dict[str, Any], now_ms: int) -> None:
    before = await definition(redis, audience_id)
    meta = {**meta, "created_ms": before["created_ms"] if before else now_ms, "updated_ms": now_ms}
    await redis.hset(INDEX_KEY, audience_id, json.dumps(meta, ensure_ascii=False))


async def put_expression(redis: Redis, partitions: int, audience_id: str, expr: Any, now_ms: int) -> None:
    """Store a validated expression (and drop the SETs of a list this audience was before)."""
    await _store_meta(redis, audience_id, {"kind": EXPR, "expr": expr}, now_ms)
    await _delete_lists(redis, partitions, audience_id)


async def delete(redis: Redis, partitions: int, audience_id: str) -> bool:
    """Forget an audience and its lists; False if there was none."""
    if not await redis.hdel(INDEX_KEY, audience_id):
        return False
    await _delete_lists(redis, partitions, audience_id)
    return True


async def _delete_lists(redis: Redis, partitions: int, audience_id: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.delete(list_key(partition, audience_id))
        await pipe.execute()


# -- static lists -------------------------------------------------------------------------------------


@dataclass
class ListWriter:
    """Receives a list's ids one by one, writes them to temporary SETs in pipelined chunks, and swaps them
    in on `commit` (or drops them on `abort`). Ids are expected checked already."""

    redis: Redis
    partitions: int
    audience_id: str
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    received: int = 0
    size: int = 0
    _buffers: dict[int, list[str]] = field(default_factory=dict)
    _buffered: int = 0

    async def add(self, user_id: str) -> None:
        """One more id (duplicates count once in the size)."""
        self.received += 1
        self._buffers.setdefault(partition_of(user_id, self.partitions), []).append(user_id)
        self._buffered += 1
        if self._buffered >= CHUNK:
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered."""
        if not self._buffered:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, ids in self._buffers.items():
                key = _temp_key(partition, self.token, self.audience_id)
                pipe.sadd(key, *ids)
                pipe.expire(key, TEMP_TTL_S)
            results = await pipe.execute()
        self.size += sum(int(added) for added in results[0::2])
        self._buffers.clear()
        self._buffered = 0

    async def commit(self, now_ms: int) -> int:
        """Swap the new list in, partition by partition, and record it; returns its size."""
        await self.flush()
        swap = self.redis.register_script(_SWAP)
        for partition in range(self.partitions):
            keys = [_temp_key(partition, self.token, self.audience_id), list_key(partition, self.audience_id)]
            await swap(keys=keys, args=[])
        await _store_meta(self.redis, self.audience_id, {"kind": LIST, "size": self.size}, now_ms)
        return self.size

    async def abort(self) -> None:
        """Drop the temporary SETs; the live list is untouched."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in range(self.partitions):
                pipe.delete(_temp_key(partition, self.token, self.audience_id))
            await pipe.execute()


# -- expressions --------------------------------------------------------------------------------------


Resolver = Callable[[str], "Node | str | None"]


def resolver(stored: Mapping[str, dict[str, Any]]) -> Resolver:
    """What an `aud:<id>` reference stands for: its parsed expression, LIST for a static list, None if gone."""

    def resolve(audience_id: str) -> Node | str | None:
        meta = stored.get(audience_id)
        if meta is None:
            return None
        if meta["kind"] == LIST:
            return LIST
        return parse_expression(meta["expr"], audience_id)

    return resolve


@dataclass
class _Evaluation:
    """One partition's evaluation: the intermediate keys it made, dropped by `close`."""

    redis: Redis
    partition: int
    resolve: Resolver
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    temps: list[str] = field(default_factory=list)

    def _temp(self) -> str:
        key = _eval_key(self.partition, self.token, len(self.temps))
        self.temps.append(key)
        return key

    async def key_of(self, node: Node, seen: tuple[str, ...] = ()) -> str:
        """A key holding the node's members in this partition (absent for none)."""
        if isinstance(node, Ref):
            if node.kind == "seg":
                return members_key(self.partition, node.id)
            target = self.resolve(node.id) if node.id not in seen else None  # a cycle (a racing PUT) is empty
            if target is None or target == LIST:
                return list_key(self.partition, node.id)  # absent for a deleted audience
            assert not isinstance(target, str)
            return await self.key_of(target, (*seen, node.id))
        if isinstance(node, Sample):
            return await self._sample(node, seen)
        keys = [await self.key_of(operand, seen) for operand in node.operands]
        if len(keys) == 1:
            return keys[0]
        dest = self._temp()
        command = {"union": "SUNIONSTORE", "intersect": "SINTERSTORE"}.get(node.op, "SDIFFSTORE")
        await _store(self.redis, command, dest, keys)
        return dest

    async def _sample(self, node: Sample, seen: tuple[str, ...]) -> str:
        source = await self.key_of(node.of, seen)
        dest = self._temp()
        kept: list[str] = []
        cursor = 0
        while True:
            cursor, members = await self.redis.sscan(source, cursor, count=CHUNK)
            kept.extend(m for m in map(_text, members) if in_sample(m, node.salt, node.percent))
            if len(kept) >= CHUNK or (cursor == 0 and kept):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.sadd(dest, *kept)
                    pipe.expire(dest, EVAL_TTL_S)
                    await pipe.execute()
                kept = []
            if cursor == 0:
                return dest

    async def close(self) -> None:
        """Drop the intermediate results."""
        if not self.temps:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in self.temps:
                pipe.delete(key)
            await pipe.execute()


def _root(audience_id: str, meta: dict[str, Any]) -> Node:
    """The node an audience's members are: its expression, or its own list."""
    if meta["kind"] == LIST:
        return Ref("aud", audience_id, "id")
    return parse_expression(meta["expr"], audience_id)


async def expression_size(
    redis: Redis, partitions: int, node: Node, stored: Mapping[str, dict[str, Any]], own_id: str = ""
) -> int:
    """Members of an expression now, summed over the partitions (evaluated one partition at a time)."""
    total = 0
    resolve = resolver(stored)
    for partition in range(partitions):
        evaluation = _Evaluation(redis, partition, resolve)
        try:
            total += int(await redis.scard(await evaluation.key_of(node, (own_id,) if own_id else ())))
        finally:
            await evaluation.close()
    return total


async def size(redis: Redis, partitions: int, audience_id: str, stored: Mapping[str, dict[str, Any]]) -> int:
    """An audience's size: a list's as recorded at upload, an expression's computed now."""
    meta = stored[audience_id]
    if meta["kind"] == LIST:
        return int(meta["size"])
    return await expression_size(redis, partitions, _root(audience_id, meta), stored, audience_id)


async def members_page(
    redis: Redis,
    partitions: int,
    audience_id: str,
    stored: Mapping[str, dict[str, Any]],
    cursor: str,
    count: int,
) -> tuple[list[str], str]:
    """Up to about `count` members from `cursor` ("" to start), and the next cursor ("" when done).

    A list's cursor is `<partition>:<SSCAN cursor>`, as a segment's. An expression's partition is
    evaluated when the walk reaches it, into a snapshot SET (kept `EVAL_TTL_S`) that SSCAN then walks;
    its cursor is `<partition>:<SSCAN cursor>:<snapshot token>`, so each partition is listed as it was
    when the walk reached it.
    """
    meta = stored[audience_id]
    expression = meta["kind"] == EXPR
    partition, scan, token = _parse_cursor(cursor, partitions, expression)
    found: list[str] = []
    while partition < partitions and len(found) < count:
        if expression:
            key = _snapshot_key(partition, audience_id, token)
            if scan == 0:
                await _snapshot(redis, partition, key, _root(audience_id, meta), stored, audience_id)
            elif not await redis.exists(key):
                raise ValueError(f"cursor {cursor!r} expired (a walk must go on within {EVAL_TTL_S} s)")
        else:
            key = list_key(partition, audience_id)
        scan, members = await redis.sscan(key, scan, count=count - len(found))
        found.extend(map(_text, members))
        if scan == 0:
            if expression:
                await redis.delete(key)
            partition += 1
    if partition >= partitions:
        return found, ""
    return found, f"{partition}:{scan}:{token}" if expression else f"{partition}:{scan}"


async def _snapshot(
    redis: Redis, partition: int, key: str, node: Node, stored: Mapping[str, dict[str, Any]], own_id: str
) -> None:
    evaluation = _Evaluation(redis, partition, resolver(stored))
    try:
        result = await evaluation.key_of(node, (own_id,))
        await _store(redis, "SUNIONSTORE", key, [result])
    finally:
        await evaluation.close()


async def snapshot_into(
    redis: Redis,
    partition: int,
    dest: str,
    node: Node,
    stored: Mapping[str, dict[str, Any]],
    minus: list[str],
) -> None:
    """Store a node's members of one partition in `dest`, less the members of the `minus` keys (a plan's
    earlier branches). `dest` gets the evaluation TTL; the caller sets the one it needs."""
    evaluation = _Evaluation(redis, partition, resolver(stored))
    try:
        result = await evaluation.key_of(node)
        await _store(redis, "SDIFFSTORE" if minus else "SUNIONSTORE", dest, [result, *minus])
    finally:
        await evaluation.close()


def _parse_cursor(cursor: str, partitions: int, expression: bool) -> tuple[int, int, str]:
    if not cursor:
        return 0, 0, secrets.token_hex(8) if expression else ""
    parts = cursor.split(":")
    wanted = 3 if expression else 2
    if (
        len(parts) != wanted
        or not (parts[0].isascii() and parts[0].isdigit() and parts[1].isascii() and parts[1].isdigit())
        or int(parts[0]) >= partitions
        or (expression and not (parts[2].isascii() and parts[2].isalnum()))
    ):
        raise ValueError(f"not a members cursor: {cursor!r}")
    return int(parts[0]), int(parts[1]), parts[2] if expression else ""
