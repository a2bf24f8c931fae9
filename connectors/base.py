"""What every connector shares: the interface, one bounded HTTP exchange with every failure classified,
message text."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from yarl import URL

from beacon.errors import ConnectorError
from connectors.policy import connector_error, parse_retry_after

log = logging.getLogger("beacon.connectors")

REPLY_LIMIT = 2_000  # characters of a provider reply kept in the ledger
EXCERPT_CHARS = 200  # characters of a reply body quoted in an error message, or kept of a webhook's reply
# Headers that frame the request or its hop, which aiohttp writes itself. A configured or rule header must
# not set them: `Host` picks another virtual host than the one checked, `Transfer-Encoding` against our
# `Content-Length` splits one request into two on some servers. `Content-Type` is ours when we send JSON.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "proxy-connection",
        "content-type",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but tab: CR, LF, NUL...


class Connector(Protocol):
    """Delivers one action record to one provider; raises ConnectorError (via `connector_error`) on failure."""

    name: str  # the connector's label in metrics, caps and quiet-hours lists
    bucket: str  # the rate-limit bucket it draws from (several connectors may share a provider's)
    needs_profile: bool  # whether `send` reads recipient attributes from the profile

    async def send(self, action: Mapping[str, Any], profile: Mapping[str, Any]) -> Any:
        """Deliver `action`; returns the provider's reply (JSON-compatible)."""
        ...


class RefusedAddress(OSError):
    """A resolver found no address it may connect to; aiohttp wraps it, `exchange` makes it `address_not_allowed`."""


def dumps(value: Any) -> bytes:
    """The JSON body bytes we send (compact, UTF-8; what a webhook signature covers)."""
    # A lone surrogate (an event attribute rendered into the body) has no UTF-8 form: it is sent as "?".
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")


def header_problem(name: str, value: str) -> str | None:
    """Why `name: value` cannot be sent as one HTTP header line, or None when it can."""
    if not _HEADER_NAME.fullmatch(name):
        return f"header name {name[:40]!r} is not an HTTP token"
    if _HEADER_VALUE_BAD.search(value):
        return f"header {name} carries a control character (CR, LF, NUL...)"
    return None


def outgoing_headers(given: Mapping[str, Any], reserved: frozenset[str] = RESERVED_HEADERS) -> dict[str, str]:
    """`given` as sent: names in `reserved` (lower case) left out, and any header that is not a valid header
    line refused with `invalid_request` (aiohttp would raise ValueError outside the connector error path)."""
    headers = {}
    for name, value in given.items():
        name, text = str(name), str(value)
        if name.lower() in reserved:
            continue
        problem = header_problem(name, text)
        if problem is not None:
            raise connector_error("invalid_request", problem)
        headers[name] = text
    return headers


@dataclass(frozen=True, slots=True)
class Reply:
    """A provider's answer as read: its status, at most the reply cap of its body, and the headers we use."""

    status: int
    text: str  # the body decoded by its charset (UTF-8 when none); undecodable bytes are U+FFFD
    truncated: bool  # the body was longer than the cap: the rest was never read
    retry_after: float | None
    location: str | None


@dataclass(frozen=True, slots=True)
class HttpClient:
    """A session and the bounds of one call (time, reply size), shared by the HTTP connectors."""

    session: aiohttp.ClientSession
    timeout_ms: int
    max_reply_bytes: int
    # Provider URLs are the operator's and their redirects are followed; webhooks follow their own (checked).
    follow_redirects: bool = True

    async def exchange(
        self,
        method: str,
        url: str | URL,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
    ) -> Reply:
        """One HTTP exchange, read within the caps; every failure to send or to read is a ConnectorError."""
        sent = outgoing_headers(headers or {})
        if body is not None:
            sent["Content-Type"] = "application/json"
        limit_ms = self.timeout_ms if timeout_ms is None else timeout_ms
        where = f"{method} {safe_url(url)}"
        try:
            async with self.session.request(
                method,
                url,
                data=body,
                headers=sent,
                allow_redirects=self.follow_redirects,
                timeout=aiohttp.ClientTimeout(total=limit_ms / 1000),
            ) as response:
                raw, truncated = await _read_capped(response.content, self.max_reply_bytes)
                if truncated:
                    response.close()  # the rest is never read: drop the connection rather than drain it
                return Reply(
                    status=response.status,
                    text=_decode(raw, response.charset),
                    truncated=truncated,
                    retry_after=parse_retry_after(response.headers.get("Retry-After"), time.time()),
                    location=response.headers.get("Location"),
                )
        except TimeoutError:
            raise connector_error("timeout", f"{where}: no reply within {limit_ms} ms") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                raise connector_error("address_not_allowed", f"{where}: {exc.os_error}") from None
            raise connector_error("connection_error", f"{where}: {exc}") from None
        except aiohttp.InvalidURL as exc:
            raise connector_error("invalid_request", f"{where}: not a URL that can be called ({exc})") from None
        except aiohttp.ClientError as exc:
            raise connector_error("connection_error", f"{where}: {exc}") from None
        except (ValueError, UnicodeError) as exc:
            # aiohttp refuses a URL or header it cannot write; retrying would refuse it again.
            raise connector_error("invalid_request", f"{where}: {exc}"[:300]) from None

    async def json(
        self, method: str, url: str | URL, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        """The decoded JSON reply (or its text) on 2xx, a classified ConnectorError otherwise."""
        return json_reply(method, url, await self.exchange(method, url, body=body, headers=headers))


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of a body, and whether it had more (one byte past the cap is read to know)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:limit], size > limit


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset name Python does not know
        return raw.decode("utf-8", errors="replace")


def json_reply(method: str, url: str | URL, reply: Reply) -> Any:
    """The decoded JSON body on 2xx (its text, capped, when it is not JSON); a classified ConnectorError otherwise."""
    if not 200 <= reply.status < 300:
        raise http_error(method, url, reply)
    if reply.truncated:
        log.warning("%s %s: reply longer than the reply cap; kept its start only", method, safe_url(url))
        return reply.text[:REPLY_LIMIT]
    try:
        return json.loads(reply.text) if reply.text else None
    except (ValueError, RecursionError):  # RecursionError: JSON nested past Python's recursion limit
        return reply.text[:REPLY_LIMIT]


def http_error(method: str, url: str | URL, reply: Reply) -> ConnectorError:
    """The ConnectorError for a non-2xx reply, classified by status (retryable or not)."""
    summary = f"{method} {safe_url(url)}: HTTP {reply.status}: {reply.text[:EXCERPT_CHARS]}"
    status, retry_after = reply.status, reply.retry_after
    if status == 429:
        return connector_error("http_429", summary, retry_after)
    if status >= 500:
        return connector_error("http_5xx", summary, retry_after)
    if status == 408:
        return connector_error("timeout", summary, retry_after)
    # 409: an idempotent API still working on the same key (it will answer the retry).
    if status == 409:
        return connector_error("conflict", summary, retry_after)
    return connector_error("http_4xx", summary)


def safe_url(url: str | URL) -> str:
    """A URL fit for logs and the ledger: query strings carry access tokens and secrets, so they are cut."""
    return str(url).split("?", 1)[0]


def storable(text: str, limit: int) -> str:
    """At most `limit` characters of `text` that Redis can store as UTF-8 (a lone surrogate, e.g. from a
    JSON `\\ud800` escape in a reply, would fail the write after the provider call)."""
    return text[:limit].encode("utf-8", "replace").decode("utf-8")


def clip_reply(reply: Any) -> Any:
    """A provider reply small and plain enough for the ledger record."""
    if not _shallow(reply, 20):
        return "(reply nested more than 20 levels deep: not kept)"
    text = json.dumps(reply, ensure_ascii=False, default=str)
    if len(text) > REPLY_LIMIT or storable(text, len(text)) != text:
        return storable(text, REPLY_LIMIT)
    return reply


def _shallow(value: Any, max_depth: int) -> bool:
    # Iterative: a deeply nested reply must not hit the recursion limit here, nor later in json.dumps.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children = list(item.values())
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        if depth > max_depth:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


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
