"""Connector settings: provider endpoints and credentials, and the delivery policy, from `BEACON_*` variables."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import time
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from beacon.errors import ValidationError
from connectors.base import RESERVED_HEADERS, header_problem
from connectors.policy import RetryPolicy
from rules.durations import parse_duration

MESSAGE_CHANNELS = frozenset({"sms", "wechat_template", "wechat_cs", "miniprogram_subscribe", "wecom"})
WECHAT_API = "https://api.weixin.qq.com"
WECOM_API = "https://qyapi.weixin.qq.com"
WEB_PORTS = frozenset({80, 443})  # what an allow-list entry without a port allows
# The secrets among the variables read here: each may be given as <NAME>_FILE instead, a file holding the value
# (Docker and Kubernetes secrets; beacon.settings reads it), and their values never appear in a log line.
SECRET_VARIABLES = (
    "BEACON_WECHAT_SECRET",
    "BEACON_MINIPROGRAM_SECRET",
    "BEACON_WECOM_SECRET",
    "BEACON_COUPON_TOKEN",
    "BEACON_POINTS_TOKEN",
    "BEACON_SMS_TOKEN",
    "BEACON_WEBHOOK_SECRET",
)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HttpEndpoint:
    """A merchant or gateway JSON API: where to POST, extra headers (auth), static fields merged into bodies."""

    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WeChatApp:
    """An official account or mini program: API base, app id and secret, template name -> template id."""

    api_base: str = WECHAT_API
    appid: str | None = None
    secret: str | None = None
    templates: Mapping[str, str] = field(default_factory=dict)
    openid_attr: str = "openid"


@dataclass(frozen=True, slots=True)
class WeComApp:
    """A WeCom (enterprise WeChat) self-built app: corp id, app secret, agent id."""

    api_base: str = WECOM_API
    corpid: str | None = None
    secret: str | None = None
    agentid: int | None = None
    user_attr: str = "wecom_userid"


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


@dataclass(frozen=True, slots=True)
class ConnectorSettings:
    """Everything the outbox consumer and its connectors need; the lead embeds it in the process settings."""

    batch: int = 50
    concurrency: int = 64
    block_ms: int = 200
    poll_ms: int = 100
    # A claimed delivery belongs to its consumer this long; past it another consumer may take over.
    lease_ms: int = 60_000
    # One HTTP call, connection included; it must fit an attempt's budget (`attempt_budget_ms`).
    http_timeout_ms: int = 10_000
    # Bytes of a provider's reply body read at most; the rest is never read (a reply is an acknowledgement).
    max_reply_bytes: int = 256 * 1024
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)
    # A rate-limited action may book a send slot at most this far ahead; past it, it asks again later.
    rate_limit_max_wait_ms: int = 60_000
    frequency_caps: Mapping[str, FrequencyCap] = field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    quiet_channels: frozenset[str] = MESSAGE_CHANNELS
    cs_window_ms: int = 48 * 3_600_000
    coupon: HttpEndpoint = HttpEndpoint()
    points: HttpEndpoint = HttpEndpoint()
    sms: HttpEndpoint = HttpEndpoint()
    sms_phone_attr: str = "phone"
    webhook_secret: str | None = None
    # Empty: webhooks may call any public address. Otherwise only the listed hosts and ports.
    webhook_allowed_hosts: frozenset[AllowedHost] = frozenset()
    # Redirects a webhook follows (307 and 308 only, each checked like the first URL); 0: none.
    webhook_max_redirects: int = 0
    wechat: WeChatApp = WeChatApp()
    miniprogram: WeChatApp = WeChatApp(openid_attr="mp_openid")
    miniprogram_state: str = "formal"
    wecom: WeComApp = WeComApp()
    owner_attr: str = "owner"
    superior_attr: str = "owner_superior"
    dead_letter_maxlen: int = 100_000

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
        read = _Reader(os.environ if env is None else env)
        base = cls()
        retry = RetryPolicy(
            max_attempts=read.integer("CONNECTOR_MAX_ATTEMPTS", base.retry.max_attempts, 1),
            base_delay_ms=read.integer("CONNECTOR_BACKOFF_BASE_MS", base.retry.base_delay_ms, 1),
            max_delay_ms=read.integer("CONNECTOR_BACKOFF_MAX_MS", base.retry.max_delay_ms, 1),
            jitter=read.parsed("CONNECTOR_BACKOFF_JITTER", base.retry.jitter, _fraction),
        )
        quiet = read.get("CONNECTOR_QUIET_HOURS")
        mini_base = read.get("MINIPROGRAM_API_BASE") or read.get("WECHAT_API_BASE") or WECHAT_API
        agentid = read.get("WECOM_AGENTID")
        settings = cls(
            batch=read.integer("CONNECTOR_BATCH", base.batch, 1),
            concurrency=read.integer("CONNECTOR_CONCURRENCY", base.concurrency, 1),
            block_ms=read.integer("CONNECTOR_BLOCK_MS", base.block_ms, 1),
            poll_ms=read.integer("CONNECTOR_POLL_MS", base.poll_ms, 1),
            lease_ms=read.integer("CONNECTOR_LEASE_MS", base.lease_ms, 1_000),
            http_timeout_ms=read.integer("CONNECTOR_HTTP_TIMEOUT_MS", base.http_timeout_ms, 1),
            max_reply_bytes=read.integer("CONNECTOR_MAX_REPLY_BYTES", base.max_reply_bytes, 1024),
            retry=retry,
            rate_limits=read.parsed("CONNECTOR_RATE_LIMITS", {}, _rate_limits),
            rate_limit_max_wait_ms=read.integer("CONNECTOR_RATE_LIMIT_MAX_WAIT_MS", base.rate_limit_max_wait_ms),
            frequency_caps=read.parsed("CONNECTOR_FREQUENCY_CAPS", {}, _frequency_caps),
            quiet_hours=_quiet_hours(quiet, read.get("CONNECTOR_TIMEZONE") or "UTC") if quiet else None,
            quiet_channels=read.parsed("CONNECTOR_QUIET_CHANNELS", base.quiet_channels, _names),
            cs_window_ms=read.parsed("WECHAT_CS_WINDOW", base.cs_window_ms, parse_duration),
            coupon=read.endpoint("COUPON"),
            points=read.endpoint("POINTS"),
            sms=read.endpoint("SMS"),
            sms_phone_attr=read.get("SMS_PHONE_ATTR") or base.sms_phone_attr,
            webhook_secret=read.get("WEBHOOK_SECRET"),
            webhook_allowed_hosts=read.parsed("WEBHOOK_ALLOWED_HOSTS", frozenset(), parse_allowed_hosts),
            webhook_max_redirects=read.integer("WEBHOOK_MAX_REDIRECTS", base.webhook_max_redirects),
            wechat=read.wechat_app("WECHAT", read.get("WECHAT_API_BASE") or WECHAT_API, base.wechat.openid_attr),
            miniprogram=read.wechat_app("MINIPROGRAM", mini_base, base.miniprogram.openid_attr),
            miniprogram_state=read.get("MINIPROGRAM_STATE") or base.miniprogram_state,
            wecom=WeComApp(
                api_base=(read.get("WECOM_API_BASE") or WECOM_API).rstrip("/"),
                corpid=read.get("WECOM_CORPID"),
                secret=read.get("WECOM_SECRET"),
                agentid=read.parsed("WECOM_AGENTID", None, int) if agentid else None,
                user_attr=read.get("WECOM_USER_ATTR") or base.wecom.user_attr,
            ),
            owner_attr=read.get("STAFF_OWNER_ATTR") or base.owner_attr,
            superior_attr=read.get("STAFF_SUPERIOR_ATTR") or base.superior_attr,
            dead_letter_maxlen=read.integer("CONNECTOR_DEAD_LETTER_MAXLEN", base.dead_letter_maxlen, 100),
        )
        settings.check()
        return settings


class _Reader:
    """Reads `BEACON_<name>` variables, naming the variable in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def get(self, name: str) -> str | None:
        value = self.env.get(f"BEACON_{name}")
        return value if value not in (None, "") else None

    def parsed(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except (ValueError, ZoneInfoNotFoundError) as exc:
            raise ValidationError(str(exc) or f"{raw!r} is not valid", path=f"BEACON_{name}") from None

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.parsed(name, default, int)
        if value < minimum:
            raise ValidationError(f"must be >= {minimum}", path=f"BEACON_{name}")
        return value

    def json_object(self, name: str) -> dict[str, Any]:
        return self.parsed(name, {}, _json_object)

    def endpoint(self, prefix: str) -> HttpEndpoint:
        headers = {str(k): str(v) for k, v in self.json_object(f"{prefix}_HEADERS").items()}
        _check_headers(headers, f"BEACON_{prefix}_HEADERS")
        token = self.get(f"{prefix}_TOKEN")
        if token:
            headers.setdefault("Authorization", f"Bearer {token}")
            _check_headers({"Authorization": headers["Authorization"]}, f"BEACON_{prefix}_TOKEN")
        return HttpEndpoint(url=self.get(f"{prefix}_URL"), headers=headers, extra=self.json_object(f"{prefix}_EXTRA"))

    def wechat_app(self, prefix: str, api_base: str, openid_attr: str) -> WeChatApp:
        return WeChatApp(
            api_base=api_base.rstrip("/"),
            appid=self.get(f"{prefix}_APPID"),
            secret=self.get(f"{prefix}_SECRET"),
            templates=self.parsed(f"{prefix}_TEMPLATES", {}, _pairs),
            openid_attr=self.get(f"{prefix}_OPENID_ATTR") or openid_attr,
        )


def _check_headers(headers: Mapping[str, str], variable: str) -> None:
    """Refuse at start, not at the first delivery, a configured header that every call would fail on."""
    for name, value in headers.items():
        problem = header_problem(name, value)
        if name.lower() in RESERVED_HEADERS:
            problem = f"{name} is written by Beacon and cannot be configured"
        if problem is not None:
            raise ValidationError(problem, path=variable)


def _json_object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


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


def _quiet_hours(raw: str, timezone: str) -> QuietHours:
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", raw)
    if not match:
        raise ValidationError(f"{raw!r} is not HH:MM-HH:MM", path="BEACON_CONNECTOR_QUIET_HOURS")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
        raise ValidationError(f"{raw!r} is not a quiet period", path="BEACON_CONNECTOR_QUIET_HOURS")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {timezone!r}", path="BEACON_CONNECTOR_TIMEZONE") from None
    return QuietHours(time(h1, m1), time(h2, m2), timezone)
