"""Wiring: build every connector from settings and run the outbox consumer until cancelled."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from redis.asyncio import Redis

from beacon.clock import Clock
from connectors.base import Connector
from connectors.consumer import OutboxConsumer
from connectors.delivery import Deliverer
from connectors.http_sinks import MerchantApi, SmsGateway, Webhook
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
    redis: Redis, session: aiohttp.ClientSession, settings: ConnectorSettings, clock: Clock
) -> dict[str, Connector]:
    """Every connector by name; unconfigured ones still exist and dead-letter with `not_configured`."""
    timeout = settings.http_timeout_ms
    tokens = AccessTokens(redis, session, clock, timeout)
    wechat = WeChatApi(
        TokenSource("wechat", settings.wechat.api_base, settings.wechat.appid, settings.wechat.secret),
        tokens,
        session,
        timeout,
    )
    mini = settings.miniprogram
    miniprogram = WeChatApi(TokenSource("wechat", mini.api_base, mini.appid, mini.secret), tokens, session, timeout)
    wecom = WeChatApi(
        TokenSource("wecom", settings.wecom.api_base, settings.wecom.corpid, settings.wecom.secret),
        tokens,
        session,
        timeout,
    )
    connectors: list[Connector] = [
        MerchantApi("coupon", settings.coupon, session, timeout),
        MerchantApi("points", settings.points, session, timeout),
        SmsGateway(settings.sms, settings.sms_phone_attr, session, timeout),
        Webhook(settings.webhook_secret, settings.webhook_allowed_hosts, session, clock, timeout),
        WeChatTemplate(wechat, settings.wechat),
        WeChatCustomerService(wechat, settings.wechat),
        MiniProgramSubscribe(miniprogram, settings.miniprogram, settings.miniprogram_state),
        WeComMessage(wecom, settings.wecom),
        WeComMessage(wecom, settings.wecom, staff=(settings.owner_attr, settings.superior_attr)),
    ]
    return {connector.name: connector for connector in connectors}


async def run_connectors(
    redis: Redis, settings: ConnectorSettings, partitions: int, clock: Clock, *, stopping: asyncio.Event | None = None
) -> None:
    """Deliver outbox actions until cancelled or `stopping` is set (then in-flight deliveries finish first)."""
    async with aiohttp.ClientSession() as session:
        deliverer = Deliverer(redis, settings, clock, build_connectors(redis, session, settings, clock), partitions)
        consumer = OutboxConsumer(redis, deliverer, settings, partitions, clock, stopping)
        log.info("connectors consuming %d outbox partition(s) as %s", partitions, consumer.consumer)
        await consumer.run()
