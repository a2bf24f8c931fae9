"""What every connector shares: the interface, JSON over HTTP with failures classified, message text."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from connectors.policy import connector_error, parse_retry_after

REPLY_LIMIT = 2_000  # characters of a provider reply kept in the ledger


class Connector(Protocol):
    """Delivers one action record to one provider; raises ConnectorError (via `connector_error`) on failure."""

    name: str  # the connector's label in metrics, caps and quiet-hours lists
    bucket: str  # the rate-limit bucket it draws from (several connectors may share a provider's)
    needs_profile: bool  # whether `send` reads recipient attributes from the profile

    async def send(self, action: Mapping[str, Any], profile: Mapping[str, Any]) -> Any:
        """Deliver `action`; returns the provider's reply (JSON-compatible)."""
        ...


def dumps(value: Any) -> bytes:
    """The JSON body bytes we send (compact, UTF-8; what a webhook signature covers)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_ms: int,
) -> Any:
    """One HTTP exchange: the decoded JSON reply (or text) on 2xx, a classified ConnectorError otherwise."""
    all_headers = {"Content-Type": "application/json", **(headers or {})} if body is not None else dict(headers or {})
    try:
        async with session.request(
            method, url, data=body, headers=all_headers, timeout=aiohttp.ClientTimeout(total=timeout_ms / 1000)
        ) as response:
            text = await response.text()
            status = response.status
            retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
    except TimeoutError:
        raise connector_error("timeout", f"{method} {_safe(url)}: no reply within {timeout_ms} ms") from None
    except aiohttp.ClientError as exc:
        raise connector_error("connection_error", f"{method} {_safe(url)}: {exc}") from None
    if 200 <= status < 300:
        try:
            return json.loads(text) if text else None
        except ValueError:
            return text[:REPLY_LIMIT]
    summary = f"{method} {_safe(url)}: HTTP {status}: {text[:200]}"
    if status == 429:
        raise connector_error("http_429", summary, retry_after)
    if status >= 500:
        raise connector_error("http_5xx", summary, retry_after)
    if status == 408:
        raise connector_error("timeout", summary, retry_after)
    # 409: an idempotent API still working on the same key (it will answer the retry).
    if status == 409:
        raise connector_error("conflict", summary, retry_after)
    raise connector_error("http_4xx", summary)


def _safe(url: str) -> str:
    # Query strings carry access tokens and secrets: never log them.
    return url.split("?", 1)[0]


def clip_reply(reply: Any) -> Any:
    """A provider reply small enough for the ledger record."""
    text = json.dumps(reply, ensure_ascii=False, default=str)
    return reply if len(text) <= REPLY_LIMIT else text[:REPLY_LIMIT]


def message_text(template: str, variables: Mapping[str, Any]) -> str:
    """Plain text of a message: `content` when the rule rendered one, else the template name and its values."""
    content = variables.get("content")
    if isinstance(content, str) and content:
        return content
    values = ", ".join(f"{key}: {_as_text(value)}" for key, value in variables.items())
    return f"[{template}] {values}" if values else f"[{template}]"


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def template_data(variables: Mapping[str, Any]) -> dict[str, Any]:
    """WeChat template `data`: each variable as {"value": text}; a variable already shaped so is kept."""
    return {
        key: value if isinstance(value, Mapping) and "value" in value else {"value": _as_text(value)}
        for key, value in variables.items()
    }
