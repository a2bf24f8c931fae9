"""Per-user keys, all in their partition's slot: the one module that names `b:{p:<n>}:u:<user>:*`.

Every key of a user carries its partition's hash tag, so the partition owner's commit
(`cep.commit`) writes a whole batch — users' state, their ledgers, the outbox, timers — atomically,
even on a Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from cep.events import partition_of, partition_tag
from cep.user_record import UserState, decode_user_state

STATE = "s"  # STRING: the packed user record (cep.user_record), written only by the partition owner
LEDGER = "acts"  # HASH action_id -> JSON action record (immutable)
LEDGER_INDEX = "actx"  # ZSET action_id -> created_at
LEDGER_STATUS = "astat"  # HASH action_id -> JSON delivery status
TRACE = "trace"  # LIST of JSON trace entries, newest first (cep.trace)


def user_key(partition: int, user_id: str, family: str) -> str:
    """The key of one family of one user's state, in the user's partition."""
    return f"b:{{{partition_tag(partition)}}}:u:{user_id}:{family}"


def user_key_for(partitions: int, user_id: str, family: str) -> str:
    """`user_key` for a caller that knows the partition count rather than the partition."""
    return user_key(partition_of(user_id, partitions), user_id, family)


async def load_states(redis: Redis, partition: int, user_ids: Sequence[str]) -> list[UserState]:
    """Many users' committed state in one MGET (one slot: the partition's); empty for unknown users."""
    if not user_ids:
        return []
    raws = await redis.mget([user_key(partition, user_id, STATE) for user_id in user_ids])
    return [decode_user_state(raw if isinstance(raw, bytes) or raw is None else raw.encode()) for raw in raws]


async def read_state(redis: Redis, partitions: int, user_id: str) -> UserState:
    """One user's committed state (what the API shows)."""
    (state,) = await load_states(redis, partition_of(user_id, partitions), [user_id])
    return state
