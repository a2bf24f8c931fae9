"""Plain HTTP connectors: the merchant's coupon and points APIs, a generic SMS gateway, signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

from yarl import URL

from beacon.clock import Clock
from connectors.base import (
    EXCERPT_CHARS,
    RESERVED_HEADERS,
    HttpClient,
    Reply,
    dumps,
    http_error,
    outgoing_headers,
    safe_url,
    storable,
)
from connectors.outbound import WebhookTargets
from connectors.policy import connector_error
from connectors.settings import HttpEndpoint

SIGNATURE_HEADER = "X-Beacon-Signature"
TIMESTAMP_HEADER = "X-Beacon-Timestamp"
# Headers a rule's webhook `headers` may not set: the request's framing, our idempotency and signature.
# Set there, they are left out (the rest of the rule's headers are sent).
_RESERVED = RESERVED_HEADERS | frozenset(
    h.lower() for h in ("Idempotency-Key", SIGNATURE_HEADER, TIMESTAMP_HEADER, "Accept-Encoding")
)
# Not sent on to another origin when a webhook follows a redirect.
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})


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

    def __init__(self, name: str, endpoint: HttpEndpoint, http: HttpClient) -> None:
        self.name = self.bucket = name
        self._endpoint = endpoint
        self._http = http

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
        return await self._http.json("POST", self._endpoint.url, body=dumps(self.body(action)), headers=headers)


class SmsGateway:
    """A generic HTTP SMS gateway: POST {phone, template, params, out_id} to the configured URL."""

    name = bucket = "sms"
    needs_profile = True

    def __init__(self, endpoint: HttpEndpoint, phone_attr: str, http: HttpClient) -> None:
        self._endpoint = endpoint
        self._phone_attr = phone_attr
        self._http = http

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
        return await self._http.json("POST", self._endpoint.url, body=dumps(body), headers=headers)


class Webhook:
    """POST the action to the rule's URL, signed with HMAC-SHA256 over `<timestamp>.<body>`.

    The URL is the rule author's, so it goes through `WebhookTargets` (see connectors/outbound.py) and the
    ledger keeps only the status and a short excerpt of the reply: a rule cannot read a service through it.
    """

    name = bucket = "webhook"
    needs_profile = False

    def __init__(
        self, secret: str | None, targets: WebhookTargets, http: HttpClient, clock: Clock, max_redirects: int = 0
    ) -> None:
        self._secret = secret
        self._targets = targets
        self._http = http
        self._clock = clock
        self._max_redirects = max_redirects

    async def send(self, action: Mapping[str, Any], profile: Mapping[str, Any]) -> Any:
        """Sign and POST; the receiver checks the signature and the timestamp's age."""
        if not self._secret:
            raise connector_error("not_configured", "BEACON_WEBHOOK_SECRET is not set: webhooks are always signed")
        params = action.get("params") or {}
        target = self._targets.check(str(params.get("url") or ""))
        body = dumps({**envelope(action), "type": "webhook", "data": params.get("body") or {}})
        timestamp = str(self._clock.now_ms() // 1000)
        headers = {
            **outgoing_headers(params.get("headers") or {}, _RESERVED),
            "Idempotency-Key": action["idempotency_key"],
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
            "Accept-Encoding": "identity",
        }
        reply = await self._post(target, body, headers)
        if not 200 <= reply.status < 300:
            raise http_error("POST", target, reply)
        return {"http_status": reply.status, "excerpt": storable(reply.text, EXCERPT_CHARS)}

    async def _post(self, target: URL, body: bytes, headers: dict[str, str]) -> Reply:
        """POST, following up to `max_redirects` 307/308 redirects, each target checked; one timeout for all."""
        deadline = time.monotonic() + self._http.timeout_ms / 1000
        hops = 0
        while True:
            left_ms = max(int((deadline - time.monotonic()) * 1000), 1)
            reply = await self._http.exchange("POST", target, body=body, headers=headers, timeout_ms=left_ms)
            if not 300 <= reply.status < 400:
                return reply
            where = f"POST {safe_url(target)}: HTTP {reply.status} to {safe_url(reply.location or '(none)')[:200]}"
            # 301/302/303 turn a POST into a GET without the signed body: never followed.
            if reply.status not in (307, 308) or not reply.location or hops >= self._max_redirects:
                limit = f"BEACON_WEBHOOK_MAX_REDIRECTS={self._max_redirects}; only 307 and 308 are followed"
                raise connector_error("redirect_not_followed", f"{where}: not followed ({limit})")
            try:
                following = str(target.join(URL(reply.location)))
            except (ValueError, TypeError, UnicodeError):
                raise connector_error("invalid_request", f"{where}: the location is not a URL") from None
            checked = self._targets.check(following)
            if checked.origin() != target.origin():
                headers = {name: value for name, value in headers.items() if name.lower() not in _CREDENTIALS}
            target, hops = checked, hops + 1
