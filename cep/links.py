"""Tracked links: `{{link "https://..."}}` in an action's params becomes a short Beacon link per action and
link, and `GET /c/{token}` redirects to the URL and records a `click` event for the user.

A token is `<partition in base 36>-<16 characters>`: 12 bytes of HMAC-SHA256 over (action id, link index)
under the deployment's link secret, so it is unguessable, and the same firing evaluated again after a crash
mints the same token. What it points to — the user, the action and its rule / journey / plan, and the URL,
which only ever comes from a rendered template (no open redirect) — is written by the partition owner's
commit with the action, under `b:{p:<n>}:lk:<token>` (this module owns that key family), and expires with
the ledger's retention.

The secret is `BEACON_LINK_SECRET`, or one generated once per Redis (`b:{meta}:link-secret`, SET NX) so
every process of a deployment signs alike without configuration.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from cep.events import partition_of, partition_tag

SECRET_KEY = "b:{meta}:link-secret"
TOKEN_BYTES = 12
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
# The fields of an action record a link record copies: who and what the click is attributed to.
ATTRIBUTION_FIELDS = (
    "ruleset_id", "rule_id", "journey_id", "node_id", "plan_id", "occurrence", "source", "trigger_id", "entry",
)  # fmt: skip


def link_key(partition: int, token: str) -> str:
    """The record of one tracked link."""
    return f"b:{{{partition_tag(partition)}}}:lk:{token}"


def _base36(number: int) -> str:
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = _DIGITS[digit] + text
        if not number:
            return text


def token_partition(token: str, partitions: int) -> int | None:
    """The partition a token's record lives in, or None for a token that is not one of ours."""
    head, dash, tail = token.partition("-")
    if not dash or not 1 <= len(head) <= 4 or len(tail) != TOKEN_BYTES * 4 // 3 or not head.isalnum():
        return None
    try:
        partition = int(head, 36)
    except ValueError:
        return None
    return partition if partition < partitions else None


@dataclass(frozen=True, slots=True)
class LinkSigner:
    """Mints tokens and short URLs for one deployment (its secret, its public base URL)."""

    base_url: str
    secret: bytes
    partitions: int

    def token(self, user_id: str, action_id: str, index: int) -> str:
        """The token of link `index` of a user's action (deterministic: the same firing mints the same one);
        it names the user's partition, where the commit writes its record."""
        mac = hmac.new(self.secret, f"{action_id}\x1f{index}".encode(), hashlib.sha256).digest()[:TOKEN_BYTES]
        partition = partition_of(user_id, self.partitions)
        return f"{_base36(partition)}-{base64.urlsafe_b64encode(mac).decode()}"

    def url(self, token: str) -> str:
        """The short link a message carries."""
        return f"{self.base_url.rstrip('/')}/c/{token}"


@dataclass(slots=True)
class ActionLinks:
    """The links one action's rendering minted, in order: (token, URL)."""

    signer: LinkSigner | None
    user_id: str
    action_id: str
    minted: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, url: str) -> str:
        """What `{{link "url"}}` renders to: the short link, or the URL itself where nothing tracks links
        (dry-runs and backtests)."""
        if self.signer is None:
            return url
        token = self.signer.token(self.user_id, self.action_id, len(self.minted))
        self.minted.append((token, url))
        return self.signer.url(token)


def link_record(action: dict[str, Any], index: int, url: str) -> str:
    """What a link's key holds: the URL, the user, the action and what the action came from."""
    record = {"url": url, "user_id": action["user_id"], "action_id": action["action_id"], "index": index}
    record.update((name, action[name]) for name in ATTRIBUTION_FIELDS if action.get(name) is not None)
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


async def deployment_secret(redis: Redis, configured: str | None) -> bytes:
    """The link secret: configured, or the deployment's (made by the first process to ask)."""
    if configured:
        return configured.encode()
    await redis.set(SECRET_KEY, secrets.token_hex(32), nx=True)
    stored = await redis.get(SECRET_KEY)
    assert stored is not None
    return bytes(stored) if isinstance(stored, bytes | bytearray) else str(stored).encode()


async def resolve(redis: Redis, partitions: int, token: str) -> dict[str, Any] | None:
    """A token's link record, or None (unknown, malformed or expired)."""
    partition = token_partition(token, partitions)
    if partition is None:
        return None
    raw = await redis.get(link_key(partition, token))
    return json.loads(raw) if raw is not None else None
