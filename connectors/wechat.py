"""WeChat connectors: access tokens, template / customer-service / subscribe messages, WeCom app messages."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from redis.asyncio import Redis

from beacon.clock import Clock
from connectors.base import HttpClient, dumps, message_text, template_data
from connectors.policy import connector_error
from connectors.settings import WeChatApp, WeComApp

log = logging.getLogger("beacon.connectors")

INVALID_TOKEN = frozenset({40001, 42001, 40014})  # invalid credential, token expired, invalid token
ERRCODE_REASONS = {
    -1: "system_busy",
    45009: "quota_exhausted",  # the app's daily API quota
    45047: "quota_exhausted",  # customer-service messages to this user over WeChat's limit
    45033: "system_busy",  # WeCom: too many concurrent calls
    43101: "not_subscribed",  # the user declined (or used up) the subscription
    43004: "not_subscribed",  # the user does not follow the account
    45015: "outside_48h_window",  # no interaction within 48 h: customer-service messages refused
    40003: "invalid_recipient",  # not an openid of this app
    81013: "invalid_recipient",  # WeCom: no valid touser
    40037: "invalid_template",
}
# A token is refreshed this long before WeChat says it expires, so one in flight never expires mid-call.
EXPIRY_MARGIN_MS = 5 * 60_000


@dataclass(frozen=True, slots=True)
class TokenSource:
    """Where an app's access token comes from: WeChat (appid/secret) or WeCom (corpid/secret)."""

    kind: str  # "wechat" | "wecom"
    api_base: str
    app_id: str | None
    secret: str | None

    def url(self) -> str:
        """The documented token endpoint with the credentials as query parameters."""
        if self.kind == "wecom":
            query = {"corpid": self.app_id or "", "corpsecret": self.secret or ""}
            return f"{self.api_base}/cgi-bin/gettoken?{urlencode(query)}"
        query = {"grant_type": "client_credential", "appid": self.app_id or "", "secret": self.secret or ""}
        return f"{self.api_base}/cgi-bin/token?{urlencode(query)}"

    def cache_key(self) -> str:
        """Redis key of the shared cached token (its own hash tag: not per user)."""
        return f"b:{{tok}}:{self.kind}:{self.app_id}"


class AccessTokens:
    """Access tokens cached in Redis (shared by processes, so they do not invalidate each other's) until expiry."""

    def __init__(self, redis: Redis, http: HttpClient, clock: Clock) -> None:
        self._redis = redis
        self._http = http
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0

    async def get(self, source: TokenSource, *, stale: str | None = None) -> str:
        """A valid token; with `stale`, one other than that token (the provider rejected it)."""
        token = await self._cached(source, stale)
        if token:
            return token
        # One fetch per process at a time: concurrent senders wait for it instead of each fetching.
        lock = self._locks.setdefault(source.cache_key(), asyncio.Lock())
        async with lock:
            token = await self._cached(source, stale)
            return token or await self._fetch(source)

    async def _cached(self, source: TokenSource, stale: str | None) -> str | None:
        raw = await self._redis.get(source.cache_key())
        if not raw:
            return None
        cached = json.loads(raw)
        # Expiry follows the injected clock; the Redis TTL only collects the key.
        if cached["token"] == stale or cached["expires_at"] <= self._clock.now_ms():
            return None
        return str(cached["token"])

    async def _fetch(self, source: TokenSource) -> str:
        if not source.app_id or not source.secret:
            raise connector_error("not_configured", f"{source.kind} app id / secret are not set")
        self.fetches += 1
        reply = await self._http.json("GET", source.url())
        if not isinstance(reply, dict) or not reply.get("access_token"):
            code = reply.get("errcode") if isinstance(reply, dict) else None
            reason = "system_busy" if code == -1 else "invalid_credentials"
            raise connector_error(reason, f"{source.kind} token endpoint refused: {reply!r}"[:300])
        expires_in = reply.get("expires_in") or 7200
        if not isinstance(reply["access_token"], str) or not isinstance(expires_in, int) or expires_in < 1:
            raise connector_error("bad_reply", f"{source.kind} token endpoint: unusable reply {reply!r}"[:300])
        lifetime_ms = expires_in * 1000
        usable_ms = max(lifetime_ms - min(EXPIRY_MARGIN_MS, lifetime_ms // 10), 1_000)
        cached = {"token": reply["access_token"], "expires_at": self._clock.now_ms() + usable_ms}
        await self._redis.set(source.cache_key(), json.dumps(cached), px=lifetime_ms)
        return str(reply["access_token"])


class WeChatApi:
    """Calls one app's `POST /cgi-bin/...?access_token=` APIs; refreshes a rejected token once."""

    def __init__(self, source: TokenSource, tokens: AccessTokens, http: HttpClient):
        self.source = source
        self._tokens = tokens
        self._http = http

    async def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST `body`; the reply on errcode 0, else a ConnectorError with the errcode's reason."""
        data = dumps(body)
        token = await self._tokens.get(self.source)
        reply = await self._post(path, token, data)
        if reply.get("errcode") in INVALID_TOKEN:
            log.info("%s token rejected (errcode %s); refreshing once", self.source.kind, reply.get("errcode"))
            token = await self._tokens.get(self.source, stale=token)
            reply = await self._post(path, token, data)
        code = reply.get("errcode") or 0
        if code == 0:
            return reply
        if code in INVALID_TOKEN:
            raise connector_error("invalid_token", f"token rejected after a refresh: {reply}")
        reason = ERRCODE_REASONS.get(code, f"errcode_{code}")
        raise connector_error(reason, f"{path}: errcode {code}: {reply.get('errmsg', '')}")

    async def _post(self, path: str, token: str, data: bytes) -> dict[str, Any]:
        url = f"{self.source.api_base}{path}?{urlencode({'access_token': token})}"
        reply = await self._http.json("POST", url, body=data)
        # errcode is WeChat's number; anything else (a list, a string) would break the lookups in `post`.
        if not isinstance(reply, dict) or not isinstance(reply.get("errcode") or 0, int):
            raise connector_error("bad_reply", f"{path}: expected an object with a numeric errcode: {reply!r}"[:300])
        return reply


def _recipient(profile: Mapping[str, Any], attr: str) -> str:
    value = profile.get(attr)
    if not value:
        raise connector_error("no_recipient", f"profile has no {attr!r}")
    return str(value)


class WeChatTemplate:
    """Official-account template message: POST /cgi-bin/message/template/send."""

    name = "wechat_template"
    bucket = "wechat"
    needs_profile = True

    def __init__(self, api: WeChatApi, app: WeChatApp) -> None:
        self._api, self._app = api, app

    async def send(self, action: Mapping[str, Any], profile: Mapping[str, Any]) -> Any:
        """Send to the profile's openid; `client_msg_id` lets WeChat drop a retried duplicate."""
        params = action.get("params") or {}
        template = str(params.get("template"))
        body: dict[str, Any] = {
            "touser": _recipient(profile, self._app.openid_attr),
            "template_id": self._app.templates.get(template, template),
            "data": template_data(params.get("params") or {}),
            "client_msg_id": action["idempotency_key"],
        }
        if params.get("url"):
            body["url"] = params["url"]
        if params.get("miniprogram"):
            body["miniprogram"] = params["miniprogram"]
        return await self._api.post("/cgi-bin/message/template/send", body)


class WeChatCustomerService:
    """Customer-service message (POST /cgi-bin/message/custom/send): text, or the msgtype the rule names."""

    name = "wechat_cs"
    bucket = "wechat"
    needs_profile = True

    def __init__(self, api: WeChatApi, app: WeChatApp) -> None:
        self._api, self._app = api, app

    async def send(self, action: Mapping[str, Any], profile: Mapping[str, Any]) -> Any:
        """Send to the profile's openid (the 48 h window is checked before this is called)."""
        params = action.get("params") or {}
        variables = params.get("params") or {}
        touser = _recipient(profile, self._app.openid_attr)
        msgtype = variables.get("msgtype")
        if isinstance(msgtype, str) and isinstance(variables.get(msgtype), Mapping):
            body = {"touser": touser, "msgtype": msgtype, msgtype: variables[msgtype]}
        else:
            body = {
                "touser": touser,
                "msgtype": "text",
                "text": {"content": message_text(params.get("template", ""), variables)},
            }
        return await self._api.post("/cgi-bin/message/custom/send", body)


class MiniProgramSubscribe:
    """Mini-program subscription message: POST /cgi-bin/message/subscribe/send."""

    name = "miniprogram_subscribe"
    bucket = "miniprogram"
    needs_profile = True

    def __init__(self, api: WeChatApi, app: WeChatApp, state: str) -> None:
        self._api, self._app, self._state = api, app, state

    async def send(self, action: Mapping[str, Any], profile: Mapping[str, Any]) -> Any:
        """Send to the profile's mini-program openid."""
        params = action.get("params") or {}
        template = str(params.get("template"))
        body: dict[str, Any] = {
            "touser": _recipient(profile, self._app.openid_attr),
            "template_id": self._app.templates.get(template, template),
            "data": template_data(params.get("params") or {}),
            "miniprogram_state": self._state,
            "lang": "zh_CN",
        }
        if params.get("page"):
            body["page"] = params["page"]
        return await self._api.post("/cgi-bin/message/subscribe/send", body)


class WeComMessage:
    """WeCom app text message (POST /cgi-bin/message/send) to the profile's WeCom user, or to its staff owner."""

    bucket = "wecom"
    needs_profile = True

    def __init__(self, api: WeChatApi, app: WeComApp, *, staff: tuple[str, str] | None = None) -> None:
        # staff = (owner attribute, superior attribute): the notify_staff action; None: the wecom channel.
        self.name = "notify_staff" if staff else "wecom"
        self._api, self._app, self._staff = api, app, staff

    def recipients(self, action: Mapping[str, Any], profile: Mapping[str, Any]) -> list[str]:
        """Who gets it: the user's WeCom id, or the owner (and the superior when the rule asks)."""
        if self._staff is None:
            return [_recipient(profile, self._app.user_attr)]
        owner_attr, superior_attr = self._staff
        people = [_recipient(profile, owner_attr)]
        superior = profile.get(superior_attr)
        if (action.get("params") or {}).get("notify_superior") and superior and str(superior) not in people:
            people.append(str(superior))
        return people

    async def send(self, action: Mapping[str, Any], profile: Mapping[str, Any]) -> Any:
        """Send; WeCom's duplicate check (same content within 30 min) guards a retried send."""
        if self._app.agentid is None:
            raise connector_error("not_configured", "BEACON_WECOM_AGENTID is not set")
        params = action.get("params") or {}
        variables = dict(params.get("params") or {})
        if self._staff is not None:
            variables.setdefault("user_id", action.get("user_id"))
        recipients = self.recipients(action, profile)
        body = {
            "touser": "|".join(recipients),
            "msgtype": "text",
            "agentid": self._app.agentid,
            "text": {"content": message_text(str(params.get("template", "")), variables)},
            "enable_duplicate_check": 1,
            "duplicate_check_interval": 1800,
        }
        reply = await self._api.post("/cgi-bin/message/send", body)
        if reply.get("invaliduser") and set(str(reply["invaliduser"]).split("|")) >= set(recipients):
            raise connector_error("invalid_recipient", f"WeCom refused every recipient: {reply['invaliduser']}")
        return reply
