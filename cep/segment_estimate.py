"""Sizing a segment definition before it is saved (`POST /v1/segments:estimate`): its condition evaluated
over the users' stored records.

One pass of SCAN over the user state keys (`b:{p:<n>}:u:<user>:s`, `cep.user_state`) — on a Redis
Cluster, `scan_iter` visits every primary — fetches the records in batches (a pipeline of GETs),
decodes them and evaluates the compiled condition at `now_ms`, as the partition owner would, with the
user's profile, tags and kept behaviour history.

Exact up to `limit` records (by default `EXACT_LIMIT`). Beyond that, a hash sample: a user is evaluated
when `blake2b(user_id)` (64 bits) is below a threshold that starts at 2**64 and halves whenever more
than `limit` users are held, dropping the held users above the new threshold. The sample is therefore a
uniform one of every user whose hash is below the final threshold (between about `limit / 2` and
`limit` users), independent of the condition; the same users are sampled on every call. With `n`
sampled users of whom `m` match, out of `N` scanned:

    estimate = N * m / n
    error_bound = N * (|p~ - m / n| + 1.96 * sqrt(p~ (1 - p~) / (n + 4)) * sqrt((N - n) / (N - 1)))

where `p~ = (m + 2) / (n + 4)`: the Agresti-Coull 95 % interval (the binomial's normal approximation
after adding two members and two non-members, which stays honest when the sample holds no member or
only members), with the finite-population correction of a sample drawn without replacement, widened to
be centred on the reported estimate. `estimate +- error_bound` covers the true size in about 95 % of
populations.

Behaviour conditions see only the history the engine keeps: events of the shapes that some active
journey or segment reads, from when it was stored, within its window.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from beacon.errors import DecodeError
from cep.events import partition_of, partition_tag
from cep.user_record import UserState, decode_user_state
from cep.user_state import STATE
from rules.predicates import NO_ATTRS
from rules.segments import CompiledSegment

EXACT_LIMIT = 200_000  # records evaluated at most: the population up to which the size is exact
MIN_LIMIT = 100  # the smallest `limit` a caller may ask for
SCAN_COUNT = 1_000  # SCAN's COUNT hint
FETCH_BATCH = 1_000  # records fetched and evaluated together
Z95 = 1.959964  # the standard normal's 97.5th percentile
HASH_SPACE = 1 << 64
# Every partition's user state keys (`cep.user_state.user_key`); keys whose tag is not one of the
# configured partitions', or whose user does not belong to that partition, are left out.
STATE_MATCH = f"b:{{p:*}}:u:*:{STATE}"
_NO_HISTORY: list[Any] = []


@dataclass(frozen=True, slots=True)
class Estimate:
    """How many users a condition holds for: counted (`exact`) or estimated from a hash sample."""

    estimate: int
    exact: bool
    population: int  # user records scanned
    sampled: int  # records evaluated (all of them when exact)
    error_bound: int | None  # 95 % half-width when sampled; None when exact
    unreadable: int  # evaluated records that did not decode (counted as non-members)
    elapsed_ms: int

    def to_json(self) -> dict[str, Any]:
        """The wire form (`error_bound` only when sampled)."""
        body: dict[str, Any] = {
            "estimate": self.estimate,
            "exact": self.exact,
            "population": self.population,
            "sampled": self.sampled,
        }
        if self.error_bound is not None:
            body["error_bound"] = self.error_bound
        body["unreadable"] = self.unreadable
        body["elapsed_ms"] = self.elapsed_ms
        return body


def user_hash(user_id: str) -> int:
    """The 64-bit hash that decides whether a user is in the sample."""
    return int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "big")


def error_bound(population: int, sampled: int, matched: int) -> int:
    """The 95 % half-width around `population * matched / sampled` (see the module doc)."""
    if sampled <= 0:
        return population
    share = matched / sampled
    adjusted = (matched + 2) / (sampled + 4)
    width = Z95 * math.sqrt(adjusted * (1 - adjusted) / (sampled + 4))
    if population > 1:
        width *= math.sqrt(max(population - sampled, 0) / (population - 1))
    return math.ceil(population * (abs(adjusted - share) + width))


async def estimate_segment(
    redis: Redis, partitions: int, compiled: CompiledSegment, now_ms: int, limit: int | None = None
) -> Estimate:
    """Evaluate `compiled` over every stored user (or a hash sample of them beyond `limit`, by default
    `EXACT_LIMIT` as it is when called)."""
    started = time.monotonic()
    limit = EXACT_LIMIT if limit is None else limit
    tags = {partition_tag(partition): partition for partition in range(partitions)}
    threshold = HASH_SPACE  # users whose hash is below it are evaluated
    # user hash -> member? (True / False), or None when the record did not decode. Keyed by the hash so
    # that a key SCAN returns twice (it may, while the keyspace is resized) is evaluated once.
    held: dict[int, bool | None] = {}
    pending: list[tuple[bytes, int]] = []  # (key, user hash) to fetch
    scanned = 0

    async def flush() -> None:
        nonlocal threshold
        if not pending:
            return
        # GETs in one pipeline: a cluster client sends each node its keys (it refuses MGET in a pipeline).
        async with redis.pipeline(transaction=False) as pipe:
            for key, _ in pending:
                pipe.get(key)
            raws = await pipe.execute()
        for (_, digest), raw in zip(pending, raws, strict=True):
            if raw is not None:  # gone since the scan: the user no longer has a record
                held[digest] = _member(compiled, raw, now_ms)
        pending.clear()
        while len(held) > limit:
            threshold //= 2
            for digest in [digest for digest in held if digest >= threshold]:
                del held[digest]

    async for key in redis.scan_iter(match=STATE_MATCH, count=SCAN_COUNT, _type="string"):
        raw_key = key if isinstance(key, bytes) else str(key).encode()
        user_id = _user_of(raw_key, tags, partitions)
        if user_id is None:
            continue
        scanned += 1
        digest = user_hash(user_id)
        if digest < threshold:
            pending.append((raw_key, digest))
            if len(pending) >= FETCH_BATCH:
                await flush()
    await flush()

    exact = threshold == HASH_SPACE
    sampled = len(held)
    matched = sum(1 for member in held.values() if member)
    unreadable = sum(1 for member in held.values() if member is None)
    elapsed_ms = round((time.monotonic() - started) * 1000)
    if exact:
        return Estimate(matched, True, sampled, sampled, None, unreadable, elapsed_ms)
    # `scanned` may count a key twice if SCAN returned it twice (only while the keyspace is resized).
    population = max(scanned, sampled)
    estimate = round(population * matched / sampled) if sampled else 0
    bound = error_bound(population, sampled, matched)
    return Estimate(estimate, False, population, sampled, bound, unreadable, elapsed_ms)


def _user_of(key: bytes, tags: dict[str, int], partitions: int) -> str | None:
    """The user of a user state key; None for any other key, or a partition that is not configured or
    does not own the user."""
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    head, sep, rest = text.partition("}:u:")
    if not sep or not head.startswith("b:{") or not rest.endswith(":" + STATE):
        return None
    partition = tags.get(head[3:])
    user_id = rest[: -len(STATE) - 1]
    if partition is None or not user_id or partition_of(user_id, partitions) != partition:
        return None
    return user_id


def _member(compiled: CompiledSegment, raw: bytes | str, now_ms: int) -> bool | None:
    """Whether the user whose stored record is `raw` satisfies the condition now; None if unreadable."""
    try:
        state = decode_user_state(raw if isinstance(raw, bytes) else raw.encode())
    except DecodeError:
        return None
    return compiled.check(NO_ATTRS, state.profile, state.tags, _history_of(state), now_ms)


def _history_of(state: UserState) -> Callable[[str], list[Any]]:
    # The reader the journey runner's branches use (`cep.journeys`): a shape's kept events, oldest first.
    def history(shape_id: str) -> list[Any]:
        pattern = state.patterns.get(shape_id)
        return pattern.parts.get("h", {}).get("_", _NO_HISTORY) if pattern is not None else _NO_HISTORY

    return history
