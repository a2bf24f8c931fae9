"""Pure pieces and single scripts: settings parsing, quiet hours, retry policy, token bucket, interactions."""

from __future__ import annotations

import random
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from beacon.errors import ValidationError
from cep.evaluator import Effects, Evaluator
from cep.events import Event
from cep.rule_index import RuleIndex
from cep.user_record import UserState, decode_user_state, encode_user_state
from connectors.caps import quiet_until
from connectors.policy import RetryPolicy, connector_error, parse_retry_after
from connectors.ratelimit import take_token
from connectors.settings import ConnectorSettings, FrequencyCap, QuietHours, RateLimit


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def test_settings_from_env() -> None:
    settings = ConnectorSettings.from_env(
        {
            "BEACON_CONNECTOR_RATE_LIMITS": "sms=10/s:20, coupon=0.5/s",
            "BEACON_CONNECTOR_FREQUENCY_CAPS": "sms=2/24h,wechat_template=3/7d",
            "BEACON_CONNECTOR_QUIET_HOURS": "22:00-08:00",
            "BEACON_CONNECTOR_TIMEZONE": "Asia/Shanghai",
            "BEACON_CONNECTOR_MAX_ATTEMPTS": "3",
            "BEACON_COUPON_URL": "https://shop.example/api/coupons",
            "BEACON_COUPON_TOKEN": "s3cret",
            "BEACON_COUPON_EXTRA": '{"merchant_id": "M1"}',
            "BEACON_WECHAT_APPID": "wx1",
            "BEACON_WECHAT_SECRET": "sec",
            "BEACON_WECHAT_TEMPLATES": "cart_reminder=TM1",
            "BEACON_WECOM_AGENTID": "1000002",
        }
    )
    assert settings.rate_limits == {"sms": RateLimit(10.0, 20), "coupon": RateLimit(0.5, 1)}
    assert settings.frequency_caps["wechat_template"] == FrequencyCap(3, 7 * 86_400_000)
    assert settings.quiet_hours == QuietHours(time(22), time(8), "Asia/Shanghai")
    assert settings.retry.max_attempts == 3
    assert settings.coupon.headers == {"Authorization": "Bearer s3cret"} and settings.coupon.extra == {
        "merchant_id": "M1"
    }
    assert settings.wechat.appid == "wx1" and settings.wechat.templates == {"cart_reminder": "TM1"}
    assert settings.wecom.agentid == 1000002 and settings.miniprogram.openid_attr == "mp_openid"
    assert ConnectorSettings.from_env({}) == ConnectorSettings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONNECTOR_RATE_LIMITS", "sms=fast"),
        ("CONNECTOR_FREQUENCY_CAPS", "sms=2"),
        ("CONNECTOR_QUIET_HOURS", "22-08"),
        ("CONNECTOR_MAX_ATTEMPTS", "0"),
        ("COUPON_EXTRA", "[1]"),
        ("CONNECTOR_BACKOFF_JITTER", "2"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ConnectorSettings.from_env({f"BEACON_{name}": value})
    assert caught.value.path == f"BEACON_{name}"


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        ConnectorSettings.from_env(
            {"BEACON_CONNECTOR_QUIET_HOURS": "22:00-08:00", "BEACON_CONNECTOR_TIMEZONE": "Mars/Base"}
        )
    assert caught.value.path == "BEACON_CONNECTOR_TIMEZONE"


def test_quiet_hours_wrap_past_midnight() -> None:
    zone = ZoneInfo("Asia/Shanghai")
    quiet = QuietHours(time(22), time(8), "Asia/Shanghai")
    morning = ms(datetime(2024, 3, 2, 8, tzinfo=zone))
    assert quiet_until(ms(datetime(2024, 3, 1, 22, tzinfo=zone)), quiet) == morning
    assert quiet_until(ms(datetime(2024, 3, 2, 3, 15, tzinfo=zone)), quiet) == morning
    assert quiet_until(ms(datetime(2024, 3, 2, 8, tzinfo=zone)), quiet) is None
    assert quiet_until(ms(datetime(2024, 3, 1, 21, 59, tzinfo=zone)), quiet) is None


def test_quiet_hours_within_a_day_and_across_a_dst_change() -> None:
    zone = ZoneInfo("America/New_York")
    lunch = QuietHours(time(12), time(13), "America/New_York")
    assert quiet_until(ms(datetime(2024, 6, 3, 12, 30, tzinfo=zone)), lunch) == ms(
        datetime(2024, 6, 3, 13, tzinfo=zone)
    )
    assert quiet_until(ms(datetime(2024, 6, 3, 13, 30, tzinfo=zone)), lunch) is None
    # Clocks go forward at 02:00 on 2024-03-10: a night ending 02:30 ends when the gap does.
    night = QuietHours(time(23), time(2, 30), "America/New_York")
    end = quiet_until(ms(datetime(2024, 3, 10, 1, 0, tzinfo=zone)), night)
    assert end is not None and datetime.fromtimestamp(end / 1000, zone).hour == 3


@given(st.integers(min_value=ms(datetime(2024, 1, 1)), max_value=ms(datetime(2026, 1, 1))))
def test_quiet_hours_end_inside_a_day_and_outside_the_period(now: int) -> None:
    quiet = QuietHours(time(22), time(8), "Europe/Berlin")
    end = quiet_until(now, quiet)
    if end is not None:
        assert now < end <= now + 10 * 3_600_000 + 3_600_000  # at most the period, plus a DST hour
        assert quiet_until(end, quiet) is None


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay_ms=100, max_delay_ms=1_000, jitter=0.5)
    rng = random.Random(1)
    for attempt, ceiling in ((1, 100), (2, 200), (3, 400), (4, 800), (9, 1_000)):
        delays = {policy.backoff_ms(attempt, rng) for _ in range(50)}
        assert min(delays) >= ceiling // 2 and max(delays) <= ceiling and len(delays) > 5
    busy = connector_error("http_429", "slow down", retry_after=30)
    assert policy.retry_in_ms(busy, 1, rng) == 30_000
    assert policy.retry_in_ms(busy, 5, rng) is None  # no attempts left
    assert policy.retry_in_ms(connector_error("http_4xx", "bad"), 1, rng) is None


def test_retry_after_header_forms() -> None:
    assert parse_retry_after("120", 0) == 120.0
    now = datetime(2024, 3, 1, 12, tzinfo=ZoneInfo("UTC"))
    date = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(date, now.timestamp()) == 90.0
    assert parse_retry_after("soon", 0) is None and parse_retry_after(None, 0) is None
    # Once raised (ValueError, OverflowError) outside the error path and left the action stuck.
    assert parse_retry_after("²", 0) is None and parse_retry_after("9" * 400, 0) is None
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", 0) == 366 * 86_400.0


async def test_token_bucket_books_slots_at_its_rate(redis_client: aioredis.Redis) -> None:
    limit = RateLimit(rate_per_s=10.0, burst=2)
    now = 1_000_000
    grants = [await take_token(redis_client, "t", limit, now, max_wait_ms=250) for _ in range(6)]
    assert [(g.granted, g.wait_ms) for g in grants] == [
        (True, 0),
        (True, 0),
        (True, 100),
        (True, 200),
        (False, 50),
        (False, 50),
    ]
    # A refused caller booked nothing: 300 ms later the booked slots have passed and a token is free.
    assert (await take_token(redis_client, "t", limit, now + 300, max_wait_ms=250)).wait_ms == 0


def test_the_last_interaction_is_the_newest_event_of_the_user_s_own() -> None:
    """The owner keeps the newest producer event ts in the record; events caused by actions do not count."""
    state, effects = UserState(), Effects()
    evaluator = Evaluator(RuleIndex(()))
    evaluator.on_event(state, Event("a", "u1", "view", 2_000), 5_000, effects)
    evaluator.on_event(state, Event("b", "u1", "view", 1_000), 5_000, effects)  # older, in any order
    evaluator.on_event(state, Event("c", "u1", "tag_added", 9_000, origin="action"), 5_000, effects)
    assert state.last_seen == 2_000
    assert decode_user_state(encode_user_state(state)).last_seen == 2_000
