"""`POST /v1/backtest` over a real socket: known firings, agreement with dry-runs, every bad input a 4xx."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from api import routes_backtest
from bench.workload import Workload
from tests.cart_trace import DEADLINE, MINUTE, RULE, T0, cart_trace
from tests.harness import Beacon, running_beacon, server_settings
from tests.scenarios.library import library_ruleset

MIX = json.loads((Path(__file__).resolve().parents[2] / "bench" / "rulesets" / "mix.json").read_text())
NDJSON = {"Content-Type": "application/x-ndjson"}
NEW_FAN = Path(__file__).resolve().parents[2] / "rules" / "library" / "journeys" / "new-fan.json"


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> Any:
    async with running_beacon(server_settings(redis_url)) as running:
        yield running


def ndjson(events: list[dict[str, Any]]) -> bytes:
    """Events as an x-ndjson body."""
    return "".join(json.dumps(event) + "\n" for event in events).encode()


def without_timing(report: dict[str, Any]) -> dict[str, Any]:
    """The report less what depends on the machine's speed."""
    totals = {key: value for key, value in report["totals"].items() if key not in ("elapsed_s", "events_per_s")}
    return {**report, "totals": totals}


async def test_stored_and_unsaved_rulesets_report_the_firings_built_into_the_trace(beacon: Beacon) -> None:
    await beacon.put_ruleset(library_ruleset("cart-recovery"))
    trace = cart_trace(per_group=20)
    unsaved = {**library_ruleset("cart-recovery"), "id": "cart-recovery-draft"}
    unsaved["rules"][0]["when"]["absence"]["within"] = "3h"  # every pay now lands inside the window
    status, report = await beacon.call(
        "POST", "/v1/backtest", json={"rulesets": ["cart-recovery", unsaved], "events": trace.events}
    )
    assert status == 200, report
    assert report["rulesets"] == [{"id": "cart-recovery", "version": 1}, {"id": "cart-recovery-draft", "version": 0}]
    stored, draft = report["rules"]
    assert (stored["ruleset_id"], stored["rule_id"]) == tuple(RULE.split("/"))
    assert stored["firings"] == stored["users"] == len(trace.firing_at) == 100
    assert (stored["late"], stored["duplicates"]) == (20, 20)
    assert stored["first_firing_at"] == min(trace.firing_at.values())
    # With a 3 h window the slow payers pay in time: everyone else still fires, 3 h + 2 s after the cart.
    assert draft["firings"] == 80 and draft["actions"] == {"message": 80}
    assert report["totals"]["events"] == len(trace.events)
    assert report["totals"]["users"] == len(trace.users)
    assert report["totals"]["pending_timers"] == 0
    assert {day["day"]: day["events"] for day in report["timeline"] if day["events"]} == trace.events_by_day()
    by_day: Counter[str] = Counter()
    for day in report["timeline"]:
        by_day[day["day"]] += day["firings_by_rule"].get(RULE, 0)
    assert {day: count for day, count in by_day.items() if count} == trace.firings_by_day()


async def test_backtest_and_dry_run_agree_on_the_same_events(beacon: Beacon) -> None:
    """Both run the one evaluator: same firings, in the same order, with the same explanations."""
    await beacon.put_ruleset(MIX)
    events = Workload(users=40, seed=5).timed_log(600, T0, 2_000)
    until = events[-1]["ts"] + 10 * MINUTE
    status, dry = await beacon.call("POST", "/v1/rulesets/bench-mix:dry-run", json={"events": events, "until": until})
    assert status == 200, dry
    status, report = await beacon.call(
        "POST", "/v1/backtest", json={"rulesets": ["bench-mix"], "events": events, "until": until}
    )
    assert status == 200, report
    assert len(dry["firings"]) > 100  # more than the sample: the counts are compared beyond it
    sample = [{key: value for key, value in firing.items() if key != "ruleset_id"} for firing in report["sample"]]
    assert sample == dry["firings"][:100]
    assert {rule["rule_id"]: rule["firings"] for rule in report["rules"] if rule["firings"]} == dict(
        Counter(firing["rule_id"] for firing in dry["firings"])
    )
    assert report["totals"]["late"] == len(dry["late"])
    assert report["totals"]["pending_timers"] == len(dry["pending_timers"]) > 0


async def test_ndjson_body_with_rulesets_in_the_query_gives_the_same_report(beacon: Beacon) -> None:
    await beacon.put_ruleset(library_ruleset("cart-recovery"))
    await beacon.put_ruleset(library_ruleset("first-purchase"))
    events = cart_trace(per_group=5).events
    status, inline = await beacon.call(
        "POST", "/v1/backtest", json={"rulesets": ["cart-recovery", "first-purchase"], "events": events}
    )
    assert status == 200, inline
    status, lines = await beacon.call(
        "POST",
        "/v1/backtest?ruleset=cart-recovery&ruleset=first-purchase",
        data=ndjson(events) + b"\n",  # a trailing blank line holds no event
        headers=NDJSON,
    )
    assert status == 200, lines
    assert without_timing(lines) == without_timing(inline)


async def test_until_leaves_later_timers_pending(beacon: Beacon) -> None:
    body = {
        "rulesets": [library_ruleset("cart-recovery")],
        "events": [{"user_id": "ann", "type": "add_to_cart", "ts": T0, "attrs": {"sku": "S1"}}],
        "until": T0 + 10 * MINUTE,
    }
    status, report = await beacon.call("POST", "/v1/backtest", json=body)
    assert status == 200, report
    assert report["rules"][0]["firings"] == 0
    assert report["totals"]["pending_timers"] == 1
    status, report = await beacon.call("POST", "/v1/backtest", json={**body, "until": T0 + DEADLINE})
    assert (report["rules"][0]["firings"], report["totals"]["pending_timers"]) == (1, 0)


async def error(beacon: Beacon, expected_status: int, **kwargs: Any) -> dict[str, Any]:
    """POST a backtest that must fail with `expected_status`; its error object."""
    status, body = await beacon.call("POST", "/v1/backtest", **kwargs)
    assert status == expected_status, body
    return dict(body["error"])


async def test_every_bad_input_is_a_4xx_naming_the_field(beacon: Beacon, monkeypatch: pytest.MonkeyPatch) -> None:
    await beacon.put_ruleset(library_ruleset("cart-recovery"))
    good = cart_trace(per_group=1).events
    bad_ruleset = library_ruleset("first-purchase")
    bad_ruleset["rules"][0]["when"] = {"first": {"event": "pay"}, "extra": 1}

    found = await error(beacon, 404, json={"rulesets": ["cart-recovery", "nope"], "events": good})
    assert found["path"] == "rulesets[1]"
    found = await error(beacon, 422, json={"rulesets": ["cart-recovery", bad_ruleset], "events": good})
    assert found["path"].startswith("rulesets[1].rules[0].when")
    assert all(item["path"].startswith("rulesets[1].") for item in found["errors"])
    found = await error(beacon, 422, json={"rulesets": [7], "events": good})
    assert found["path"] == "rulesets[0]"
    found = await error(beacon, 422, json={"rulesets": ["cart-recovery", "cart-recovery"], "events": good})
    assert found["path"] == "rulesets[1]" and "twice" in found["message"]
    found = await error(beacon, 422, json={"rulesets": [], "events": good})
    assert found["path"] == "rulesets"
    found = await error(beacon, 422, json={"rulesets": ["cart-recovery"], "events": []})
    assert found["path"] == "events"
    no_ts = [*good[:3], {key: value for key, value in good[3].items() if key != "ts"}]
    found = await error(beacon, 422, json={"rulesets": ["cart-recovery"], "events": no_ts})
    assert found["path"] == "events[3].ts"
    found = await error(beacon, 422, json={"rulesets": ["cart-recovery"], "events": good, "until": "soon"})
    assert found["path"] == "until"
    found = await error(beacon, 422, json={"rulesets": ["cart-recovery"], "events": good, "profiles": {}})
    assert found["path"] == "profiles"
    found = await error(beacon, 400, data=b"{", headers={"Content-Type": "application/json"})
    assert found["path"] == "body"

    lines = ndjson(good).splitlines()
    lines[1] = b'{"user_id": "u", "type": "pay", "ts": 12}'
    found = await error(beacon, 422, data=b"\n".join(lines), headers=NDJSON, params={"ruleset": "cart-recovery"})
    assert (found["path"], found["line"]) == ("events[1].ts", 2)
    lines[1] = b"not json"
    found = await error(beacon, 422, data=b"\n".join(lines), headers=NDJSON, params={"ruleset": "cart-recovery"})
    assert (found["path"], found["line"]) == ("events[1]", 2)
    found = await error(beacon, 422, data=ndjson(good), headers=NDJSON)
    assert found["path"] == "ruleset"
    found = await error(
        beacon, 404, data=ndjson(good), headers=NDJSON, params=[("ruleset", "cart-recovery"), ("ruleset", "x")]
    )
    assert found["path"] == "rulesets[1]"
    found = await error(
        beacon, 422, data=ndjson(good), headers=NDJSON, params={"ruleset": "cart-recovery", "until": "x"}
    )
    assert found["path"] == "until"
    found = await error(
        beacon, 422, data=ndjson(good), headers=NDJSON, params={"ruleset": "cart-recovery", "rule": "x"}
    )
    assert found["path"] == "rule"
    found = await error(beacon, 422, data=b"\n\n", headers=NDJSON, params={"ruleset": "cart-recovery"})
    assert found["path"] == "events"

    monkeypatch.setattr(routes_backtest, "MAX_BACKTEST_EVENTS", 3)
    found = await error(beacon, 413, json={"rulesets": ["cart-recovery"], "events": good})
    assert found["path"] == "events"
    found = await error(beacon, 413, data=ndjson(good), headers=NDJSON, params={"ruleset": "cart-recovery"})
    assert found["path"] == "events"
    monkeypatch.setattr(routes_backtest, "MAX_BACKTEST_BODY_BYTES", 100)
    found = await error(beacon, 413, json={"rulesets": ["cart-recovery"], "events": good})
    assert found["path"] == "body"


async def test_backtest_needs_the_rules_scope(redis_url: str, redis_client: aioredis.Redis) -> None:
    keys = {"k-events": frozenset({"events"}), "k-rules": frozenset({"rules"})}
    body = {"rulesets": [library_ruleset("cart-recovery")], "events": cart_trace(per_group=1).events}
    async with running_beacon(server_settings(redis_url, api_keys=keys), api_key="k-events") as beacon:
        found = await error(beacon, 403, json=body)
        assert found["path"] == "Authorization"
        status, report = await beacon.call(
            "POST", "/v1/backtest", json=body, headers={"Authorization": "Bearer k-rules"}
        )
        assert status == 200 and report["rules"][0]["firings"] == 5


async def test_openapi_describes_the_backtest(beacon: Beacon) -> None:
    status, document = await beacon.call("GET", "/openapi.json")
    assert status == 200
    operation = document["paths"]["/v1/backtest"]["post"]
    assert operation["security"] == [{"bearer": ["rules"]}]
    assert set(operation["requestBody"]["content"]) == {
        "application/json",
        "application/msgpack",
        NDJSON["Content-Type"],
    }
    assert set(document["components"]["schemas"]["BacktestBody"]["properties"]) == set(routes_backtest.BACKTEST_FIELDS)


async def test_journeys_backtest_over_http_as_the_command_does(beacon: Beacon) -> None:
    """A stored journey (by id, in a JSON body or ?journey= on x-ndjson) or an unsaved one, with or without
    rulesets: counted per node as its statistics would be live."""
    new_fan = json.loads(NEW_FAN.read_text())
    status, _ = await beacon.call("PUT", "/v1/journeys/new-fan", json=new_fan)
    assert status == 200
    events = [{"user_id": f"u{n}", "type": "follow", "ts": T0 + n, "event_id": f"f{n}"} for n in range(10)]
    events += [{"user_id": f"u{n}", "type": "menu_click", "ts": T0 + MINUTE + n, "event_id": f"c{n}"} for n in range(4)]
    status, stored = await beacon.call("POST", "/v1/backtest", json={"journeys": ["new-fan"], "events": events})
    assert status == 200, stored
    (journey,) = stored["journeys"]
    assert (journey["journey_id"], journey["version"]) == ("new-fan", 1)
    assert journey["versions"]["1"]["journey"]["entered"] == 10 and journey["actions"]["tag"] == 4
    assert journey["versions"]["1"]["nodes"]["wait-click"]["left"] == {"menu_click": 4, "timeout": 6}
    status, unsaved = await beacon.call("POST", "/v1/backtest", json={"journeys": [new_fan], "events": events})
    assert status == 200 and unsaved["journeys"][0]["actions"] == journey["actions"]
    status, lines = await beacon.call("POST", "/v1/backtest?journey=new-fan", data=ndjson(events), headers=NDJSON)
    assert status == 200 and without_timing(lines) == without_timing(stored)
    broken = {**new_fan, "start": "nowhere"}
    found = await error(beacon, 422, json={"journeys": [broken], "events": events})
    assert found["path"] == "journeys[0].start"
    found = await error(beacon, 404, json={"journeys": ["nope"], "events": events})
    assert found["path"] == "journeys[0]"
