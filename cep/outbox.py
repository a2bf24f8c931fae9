"""The outbox: partitioned streams (`b:{p:<n>}:outbox`) of action records waiting for delivery."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio.client import Pipeline

OUTBOX_FIELD = b"a"
RECENT_KEY = "b:{recent}:actions"  # capped stream of (user, action id), newest actions across users
RECENT_MAXLEN = 10_000


def outbox_key(partition: int) -> str:
    """The outbox stream of one partition."""
    return f"b:{{p:{partition}}}:outbox"


def queue_action(pipe: Pipeline, partition: int, record: dict[str, Any]) -> None:
    """Append an action record to its partition's outbox (on the caller's pipeline)."""
    pipe.xadd(outbox_key(partition), {OUTBOX_FIELD: json.dumps(record, separators=(",", ":"))})


def note_recent(pipe: Pipeline, user_id: str, action_id: str) -> None:
    """Remember an action in the capped cross-user list that `GET /v1/actions` reads without a user."""
    pipe.xadd(RECENT_KEY, {b"u": user_id, b"a": action_id}, maxlen=RECENT_MAXLEN, approximate=True)
