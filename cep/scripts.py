"""Pipelined EVALSHA for registered scripts, reloading a script once when the server lost it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
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


async def run_scripts(redis: Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run many script calls in one pipeline (not a transaction); returns their replies in order.

    Uses execute_command("EVALSHA") rather than pipe.evalsha because the cluster pipeline refuses the
    latter. A NOSCRIPT reply means that call did not run, so loading and re-running it is safe.
    """
    if not calls:
        return []
    replies = await _pipeline(redis, calls)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        for source in {calls[i].source for i in missing}:
            await redis.script_load(source)
        retried = await _pipeline(redis, [calls[i] for i in missing])
        for i, reply in zip(missing, retried, strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def _pipeline(redis: Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.execute_command("EVALSHA", script_sha(call.source), len(call.keys), *call.keys, *call.args)
        return list(await pipe.execute(raise_on_error=False))
