"""The outbox: partitioned streams (`b:{p:<n>}:outbox`) of action records waiting for delivery, and the
capped per-partition list of recent actions that `GET /v1/actions` reads without a user."""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from cep.events import partition_tag

OUTBOX_FIELD = b"a"
RECENT_MAXLEN = 10_000


def outbox_key(partition: int) -> str:
    """The outbox stream of one partition."""
    return f"b:{{{partition_tag(partition)}}}:outbox"


def recent_key(partition: int) -> str:
    """Capped stream of (user, action id): the partition's newest actions across its users."""
    return f"b:{{{partition_tag(partition)}}}:recent"


def queue_action(pipe: Pipeline, partition: int, text: str) -> None:
    """Append an action record (JSON text) to its partition's outbox (on the caller's pipeline)."""
    pipe.xadd(outbox_key(partition), {OUTBOX_FIELD: text})


def note_recent(pipe: Pipeline, partition: int, user_id: str, action_id: str) -> None:
    """Remember an action in the partition's capped recent list (on the caller's pipeline)."""
    pipe.xadd(recent_key(partition), {b"u": user_id, b"a": action_id}, maxlen=RECENT_MAXLEN, approximate=True)
