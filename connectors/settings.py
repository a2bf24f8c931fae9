"""Connector settings: provider endpoints and credentials, and the delivery policy, from `BEACON_*` variables."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from beacon import environment
from beacon.environment import setting
from beacon.errors import ValidationError
from connectors.base import RESERVED_HEADERS, header_problem
from connectors.policy import RetryPolicy
from rules.durations import parse_duration

MESSAGE_CHANNELS = frozenset({"sms", "wechat_template", "wechat_cs", "miniprogram_subscribe", "wecom"})
WECHAT_API = "https://api.weixin.qq.com"
WECOM_API = "https://qyapi.weixin.qq.com"
WEB_PORTS = frozenset({80, 443})  # what an allow-list entry without a port allows


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def _headers(raw: str) -> dict[str, str]:
    """A JSON object of extra headers; refused at start, not at the first delivery, when every call would fail."""
    headers = {str(k): str(v) for k, v in _json_object(raw).items()}
    _check_headers(headers)
    return headers


def _api_base(raw: str) -> str:
    return raw.rstrip("/")


class HttpEndpoint(msgspec.Struct, frozen=True):
    """A merchant or gateway JSON API: where to POST, extra headers (auth), static fields merged into bodies."""

    url: Annotated[str | None, setting("URL to POST to")] = None
    headers: Annotated[
        Mapping[str, str],
        # A secret: it usually carries the endpoint's credentials (Authorization).
        setting("a JSON object of extra headers", parse=_headers, default="`{}`", secret=True),
    ] = msgspec.field(default_factory=dict)
    extra: Annotated[
        Mapping[str, Any],
        setting("a JSON object of fields merged into every body", parse=_json_object, default="`{}`"),
    ] = msgspec.field(default_factory=dict)
    # Sent as `Authorization: Bearer <token>` unless `headers` has one (`with_token`).
    token: Annotated[
        str | None, setting("sent as `Authorization: Bearer <token>` unless the headers set one", secret=True)
    ] = None

    def with_token(self, variable: str) -> HttpEndpoint:
        """The endpoint with its token in the headers (a header `headers` sets wins)."""
        if not self.token or "authorization" in {name.lower() for name in self.headers}:
            return self
        authorization = f"Bearer {self.token}"
        try:
            _check_headers({"Authorization": authorization})
        except ValueError as exc:
            raise ValidationError(str(exc), path=variable) from None
        return msgspec.structs.replace(self, headers={**self.headers, "Authorization": authorization})


class WeChatApp(msgspec.Struct, frozen=True):
    """An official account or mini program: API base, app id and secret, template name -> template id."""

    api_base: Annotated[str, setting("API base URL", parse=_api_base)] = WECHAT_API
    appid: Annotated[str | None, setting("app id")] = None
    secret: Annotated[str | None, setting("app secret", secret=True)] = None
    templates: Annotated[
        Mapping[str, str],
        setting(
            "`name=<template_id>,...`: a rule's `template` name mapped to a template id (an unmapped name is used "
            "as the id)",
            parse=_pairs,
            default="empty",
        ),
    ] = msgspec.field(default_factory=dict)
    openid_attr: Annotated[str, setting("the profile attribute holding the user's openid")] = "openid"


class WeComApp(msgspec.Struct, frozen=True):
    """A WeCom (enterprise WeChat) self-built app: corp id, app secret, agent id."""

    api_base: Annotated[str, setting("API base URL", parse=_api_base)] = WECOM_API
    corpid: Annotated[str | None, setting("corp id")] = None
    secret: Annotated[str | None, setting("the app's secret", secret=True)] = None
    agentid: Annotated[int | None, setting("the app's agent id")] = None
    user_attr: Annotated[str, setting("the profile attribute holding the user's WeCom id (the `wecom` channel)")] = (
        "wecom_userid"
    )


@dataclass(frozen=True, slots=True)
class AllowedHost:
    """One `BEACON_WEBHOOK_ALLOWED_HOSTS` entry: a host name, an IP address or a network, and its ports.

    A name matches a webhook URL naming that host; an address or network matches the address a webhook
    connects to, and exempts it from the deny-list (loopback, private, link-local...).
    """

    host: str  # a lower-case name without a trailing dot, or an address / network in canonical form
    ports: frozenset[int] | None = WEB_PORTS  # None: any port (`host:*`)

    def allows_port(self, port: int) -> bool:
        """Whether the entry covers `port`."""
        return self.ports is None or port in self.ports


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: `rate_per_s` sustained, `burst` at once."""

    rate_per_s: float
    burst: int


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """At most `limit` sends per user per channel in any `window_ms`."""

    limit: int
    window_ms: int


@dataclass(frozen=True, slots=True)
class QuietHours:
    """Local hours [start, end) in `timezone` during which messages wait; start > end wraps past midnight."""

    start: time
    end: time
    timezone: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        """The zoneinfo object of `timezone`."""
        return ZoneInfo(self.timezone)


def _c(name: str) -> str:
    """The variable of a consumer setting: `BEACON_CONNECTOR_<NAME>`."""
    return f"BEACON_CONNECTOR_{name}"


class ConnectorSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the outbox consumer and its connectors need; the lead embeds it in the process settings. Each
    field with a `setting(...)` is a variable (`beacon.environment`); docs/connectors.md's table is generated from
    them."""

    concurrency: Annotated[int, setting("deliveries in flight per process", env=_c("CONCURRENCY"), ge=1)] = 64
    batch: Annotated[int, setting("outbox entries read at once", env=_c("BATCH"), ge=1)] = 50
    block_ms: Annotated[int, setting("how long an outbox read waits for new entries", env=_c("BLOCK_MS"), ge=1)] = 200
    poll_ms: Annotated[int, setting("how often due retries and deferrals are looked for", env=_c("POLL_MS"), ge=1)] = (
        100
    )
    # A claimed delivery belongs to its consumer this long; past it another consumer may take over.
    lease_ms: Annotated[
        int,
        setting(
            "how long a claimed delivery belongs to its consumer; an attempt's provider calls are stopped at 3/4 of it",
            env=_c("LEASE_MS"),
            ge=1_000,
        ),
    ] = 60_000
    # One HTTP call, connection included; it must fit an attempt's budget (`attempt_budget_ms`).
    http_timeout_ms: Annotated[
        int,
        setting(
            "one provider call, connection included (a webhook and its redirects share one). It must fit in 3/4 "
            "of the lease (lease ≥ 4/3 × timeout), or the process refuses to start",
            env=_c("HTTP_TIMEOUT_MS"),
            ge=1,
        ),
    ] = 10_000
    # The rest of a reply is never read (a reply is an acknowledgement).
    max_reply_bytes: Annotated[
        int,
        setting(
            "bytes of a provider's reply body read at most; the rest is never read", env=_c("MAX_REPLY_BYTES"), ge=1024
        ),
    ] = 256 * 1024
    max_staleness_ms: Annotated[
        int,
        setting(
            "an action first taken more than this long after its due time (in event time: the triggering event's "
            "`ts`, plus its `delay`) is skipped as `stale`, so a replayed or late history, or a long outage, does "
            "not send a burst of overdue messages; an action's `max_staleness` overrides it; `0`: no bound",
            env=_c("MAX_STALENESS_MS"),
            ge=0,
        ),
    ] = 3_600_000
    retry: Annotated[RetryPolicy, setting("retries", group=True, env="BEACON_CONNECTOR_")] = msgspec.field(
        default_factory=RetryPolicy
    )
    dead_letter_maxlen: Annotated[
        int, setting("dead letters kept (approximately)", env=_c("DEAD_LETTER_MAXLEN"), ge=100)
    ] = 100_000
    rate_limits: Annotated[
        Mapping[str, RateLimit],
        setting(
            "token buckets per connector: `sms=10/s:20,coupon=50/s` (rate per second, and burst: one second's "
            "worth unless given)",
            env=_c("RATE_LIMITS"),
            parse=_rate_limits,
            default="none",
        ),
    ] = msgspec.field(default_factory=dict)
    # A rate-limited action may book a send slot at most this far ahead; past it, it asks again later.
    rate_limit_max_wait_ms: Annotated[
        int,
        setting("how far ahead a rate-limited action may book its send slot", env=_c("RATE_LIMIT_MAX_WAIT_MS"), ge=0),
    ] = 60_000
    frequency_caps: Annotated[
        Mapping[str, FrequencyCap],
        setting(
            "sends per user per channel in any window: `sms=2/24h,wechat_template=3/7d`; the name `marketing` caps "
            "every message channel together",
            env=_c("FREQUENCY_CAPS"),
            parse=_frequency_caps,
            default="none",
        ),
    ] = msgspec.field(default_factory=dict)
    quiet_hours: Annotated[
        QuietHours | None,
        setting(
            "`HH:MM-HH:MM` local hours during which messages on the quiet channels wait (start after end wraps "
            "past midnight)",
            env=_c("QUIET_HOURS"),
            parse=_quiet_hours,
        ),
    ] = None
    quiet_timezone: Annotated[str, setting("the quiet hours' time zone", env=_c("TIMEZONE"), parse=_zone)] = "UTC"
    quiet_channels: Annotated[
        frozenset[str],
        setting(
            "the channels quiet hours hold back, comma-separated",
            env=_c("QUIET_CHANNELS"),
            parse=_names,
            default="every message channel",
        ),
    ] = MESSAGE_CHANNELS
    coupon: Annotated[HttpEndpoint, setting("coupon API", group=True)] = HttpEndpoint()
    points: Annotated[HttpEndpoint, setting("points API", group=True)] = HttpEndpoint()
    sms: Annotated[HttpEndpoint, setting("SMS gateway", group=True)] = HttpEndpoint()
    sms_phone_attr: Annotated[str, setting("the profile attribute holding the user's phone number")] = "phone"
    webhook_secret: Annotated[
        str | None, setting("the key webhooks are signed with (required to send webhooks)", secret=True)
    ] = None
    # Empty: webhooks may call any public address. Otherwise only the listed hosts and ports.
    webhook_allowed_hosts: Annotated[
        frozenset[AllowedHost],
        setting(
            "webhook targets: `host`, `host:port`, `host:*`, `127.0.0.1:8080`, `[::1]:9000`, `10.1.2.0/24:443`; a "
            "bare host means ports 80 and 443. Loopback, private, link-local and metadata addresses are refused "
            "unless an address entry lists them ([operations](operations.md#outbound-http))",
            parse=parse_allowed_hosts,
            default="empty (any public address)",
        ),
    ] = frozenset()
    # Redirects a webhook follows (307 and 308 only, each checked like the first URL); 0: none.
    webhook_max_redirects: Annotated[
        int, setting("`307`/`308` redirects a webhook follows, each target checked like the first", ge=0)
    ] = 0
    wechat: Annotated[WeChatApp, setting("WeChat official account", group=True)] = WeChatApp()
    cs_window_ms: Annotated[
        int,
        setting(
            "customer-service messages are sent only within this long of the user's last interaction (a duration: "
            "`48h`)",
            env="BEACON_WECHAT_CS_WINDOW",
            parse=parse_duration,
            default="`48h`",
        ),
    ] = 48 * 3_600_000
    miniprogram: Annotated[
        WeChatApp, setting("mini program (its API base defaults to the official account's)", group=True)
    ] = WeChatApp(openid_attr="mp_openid")
    miniprogram_state: Annotated[
        Literal["formal", "trial", "developer"], setting("which version of the mini program messages open")
    ] = "formal"
    wecom: Annotated[WeComApp, setting("WeCom app", group=True)] = WeComApp()
    owner_attr: Annotated[
        str, setting("the profile attribute naming the user's owner (`notify_staff`)", env="BEACON_STAFF_OWNER_ATTR")
    ] = "owner"
    superior_attr: Annotated[
        str,
        setting("the profile attribute naming the owner's superior", env="BEACON_STAFF_SUPERIOR_ATTR"),
    ] = "owner_superior"

    @property
    def attempt_budget_ms(self) -> int:
        """How long one attempt's provider calls may take in all: three quarters of the lease, the last quarter
        kept for the Redis steps around them. An attempt that outlived its lease would be claimed and posted
        again by another consumer while its own post was still in flight."""
        return self.lease_ms * 3 // 4

    def secret_values(self) -> frozenset[str]:
        """The configured secrets (app secrets, the webhook signing key, endpoint tokens) for the log formatter
        to hide: a token is the value of its endpoint's Authorization header, less its scheme."""
        values = {self.webhook_secret, self.wechat.secret, self.miniprogram.secret, self.wecom.secret}
        for endpoint in (self.coupon, self.points, self.sms):
            values.add(endpoint.token)  # sent only when the headers have no Authorization of their own
            for name, value in endpoint.headers.items():
                if name.lower() == "authorization":
                    values.add(value.split(" ", 1)[-1])
        return frozenset(value for value in values if value)

    def check(self) -> None:
        """Refuse settings under which every slow call would be posted twice: one call must fit an attempt."""
        if self.http_timeout_ms > self.attempt_budget_ms:
            raise ValidationError(
                f"{self.lease_ms} ms is too short for BEACON_CONNECTOR_HTTP_TIMEOUT_MS={self.http_timeout_ms}: "
                f"a call may take at most 3/4 of the lease, so use at least {-(-self.http_timeout_ms * 4 // 3)} ms",
                path="BEACON_CONNECTOR_LEASE_MS",
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConnectorSettings:
        """Build connector settings from `BEACON_CONNECTOR_*`, `BEACON_<PROVIDER>_*` variables."""
        env = os.environ if env is None else env
        settings = environment.read(cls, env)
        changes: dict[str, Any] = {
            name: getattr(settings, name).with_token(f"BEACON_{name.upper()}_TOKEN")
            for name in ("coupon", "points", "sms")
        }
        if settings.quiet_hours is not None:
            changes["quiet_hours"] = dataclasses.replace(settings.quiet_hours, timezone=settings.quiet_timezone)
        if not (env.get("BEACON_MINIPROGRAM_API_BASE") or "").strip():
            changes["miniprogram"] = msgspec.structs.replace(settings.miniprogram, api_base=settings.wechat.api_base)
        settings = msgspec.structs.replace(settings, **changes)
        settings.check()
        return settings


def _check_headers(headers: Mapping[str, str]) -> None:
    """Refuse at start, not at the first delivery, a configured header that every call would fail on."""
    for name, value in headers.items():
        problem = header_problem(name, value)
        if name.lower() in RESERVED_HEADERS:
            problem = f"{name} is written by Beacon and cannot be configured"
        if problem is not None:
            raise ValueError(problem)


def _names(raw: str) -> frozenset[str]:
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def parse_allowed_hosts(raw: str) -> frozenset[AllowedHost]:
    """`hooks.example.com,127.0.0.1:8080,[::1]:9000,10.1.0.0/16:*` -> entries; no port means 80 and 443."""
    return frozenset(_allowed_host(item) for item in _names(raw))


def _allowed_host(item: str) -> AllowedHost:
    host = item
    ports: frozenset[int] | None = WEB_PORTS
    if item.startswith("["):
        host, closed, rest = item[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{item!r}: write an IPv6 address as [address] or [address]:port")
        if rest:
            ports = _ports(rest[1:], item)
    elif item.count(":") == 1:
        host, port_text = item.split(":")
        ports = _ports(port_text, item)
    try:
        canonical = str(ipaddress.ip_network(host, strict=False) if "/" in host else ipaddress.ip_address(host))
    except ValueError:
        canonical = host.lower().rstrip(".")
        if canonical.replace(".", "").isdigit() or ":" in canonical or "/" in canonical:
            raise ValueError(f"{item!r}: {host!r} is not a canonical IP address or network") from None
        if not re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", canonical):
            raise ValueError(f"{item!r}: {host!r} is not a host name") from None
    return AllowedHost(canonical, ports)


def _ports(text: str, item: str) -> frozenset[int] | None:
    if text == "*":
        return None
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65_535:
        raise ValueError(f"{item!r}: the port must be 1-65535 or *")
    return frozenset({int(text)})


def _pairs(raw: str) -> dict[str, str]:
    """`a=x,b=y` -> {"a": "x", "b": "y"}."""
    pairs = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{item!r} is not NAME=VALUE")
        pairs[name.strip()] = value.strip()
    return pairs


def _rate_limits(raw: str) -> dict[str, RateLimit]:
    """`sms=10/s:20,coupon=50/s` -> buckets (burst defaults to one second's worth, at least 1)."""
    limits = {}
    for name, spec in _pairs(raw).items():
        match = re.fullmatch(r"(\d+(?:\.\d+)?)/s(?::(\d+))?", spec)
        if not match or float(match.group(1)) <= 0:
            raise ValueError(f"{name}={spec!r}: use RATE/s or RATE/s:BURST, e.g. 10/s:20")
        rate = float(match.group(1))
        limits[name] = RateLimit(rate, int(match.group(2)) if match.group(2) else max(1, int(rate)))
    return limits


def _frequency_caps(raw: str) -> dict[str, FrequencyCap]:
    """`sms=2/24h,wechat_template=3/7d` -> caps per channel."""
    caps = {}
    for name, spec in _pairs(raw).items():
        count, sep, window = spec.partition("/")
        if not sep or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{name}={spec!r}: use COUNT/DURATION, e.g. 2/24h")
        caps[name] = FrequencyCap(int(count), parse_duration(window))
    return caps


def _quiet_hours(raw: str) -> QuietHours:
    """`HH:MM-HH:MM`, in UTC until `ConnectorSettings.from_env` gives it the configured zone."""
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", raw)
    if not match:
        raise ValueError(f"{raw!r} is not HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
        raise ValueError(f"{raw!r} is not a quiet period")
    return QuietHours(time(h1, m1), time(h2, m2))


def _zone(raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {raw!r}") from None
    return raw
