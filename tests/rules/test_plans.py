"""Plan documents and their occurrences: validation paths, cron in a zone across DST, local wall-clock times,
and the journey a plan compiles to."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from rules import journey_model as jm
from rules.plans import latest_occurrence, next_occurrence, parse_plan, plan_journey
from rules.schema import RulesetInvalid

HOUR = 3_600_000
COUPON = [{"action": "coupon", "coupon_id": "C"}]


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def plan(schedule: dict[str, Any], **extra: Any) -> Any:
    return parse_plan({"id": "p", "audience": "aud:a", "schedule": schedule, "then": COUPON, **extra})


def test_a_cron_plan_in_a_zone_occurs_at_that_zones_wall_clock() -> None:
    weekly = plan({"cron": "0 10 * * 1", "tz": "Asia/Shanghai"})
    monday_ten = ms("2026-11-30T10:00:00+08:00")
    previous = latest_occurrence(weekly, monday_ten - 1)  # a millisecond early: last week's
    assert previous is not None and previous.start_ms == monday_ten - 7 * 24 * HOUR
    found = latest_occurrence(weekly, monday_ten)  # the very moment counts as due
    assert found is not None and (found.id, found.start_ms) == ("20261130T0200Z", monday_ten)
    assert found.deadline_ms == monday_ten + HOUR  # late_after defaults to 1 h
    upcoming = next_occurrence(weekly, monday_ten)
    assert upcoming is not None and upcoming.start_ms == monday_ten + 7 * 24 * HOUR


def test_cron_follows_daylight_saving_time() -> None:
    daily = plan({"cron": "0 9 * * *", "tz": "America/New_York"})
    before = next_occurrence(daily, ms("2026-03-07T12:00:00+00:00"))
    after = next_occurrence(daily, ms("2026-03-08T12:00:00+00:00"))
    assert before is not None and after is not None
    # 09:00 local is 14:00 UTC before the change, 13:00 UTC after it.
    assert datetime.fromtimestamp(before.start_ms / 1000, UTC).hour == 14
    assert datetime.fromtimestamp(after.start_ms / 1000, UTC).hour == 13


def test_a_local_time_plan_starts_before_the_earliest_zone_and_ends_after_the_latest() -> None:
    local = plan({"at": "2026-12-12T10:00", "local": True, "tz": "Asia/Shanghai"}, late_after="2h")
    wall = ms("2026-12-12T10:00:00+00:00")
    assert next_occurrence(local, wall - 16 * HOUR) is not None
    found = latest_occurrence(local, wall - 15 * HOUR)
    assert found is not None and (found.id, found.local) == ("L20261212T1000", "2026-12-12T10:00")
    assert (found.start_ms, found.deadline_ms) == (wall - 15 * HOUR, wall + 12 * HOUR + 2 * HOUR)
    journey = plan_journey(local)
    assert journey is not None and journey.start == "local-time"
    wait = journey.nodes["local-time"]
    assert isinstance(wait, jm.Wait) and (wait.until_entry, wait.tz_profile, wait.tz) == (
        "local",
        "tz",
        "Asia/Shanghai",
    )


def test_branches_compile_to_a_routed_journey_and_limits_to_reentry() -> None:
    branched = parse_plan(
        {
            "id": "tiers",
            "schedule": {"at": "2026-12-12T10:00:00+08:00"},
            "limit": {"per_user": 2, "per": "30d"},
            "branches": [{"audience": "seg:gold", "then": COUPON}, {"audience": "seg:silver", "then": COUPON}],
        }
    )
    journey = plan_journey(branched)
    assert journey is not None
    assert (
        journey.id == "plan:tiers" and journey.start == "route" and set(journey.nodes) == {"route", "send-0", "send-1"}
    )
    assert journey.reentry == jm.JourneyReentry("max_per", 30 * 24 * HOUR, 2)
    only_journey = parse_plan(
        {"id": "j", "audience": "aud:a", "schedule": {"cron": "0 * * * *"}, "then": {"journey": "w"}}
    )
    assert plan_journey(only_journey) is None  # its events enter the journey `w` itself


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"schedule": {"at": "2026-12-12T10:00:00Z"}, "then": COUPON}, "audience"),
        ({"audience": "aud:a", "then": COUPON}, "schedule"),
        (
            {"audience": "aud:a", "schedule": {"at": "2026-12-12T10:00:00Z", "cron": "* * * * *"}, "then": COUPON},
            "schedule",
        ),
        ({"audience": "aud:a", "schedule": {"cron": "0 25 * * *"}, "then": COUPON}, "schedule.cron"),
        ({"audience": "aud:a", "schedule": {"cron": "0 1 * * *", "tz": "Mars/Base"}, "then": COUPON}, "schedule.tz"),
        (
            {"audience": "aud:a", "schedule": {"at": "2026-12-12T10:00:00Z", "tz_attr": "tz"}, "then": COUPON},
            "schedule.tz_attr",
        ),
        (
            {"audience": "aud:a", "schedule": {"at": "2026-12-12T10:00", "local": True}, "then": {"journey": "j"}},
            "schedule.local",
        ),
        ({"audience": "aud:a", "schedule": {"at": "2026-12-12T10:00:00Z"}, "then": COUPON, "rate": 10**9}, "rate"),
        ({"audience": {"union": []}, "schedule": {"at": "2026-12-12T10:00:00Z"}, "then": COUPON}, "audience.union"),
        (
            {"audience": "aud:a", "schedule": {"at": "2026-12-12T10:00:00Z"}, "then": COUPON, "goal": {"event": "pay"}},
            "goal.within",
        ),
    ],
)
def test_bad_plans_name_their_paths(document: dict[str, Any], path: str) -> None:
    with pytest.raises(RulesetInvalid) as raised:
        parse_plan({"id": "p", **document})
    assert path in [error.path for error in raised.value.errors], raised.value.errors
