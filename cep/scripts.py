"""Pipelined EVALSHA for registered scripts, reloading a script once when the server lost it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One script invocation: its source, KEYS and ARGV."""

    source: str
    keys: Sequence[str]
    args: Sequence[Any]


_SHA_CACHE: dict[str, str] = {}


def script_sha(source: str) -> str:
    """SHA1 of a script's source, as EVALSHA wants it."""
    sha = _SHA_CACHE.get(source)
    if sha is None:
        import hashlib

        sha = _SHA_CACHE[source] = hashlib.sha1(source.encode()).hexdigest()
    return sha


class NotDurableError(Exception):
    """WAITAOF did not see the writes fsynced to the append-only file in time."""


async def register(redis: Redis, sources: Sequence[str]) -> None:
    """SCRIPT LOAD each script once at start-up, so the first batch pays no NOSCRIPT round trip.

    (A server that restarts or fails over forgets them: run_scripts still reloads on NOSCRIPT.)
    """
    for source in sources:
        await redis.script_load(source)


async def run_scripts(redis: Redis, calls: Sequence[ScriptCall], *, fsync_timeout_ms: int = 0) -> list[Any]:
    """Run many script calls in one pipeline (not a transaction); returns their replies in order.

    Uses execute_command("EVALSHA") rather than pipe.evalsha because the cluster pipeline refuses the
    latter. A NOSCRIPT reply means that call did not run, so loading and re-running it is safe.
    With `fsync_timeout_ms`, the pipeline ends with WAITAOF on the same connection, so the call returns
    only once those writes are fsynced to the append-only file (NotDurableError if not in time).
    Concurrent callers share the server's fsyncs: under load this batches itself.
    """
    if not calls:
        return []
    if len(calls) == 1 and not fsync_timeout_ms:
        return [await _one(redis, calls[0])]
    replies = await _pipeline(redis, calls, fsync_timeout_ms)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        for source in {calls[i].source for i in missing}:
            await redis.script_load(source)
        retried = await _pipeline(redis, [calls[i] for i in missing], fsync_timeout_ms)
        for i, reply in zip(missing, retried, strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def _one(redis: Redis, call: ScriptCall) -> Any:
    """One call without a pipeline: on a client holding its own connection, no pool is involved."""
    command = (len(call.keys), *call.keys, *call.args)
    try:
        return await redis.evalsha(script_sha(call.source), *command)
    except NoScriptError:
        await redis.script_load(call.source)
        return await redis.evalsha(script_sha(call.source), *command)


async def _pipeline(redis: Redis, calls: Sequence[ScriptCall], fsync_timeout_ms: int = 0) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.execute_command("EVALSHA", script_sha(call.source), len(call.keys), *call.keys, *call.args)
        waits = _queue_waitaof(redis, pipe, calls, fsync_timeout_ms) if fsync_timeout_ms else 0
        replies = list(await pipe.execute(raise_on_error=False))
    if waits:
        for synced in replies[-waits:]:
            if isinstance(synced, Exception):
                raise synced
            if int(synced[0]) < 1:
                raise NotDurableError(f"writes not fsynced within {fsync_timeout_ms} ms")
        del replies[-waits:]
    return replies


def _queue_waitaof(redis: Redis, pipe: Any, calls: Sequence[ScriptCall], timeout_ms: int) -> int:
    """Queue WAITAOF numlocal=1 after the calls, once per server that runs some; returns how many.

    WAITAOF covers the writes made before it on its connection. On one server that is the pipeline's
    connection. A cluster pipeline sends each node its commands in order on one connection, so one
    WAITAOF per node that received a call follows that node's writes. (A call redirected by MOVED or
    ASK during a resharding is re-sent apart from its node's WAITAOF: not covered.)
    """
    if not isinstance(redis, RedisCluster):
        pipe.execute_command("WAITAOF", 1, 0, timeout_ms)
        return 1
    nodes = {node.name: node for node in (redis.get_node_from_key(call.keys[0]) for call in calls if call.keys)}
    for node in nodes.values():
        pipe.execute_command("WAITAOF", 1, 0, timeout_ms, target_nodes=node)
    return len(nodes)
