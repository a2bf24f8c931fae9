"""WeChat / WeCom connectors against a fake API: request formats, token caching and refresh, errcode mapping."""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis

from beacon.clock import ManualClock
from tests.connectors.kit import (
    fast_settings,
    put_actions,
    record,
    running_connectors,
    seed_profile,
    wait_all,
    wait_status,
)
from tests.connectors.providers import FakeWeChat

TEMPLATE = "/cgi-bin/message/template/send"


def template_message(user_id: str, now_ms: int, **extra: Any) -> dict[str, Any]:
    params = {"channel": "wechat_template", "template": "cart_reminder", "params": {"sku": "A1", "price": 59}}
    return record(user_id, "message", {**params, **extra}, now_ms)


async def test_template_messages_share_one_cached_token(
    redis_client: aioredis.Redis, wechat: FakeWeChat, clock: ManualClock
) -> None:
    await seed_profile(redis_client, "w1", {"openid": "o-w1"})
    miniprogram = {"appid": "wx-mini", "pagepath": "pages/cart"}
    messages = [
        template_message("w1", clock.now_ms(), url="https://shop.example/cart", miniprogram=miniprogram)
        for _ in range(3)
    ]
    async with running_connectors(redis_client, fast_settings(wechat=wechat), clock):
        await put_actions(redis_client, messages)
        final = await wait_all(redis_client, messages, {"delivered"})
        assert wechat.token_fetches == 1
        # Past the token's lifetime, the next send fetches a new one.
        clock.advance(wechat.expires_in * 1000)
        later = template_message("w1", clock.now_ms())
        await put_actions(redis_client, [later])
        await wait_status(redis_client, later, {"delivered"})
    assert wechat.token_fetches == 2
    assert final[0]["reply"]["errcode"] == 0
    bodies = wechat.bodies(TEMPLATE)
    assert sorted(body["client_msg_id"] for body in bodies[:3]) == sorted(m["idempotency_key"] for m in messages)
    assert bodies[0] == {
        "touser": "o-w1",
        "template_id": "TMPL-CART",  # the template name mapped by settings
        "data": {"sku": {"value": "A1"}, "price": {"value": "59"}},
        "client_msg_id": bodies[0]["client_msg_id"],
        "url": "https://shop.example/cart",
        "miniprogram": miniprogram,
    }


async def test_a_rejected_token_is_refreshed_once(
    redis_client: aioredis.Redis, wechat: FakeWeChat, clock: ManualClock
) -> None:
    await seed_profile(redis_client, "w2", {"openid": "o-w2"})
    first, second = template_message("w2", clock.now_ms()), template_message("w2", clock.now_ms())
    async with running_connectors(redis_client, fast_settings(wechat=wechat), clock):
        await put_actions(redis_client, [first])
        await wait_status(redis_client, first, {"delivered"})
        wechat.revoke_tokens()  # e.g. another deployment fetched a new token
        await put_actions(redis_client, [second])
        status = await wait_status(redis_client, second, {"delivered"})
    assert status["attempts"] == 1  # the refresh happened inside the attempt
    assert wechat.token_fetches == 2


async def test_wrong_credentials_dead_letter_without_retrying(
    redis_client: aioredis.Redis, wechat: FakeWeChat, clock: ManualClock
) -> None:
    await seed_profile(redis_client, "w3", {"openid": "o-w3"})
    settings = fast_settings(wechat=wechat)
    settings = msgspec.structs.replace(settings, wechat=msgspec.structs.replace(settings.wechat, secret="wrong"))
    message = template_message("w3", clock.now_ms())
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [message])
        dead = await wait_status(redis_client, message, {"dead"})
    assert dead["reason"] == "invalid_credentials" and dead["attempts"] == 1
    assert wechat.sent == []


async def test_errcodes_map_to_outcomes(redis_client: aioredis.Redis, wechat: FakeWeChat, clock: ManualClock) -> None:
    await seed_profile(redis_client, "w4", {"openid": "o-w4"})
    settings = fast_settings(wechat=wechat)
    cases = [
        (45009, "dead", "quota_exhausted"),
        (43101, "skipped", "not_subscribed"),
        (45015, "skipped", "outside_48h_window"),
    ]
    async with running_connectors(redis_client, settings, clock):
        for code, status, reason in cases:
            wechat.errcodes.append(code)
            message = template_message("w4", clock.now_ms())
            await put_actions(redis_client, [message])
            await wait_status(redis_client, message, {status}, reason=reason)
        # -1 (system busy) is retried.
        wechat.errcodes.append(-1)
        busy = template_message("w4", clock.now_ms())
        await put_actions(redis_client, [busy])
        await wait_status(redis_client, busy, {"failed"}, reason="system_busy")
        clock.advance(1_000)
        delivered = await wait_status(redis_client, busy, {"delivered"})
        # Without an openid there is nobody to send to.
        nobody = template_message("no-openid", clock.now_ms())
        await put_actions(redis_client, [nobody])
        await wait_status(redis_client, nobody, {"skipped"}, reason="no_recipient")
    assert delivered["attempts"] == 2


async def test_subscribe_message_format(redis_client: aioredis.Redis, wechat: FakeWeChat, clock: ManualClock) -> None:
    await seed_profile(redis_client, "m1", {"mp_openid": "mp-m1"})
    params = {
        "channel": "miniprogram_subscribe",
        "template": "TPL-9",
        "page": "pages/order?id=7",
        "params": {"thing1": "Tea"},
    }
    message = record("m1", "message", params, clock.now_ms())
    async with running_connectors(redis_client, fast_settings(wechat=wechat), clock):
        await put_actions(redis_client, [message])
        await wait_status(redis_client, message, {"delivered"})
    assert wechat.bodies("/cgi-bin/message/subscribe/send") == [
        {
            "touser": "mp-m1",
            "template_id": "TPL-9",
            "data": {"thing1": {"value": "Tea"}},
            "miniprogram_state": "formal",
            "lang": "zh_CN",
            "page": "pages/order?id=7",
        }
    ]


async def test_wecom_messages_and_staff_notifications(
    redis_client: aioredis.Redis, wechat: FakeWeChat, clock: ManualClock
) -> None:
    await seed_profile(redis_client, "c1", {"wecom_userid": "zhangsan", "owner": "lisi", "owner_superior": "wangwu"})
    await seed_profile(redis_client, "c2", {"owner": "lisi", "owner_superior": "wangwu"})
    to_user = record(
        "c1", "message", {"channel": "wecom", "template": "t", "params": {"content": "Hi"}}, clock.now_ms()
    )
    staff = {"template": "vip_arrived", "notify_superior": True, "params": {"content": "VIP c1 is in store"}}
    to_staff = record("c1", "notify_staff", staff, clock.now_ms())
    owner_only = record("c2", "notify_staff", {"template": "vip_arrived", "params": {"store": "S1"}}, clock.now_ms())
    no_owner = record("c3", "notify_staff", {"template": "vip_arrived"}, clock.now_ms())
    actions = [to_user, to_staff, owner_only, no_owner]
    async with running_connectors(redis_client, fast_settings(wechat=wechat), clock):
        for action in actions:  # one at a time, so the bodies arrive in order
            await put_actions(redis_client, [action])
            final = await wait_all(redis_client, [action], {"delivered", "skipped"})
    assert final[0]["status"] == "skipped" and final[0]["reason"] == "no_recipient"
    bodies = wechat.bodies("/cgi-bin/message/send")
    assert [(b["touser"], b["text"]["content"]) for b in bodies] == [
        ("zhangsan", "Hi"),
        ("lisi|wangwu", "VIP c1 is in store"),
        ("lisi", "[vip_arrived] store: S1, user_id: c2"),
    ]
    assert {b["agentid"] for b in bodies} == {1000002} and {b["msgtype"] for b in bodies} == {"text"}
    assert wechat.token_fetches == 1  # one WeCom token (gettoken with corpid / corpsecret)
