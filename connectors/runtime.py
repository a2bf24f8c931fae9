"""Wiring: build every connector from settings and run the outbox consumer until cancelled."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from redis.asyncio import Redis

from beacon.clock import Clock
from connectors.base import Connector, HttpClient
from connectors.consumer import OutboxConsumer
from connectors.delivery import Deliverer
from connectors.http_sinks import MerchantApi, SmsGateway, Webhook
from connectors.outbound import WebhookTargets, webhook_session
from connectors.settings import ConnectorSettings
from connectors.wechat import (
    AccessTokens,
    MiniProgramSubscribe,
    TokenSource,
    WeChatApi,
    WeChatCustomerService,
    WeChatTemplate,
    WeComMessage,
)

log = logging.getLogger("beacon.connectors")


def build_connectors(
    redis: Redis,
    providers: aiohttp.ClientSession,
    hooks: aiohttp.ClientSession,
    settings: ConnectorSettings,
    clock: Clock,
) -> dict[str, Connector]:
    """Every connector by name; unconfigured ones still exist and dead-letter with `not_configured`.

    `providers` calls the operator's configured endpoints; `hooks` calls the URLs rules choose and must
    come from `outbound.webhook_session` (its resolver refuses non-public addresses).
    """
    http = HttpClient(providers, settings.http_timeout_ms, settings.max_reply_bytes)
    tokens = AccessTokens(redis, http, clock)
    wechat, mini, wecom = settings.wechat, settings.miniprogram, settings.wecom
    wechat_api = WeChatApi(TokenSource("wechat", wechat.api_base, wechat.appid, wechat.secret), tokens, http)
    miniprogram_api = WeChatApi(TokenSource("wechat", mini.api_base, mini.appid, mini.secret), tokens, http)
    wecom_api = WeChatApi(TokenSource("wecom", wecom.api_base, wecom.corpid, wecom.secret), tokens, http)
    webhook_http = HttpClient(hooks, settings.http_timeout_ms, settings.max_reply_bytes, follow_redirects=False)
    connectors: list[Connector] = [
        MerchantApi("coupon", settings.coupon, http),
        MerchantApi("points", settings.points, http),
        SmsGateway(settings.sms, settings.sms_phone_attr, http),
        Webhook(
            settings.webhook_secret,
            WebhookTargets(settings.webhook_allowed_hosts),
            webhook_http,
            clock,
            settings.webhook_max_redirects,
        ),
        WeChatTemplate(wechat_api, settings.wechat),
        WeChatCustomerService(wechat_api, settings.wechat),
        MiniProgramSubscribe(miniprogram_api, settings.miniprogram, settings.miniprogram_state),
        WeComMessage(wecom_api, settings.wecom),
        WeComMessage(wecom_api, settings.wecom, staff=(settings.owner_attr, settings.superior_attr)),
    ]
    return {connector.name: connector for connector in connectors}


async def run_connectors(
    redis: Redis, settings: ConnectorSettings, partitions: int, clock: Clock, *, stopping: asyncio.Event | None = None
) -> None:
    """Deliver outbox actions until cancelled or `stopping` is set (then in-flight deliveries finish first)."""
    settings.check()  # settings built in code skip from_env's check; a bad lease must not start consuming
    hooks_session = webhook_session(WebhookTargets(settings.webhook_allowed_hosts))
    async with aiohttp.ClientSession() as providers, hooks_session as hooks:
        connectors = build_connectors(redis, providers, hooks, settings, clock)
        deliverer = Deliverer(redis, settings, clock, connectors, partitions)
        consumer = OutboxConsumer(redis, deliverer, settings, partitions, clock, stopping)
        log.info("connectors consuming %d outbox partition(s) as %s", partitions, consumer.consumer)
        await consumer.run()
