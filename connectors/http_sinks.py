"""Plain HTTP connectors: the merchant's coupon and points APIs, a generic SMS gateway, signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from beacon.clock import Clock
from connectors.base import dumps, request_json
from connectors.policy import connector_error
from connectors.settings import HttpEndpoint

SIGNATURE_HEADER = "X-Beacon-Signature"
TIMESTAMP_HEADER = "X-Beacon-Timestamp"
# Headers a rule's webhook `headers` may not override: they carry our idempotency and signature.
_RESERVED = frozenset(h.lower() for h in ("Idempotency-Key", SIGNATURE_HEADER, TIMESTAMP_HEADER, "Content-Type"))


def envelope(action: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every outgoing body carries to identify the action."""
    return {
        "idempotency_key": action["idempotency_key"],
        "action_id": action["action_id"],
        "user_id": action["user_id"],
        "ruleset_id": action["ruleset_id"],
        "ruleset_version": action.get("ruleset_version"),
        "rule_id": action["rule_id"],
        "event_id": action.get("event_id"),
        "created_at": action.get("created_at"),
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 over `<timestamp>.<body>` (what `X-Beacon-Signature` carries)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class MerchantApi:
    """Coupon or points issuing on the merchant's JSON API; `Idempotency-Key` makes retries safe."""

    needs_profile = False

    def __init__(self, name: str, endpoint: HttpEndpoint, session: aiohttp.ClientSession, timeout_ms: int) -> None:
        self.name = self.bucket = name
        self._endpoint = endpoint
        self._session = session
        self._timeout_ms = timeout_ms

    def body(self, action: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON body: the envelope, the action's own fields, and the configured static fields."""
        params = dict(action.get("params") or {})
        if self.name == "coupon":
            own = {"coupon_id": params.get("coupon_id"), "quantity": params.get("quantity", 1)}
        else:
            own = {"amount": params.get("amount"), "reason": params.get("reason")}
        return {**envelope(action), **own, "params": params.get("params") or {}, **self._endpoint.extra}

    async def send(self, action: Mapping[str, Any], profile: Mapping[str, Any]) -> Any:
        """POST the body with the idempotency key as a header."""
        if not self._endpoint.url:
            raise connector_error("not_configured", f"BEACON_{self.name.upper()}_URL is not set")
        headers = {**self._endpoint.headers, "Idempotency-Key": action["idempotency_key"]}
        return await request_json(
            self._session,
            "POST",
            self._endpoint.url,
            body=dumps(self.body(action)),
            headers=headers,
            timeout_ms=self._timeout_ms,
        )


class SmsGateway:
    """A generic HTTP SMS gateway: POST {phone, template, params, out_id} to the configured URL."""

    name = bucket = "sms"
    needs_profile = True

    def __init__(
        self, endpoint: HttpEndpoint, phone_attr: str, session: aiohttp.ClientSession, timeout_ms: int
    ) -> None:
        self._endpoint = endpoint
        self._phone_attr = phone_attr
        self._session = session
        self._timeout_ms = timeout_ms

    async def send(self, action: Mapping[str, Any], profile: Mapping[str, Any]) -> Any:
        """Send one templated SMS to the phone number on the profile."""
        if not self._endpoint.url:
            raise connector_error("not_configured", "BEACON_SMS_URL is not set")
        phone = profile.get(self._phone_attr)
        if not phone:
            raise connector_error("no_recipient", f"profile has no {self._phone_attr!r}")
        params = action.get("params") or {}
        body = {
            "phone": str(phone),
            "template": params.get("template"),
            "params": params.get("params") or {},
            # Gateways dedupe on an out-id of ours; the header covers those that read it instead.
            "out_id": action["idempotency_key"],
            **self._endpoint.extra,
        }
        headers = {**self._endpoint.headers, "Idempotency-Key": action["idempotency_key"]}
        return await request_json(
            self._session, "POST", self._endpoint.url, body=dumps(body), headers=headers, timeout_ms=self._timeout_ms
        )


class Webhook:
    """POST the action to the rule's URL, signed with HMAC-SHA256 over `<timestamp>.<body>`."""

    name = bucket = "webhook"
    needs_profile = False

    def __init__(
        self,
        secret: str | None,
        allowed_hosts: frozenset[str],
        session: aiohttp.ClientSession,
        clock: Clock,
        timeout_ms: int,
    ) -> None:
        self._secret = secret
        self._allowed_hosts = allowed_hosts
        self._session = session
        self._clock = clock
        self._timeout_ms = timeout_ms

    async def send(self, action: Mapping[str, Any], profile: Mapping[str, Any]) -> Any:
        """Sign and POST; the receiver checks the signature and the timestamp's age."""
        if not self._secret:
            raise connector_error("not_configured", "BEACON_WEBHOOK_SECRET is not set: webhooks are always signed")
        params = action.get("params") or {}
        url = str(params.get("url") or "")
        host = urlsplit(url).hostname or ""
        if self._allowed_hosts and host not in self._allowed_hosts:
            raise connector_error("host_not_allowed", f"{host!r} is not in BEACON_WEBHOOK_ALLOWED_HOSTS")
        body = dumps({**envelope(action), "type": "webhook", "data": params.get("body") or {}})
        timestamp = str(self._clock.now_ms() // 1000)
        extra = {k: str(v) for k, v in (params.get("headers") or {}).items() if k.lower() not in _RESERVED}
        headers = {
            **extra,
            "Idempotency-Key": action["idempotency_key"],
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        return await request_json(self._session, "POST", url, body=body, headers=headers, timeout_ms=self._timeout_ms)
