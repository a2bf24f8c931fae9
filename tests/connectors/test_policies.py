"""Delivery policies, each checked so that removing it fails the test: caps, quiet hours, 48 h window, rate limits."""

from __future__ import annotations

import json
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis

from beacon.clock import ManualClock
from cep.events import partition_of
from cep.user_state import LEDGER_STATUS, user_key_for
from connectors import delivery_ledger
from connectors.settings import FrequencyCap, QuietHours, RateLimit
from tests.connectors.kit import (
    PARTITIONS,
    fast_settings,
    put_actions,
    record,
    running_connectors,
    seed_profile,
    stored,
    wait_all,
    wait_status,
)
from tests.connectors.providers import FakeMerchant, FakeWeChat
from tests.harness import eventually

DAY_MS = 24 * 3_600_000
SHANGHAI = ZoneInfo("Asia/Shanghai")


def sms(user_id: str, now_ms: int) -> dict[str, Any]:
    return record(user_id, "message", {"channel": "sms", "template": "promo", "params": {"pct": 10}}, now_ms)


async def test_frequency_cap_skips_the_third_message_in_a_day(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    await seed_profile(redis_client, "cap-user", {"phone": "+8613800000000"})
    await seed_profile(redis_client, "other-user", {"phone": "+8613800000001"})
    settings = fast_settings(merchant, frequency_caps={"sms": FrequencyCap(2, DAY_MS)})
    merchant.script.append("500")
    first, second, third = (sms("cap-user", clock.now_ms()) for _ in range(3))
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [first])
        await wait_status(redis_client, first, {"failed"})
        clock.advance(1_000)
        # The retry is the same send: it must not count against the cap a second time.
        await wait_status(redis_client, first, {"delivered"}, attempts=2)
        await put_actions(redis_client, [second])
        await wait_status(redis_client, second, {"delivered"})
        await put_actions(redis_client, [third])
        capped = await wait_status(redis_client, third, {"skipped"}, reason="frequency_capped")
        assert capped["attempts"] == 0
        # Another user has a cap of their own.
        elsewhere = sms("other-user", clock.now_ms())
        await put_actions(redis_client, [elsewhere])
        await wait_status(redis_client, elsewhere, {"delivered"})
        # The window rolls: a day after the first two, a new message goes out.
        clock.advance(DAY_MS)
        later = sms("cap-user", clock.now_ms())
        await put_actions(redis_client, [later])
        await wait_status(redis_client, later, {"delivered"})
    phones = [request.body["phone"] for request in merchant.requests if request.mode == "ok"]
    assert phones.count("+8613800000000") == 3 and phones.count("+8613800000001") == 1


async def test_quiet_hours_defer_messages_to_the_end_of_the_night(
    redis_client: aioredis.Redis, merchant: FakeMerchant
) -> None:
    clock = ManualClock(int(datetime(2024, 3, 1, 23, 30, tzinfo=SHANGHAI).timestamp() * 1000))
    morning = int(datetime(2024, 3, 2, 8, 0, tzinfo=SHANGHAI).timestamp() * 1000)
    await seed_profile(redis_client, "night-owl", {"phone": "+8613900000000"})
    settings = fast_settings(merchant, quiet_hours=QuietHours(time(22, 0), time(8, 0), "Asia/Shanghai"))
    message = sms("night-owl", clock.now_ms())
    coupon = record("night-owl", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [message, coupon])
        # Coupons are not messages: they go out at night.
        await wait_status(redis_client, coupon, {"delivered"})
        deferred = await wait_status(redis_client, message, {"pending"}, reason="quiet_hours_deferred")
        assert deferred["next_attempt_at"] == morning
        due_key = delivery_ledger.due_key(partition_of("night-owl", PARTITIONS))
        member = delivery_ledger.hint_member("night-owl", message["action_id"])
        assert await redis_client.zscore(due_key, member) == morning
        clock.set(morning - 60_000)
        assert (await stored(redis_client, message))["status"] == "pending"
        clock.set(morning)
        delivered = await wait_status(redis_client, message, {"delivered"})
    assert delivered["delivered_at"] >= morning
    assert [request.path for request in merchant.requests] == ["/coupons", "/sms"]


async def test_customer_service_messages_need_an_interaction_within_48_hours(
    redis_client: aioredis.Redis, wechat: FakeWeChat, clock: ManualClock
) -> None:
    now = clock.now_ms()
    hour = 3_600_000
    # The newest of the user's own events counts (the owner keeps it in the record: tests/cep cover that).
    seen = {"recent": now - 47 * hour, "stale": now - 49 * hour, "never": 0}
    for user in ("recent", "stale", "never"):
        await seed_profile(redis_client, user, {"openid": f"o-{user}"}, last_seen=seen[user])
    params = {"channel": "wechat_cs", "template": "hello", "params": {"content": "Still thinking about it?"}}
    actions = {user: record(user, "message", params, now) for user in ("recent", "stale", "never")}
    async with running_connectors(redis_client, fast_settings(wechat=wechat), clock):
        await put_actions(redis_client, list(actions.values()))
        final = await wait_all(redis_client, list(actions.values()), {"delivered", "skipped"})
    assert [current["status"] for current in final] == ["delivered", "skipped", "skipped"]
    assert {current.get("reason") for current in final[1:]} == {"outside_48h_window"}
    bodies = wechat.bodies("/cgi-bin/message/custom/send")
    assert bodies == [{"touser": "o-recent", "msgtype": "text", "text": {"content": "Still thinking about it?"}}]


async def test_rate_limit_is_shared_by_every_consumer_process(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    settings = fast_settings(merchant, rate_limits={"coupon": RateLimit(2.0, 2)})
    coupons = [record(f"r{i}", "coupon", {"coupon_id": "C-1"}, clock.now_ms()) for i in range(6)]
    # Two consumers, as two `beacon connectors` processes: one bucket between them.
    async with running_connectors(redis_client, settings, clock), running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, coupons)

        async def statuses() -> list[str]:
            return [(await stored(redis_client, c))["status"] for c in coupons]

        first = await eventually(statuses, lambda found: found.count("pending") == 4 and found.count("delivered") == 2)
        assert sorted(first) == ["delivered"] * 2 + ["pending"] * 4, first
        deferred = [current for c in coupons if (current := await stored(redis_client, c))["status"] == "pending"]
        assert {current["reason"] for current in deferred} == {"rate_limited"}
        # Each deferred action booked its own slot at the bucket's rate: 0.5 s apart, no stampede.
        waits = sorted(current["next_attempt_at"] - clock.now_ms() for current in deferred)
        assert waits == [500, 1000, 1500, 2000], waits
        assert len(merchant.requests) == 2
        clock.advance(1_000)
        second = await eventually(statuses, lambda found: found.count("delivered") == 4)
        assert second.count("delivered") == 4 and len(merchant.requests) == 4
        clock.advance(1_000)
        await wait_all(redis_client, coupons, {"delivered"})
    assert len(merchant.requests) == 6


async def test_a_marketing_cap_counts_every_channel_and_spares_transactional_messages(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """`marketing=2/7d`: the third marketing message of the week is skipped whatever its channel; a
    transactional one (order notice) still goes out; the cap counts messages, not coupons."""
    await seed_profile(redis_client, "tired", {"phone": "+8613800000009", "member_id": "M9"})
    settings = fast_settings(merchant, frequency_caps={"marketing": FrequencyCap(2, 7 * DAY_MS)})
    first = sms("tired", clock.now_ms())
    second = record("tired", "message", {"channel": "sms", "template": "promo-2"}, clock.now_ms())
    third = sms("tired", clock.now_ms())
    notice = record(
        "tired", "message", {"channel": "sms", "template": "shipped", "transactional": True}, clock.now_ms()
    )
    gift = record("tired", "coupon", {"coupon_id": "C-1"}, clock.now_ms())
    async with running_connectors(redis_client, settings, clock):
        for action in (first, second):
            await put_actions(redis_client, [action])
            await wait_status(redis_client, action, {"delivered"})
        await put_actions(redis_client, [third, notice, gift])
        capped = await wait_status(redis_client, third, {"skipped"}, reason="fatigue_capped")
        assert capped["attempts"] == 0
        await wait_status(redis_client, notice, {"delivered"})
        await wait_status(redis_client, gift, {"delivered"})
        # A week after the first two, marketing may speak again.
        clock.advance(7 * DAY_MS)
        later = sms("tired", clock.now_ms())
        await put_actions(redis_client, [later])
        await wait_status(redis_client, later, {"delivered"})
    templates = [request.body.get("template") for request in merchant.requests if request.mode == "ok"]
    assert templates.count("promo") == 2 and "shipped" in templates and "promo-2" in templates


async def test_a_journeys_own_fatigue_cap_counts_its_messages_only(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """A record carrying its source's cap (`fatigue`, from a journey's or ruleset's `"fatigue"`): the journey's
    third message in the window is skipped, another source's message is not, a transactional one neither."""
    await seed_profile(redis_client, "fan", {"phone": "+8613800000008"})
    settings = fast_settings(merchant)
    cap = {"cap": "journey:nurture", "max": 2, "per_ms": 7 * DAY_MS}

    def from_nurture(template: str, **extra: Any) -> dict[str, Any]:
        action = record("fan", "message", {"channel": "sms", "template": template, **extra}, clock.now_ms())
        return {**action, "fatigue": cap}

    first, second, third = from_nurture("n1"), from_nurture("n2"), from_nurture("n3")
    notice = from_nurture("receipt", transactional=True)
    other = sms("fan", clock.now_ms())  # no source cap
    async with running_connectors(redis_client, settings, clock):
        for action in (first, second):
            await put_actions(redis_client, [action])
            await wait_status(redis_client, action, {"delivered"})
        await put_actions(redis_client, [third, notice, other])
        await wait_status(redis_client, third, {"skipped"}, reason="fatigue_capped")
        await wait_status(redis_client, notice, {"delivered"})
        await wait_status(redis_client, other, {"delivered"})
    sent = [request.body.get("template") for request in merchant.requests if request.mode == "ok"]
    assert sorted(sent) == ["n1", "n2", "promo", "receipt"]


async def test_an_action_first_taken_past_its_staleness_bound_is_skipped_as_stale(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """A replayed history (events hours old) must not send a burst of overdue messages; an action's own
    `max_staleness` overrides the deployment's bound, and an action the policy itself held back stays fresh."""
    hour = 3_600_000
    await seed_profile(redis_client, "late-user", {"phone": "+8613800000009"})
    now = clock.now_ms()
    settings = fast_settings(merchant, max_staleness_ms=hour)
    overdue = sms("late-user", now - 2 * hour) | {"created_at": now, "due_at": now}
    allowed = sms("late-user", now - 2 * hour) | {"created_at": now, "due_at": now, "max_staleness_ms": 3 * hour}
    fresh = sms("late-user", now - hour + 1_000) | {"created_at": now, "due_at": now}
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [overdue, allowed, fresh])
        skipped = await wait_status(redis_client, overdue, {"skipped"}, reason="stale")
        await wait_status(redis_client, allowed, {"delivered"})
        await wait_status(redis_client, fresh, {"delivered"})
    assert skipped["attempts"] == 0
    assert sum(1 for request in merchant.requests if request.path == "/sms") == 2


async def test_a_message_held_by_quiet_hours_is_not_stale_at_dawn(
    redis_client: aioredis.Redis, merchant: FakeMerchant
) -> None:
    clock = ManualClock(int(datetime(2024, 3, 1, 23, 30, tzinfo=SHANGHAI).timestamp() * 1000))
    morning = int(datetime(2024, 3, 2, 8, 0, tzinfo=SHANGHAI).timestamp() * 1000)
    await seed_profile(redis_client, "night-owl-2", {"phone": "+8613900000002"})
    quiet = QuietHours(time(22, 0), time(8, 0), "Asia/Shanghai")
    settings = fast_settings(merchant, quiet_hours=quiet, max_staleness_ms=3_600_000)
    message = sms("night-owl-2", clock.now_ms())
    async with running_connectors(redis_client, settings, clock):
        await put_actions(redis_client, [message])
        await wait_status(redis_client, message, {"pending"}, reason="quiet_hours_deferred")
        clock.set(morning)  # 8.5 hours after its due time, held back by the policy, not by Beacon being late
        await wait_status(redis_client, message, {"delivered"})


async def test_an_action_reclaimed_after_its_lease_keeps_its_first_take_time(
    redis_client: aioredis.Redis, merchant: FakeMerchant, clock: ManualClock
) -> None:
    """A consumer that died mid-attempt left the action `delivering`; the claim after its lease judged it
    again from then, and skipped as stale an action that had been fresh when first taken (and may have been
    sent)."""
    hour = 3_600_000
    await seed_profile(redis_client, "reclaimed-user", {"phone": "+8613800000010"})
    message = sms("reclaimed-user", clock.now_ms() - 30 * 60_000)  # due half an hour ago: fresh
    await put_actions(redis_client, [message])
    taken = clock.now_ms()
    lapsed = {"status": "delivering", "updated_at": taken, "attempts": 0, "connector": "sms", "first_taken_at": taken}
    status_key = user_key_for(PARTITIONS, "reclaimed-user", LEDGER_STATUS)
    await redis_client.hset(status_key, message["action_id"], json.dumps({**lapsed, "lease_until": taken + 2_000}))
    clock.advance(hour)  # the lease lapsed long ago: the due time is now 1.5 h back
    async with running_connectors(redis_client, fast_settings(merchant, max_staleness_ms=hour), clock):
        delivered = await wait_status(redis_client, message, {"delivered"})
    assert delivered["first_taken_at"] == taken
