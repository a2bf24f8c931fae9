"""`run_backtest` in shards (`beacon backtest --jobs`): merged, the same report as one unsharded run."""

from __future__ import annotations

from bench.harness import load_ruleset
from bench.workload import Workload
from cep.backtest import merge_reports, run_backtest
from cep.events import Event
from rules.registry import compile_ruleset, load_journey

START = 1_800_000_000_000


def _events() -> list[Event]:
    # Out of order now and then (every 7th event 40 minutes early), so that the shards' clocks would
    # part ways if a shard moved its clock only with its own users' events.
    log = Workload(300, prefix="s", seed=11).timed_log(6_000, START, 900.0)
    return [
        Event(
            wire["event_id"],
            wire["user_id"],
            wire["type"],
            wire["ts"] - (2_400_000 if index % 7 == 0 else 0),
            wire.get("attrs") or {},
            wire["ts"],
        )
        for index, wire in enumerate(log)
    ]


def test_shards_merge_into_the_unsharded_report() -> None:
    document = load_ruleset()
    ruleset = compile_ruleset(document, ruleset_id=document["id"], lateness_ms=2_000)
    events = _events()
    until = events[-1].ts + 86_400_000
    whole = run_backtest([ruleset], events, until_ms=until, sample_size=10_000).to_json()
    shards = [run_backtest([ruleset], events, until_ms=until, sample_size=10_000, shard=(k, 3)) for k in range(3)]
    merged = merge_reports(shards, elapsed_s=1.0, sample_size=10_000).to_json()
    assert whole["totals"]["firings"] > 500 and whole["totals"]["timers_fired"] > 100
    assert all(shard.totals.firings for shard in shards)  # every shard had work
    for report in (whole, merged):
        del report["totals"]["elapsed_s"], report["totals"]["events_per_s"]
    assert merged["rules"] == whole["rules"]
    assert merged["timeline"] == whole["timeline"]
    assert merged["totals"] == whole["totals"]
    key = lambda firing: (firing["at"], firing["user_id"], firing["rule_id"])  # noqa: E731
    assert sorted(merged["sample"], key=key) == sorted(whole["sample"], key=key)


def test_journeys_backtest_in_shards_as_in_one_run() -> None:
    """A journey's statistics and actions add up over shards: each user's instances live in one shard."""
    journey = load_journey(
        {
            "id": "welcome-then-nudge",
            "entry": {"event": "view"},
            "key": ["sku"],
            "reentry": {"policy": "once_per", "period": "1h"},
            "exit": [{"event": "pay"}],
            "goal": {"event": "pay", "within": "1d"},
            "start": "hello",
            "nodes": {
                "hello": {"do": [{"action": "tag", "add": ["browsed"]}], "next": "wait"},
                "wait": {"wait_for": [{"event": "add_to_cart", "next": "ab"}], "timeout": "30m", "on_timeout": "nudge"},
                "ab": {"split": [{"weight": 50, "next": "nudge"}, {"weight": 50, "holdout": True}]},
                "nudge": {"do": [{"action": "message", "channel": "sms", "template": "nudge"}]},
            },
        },
        journey_id=None,
        lateness_ms=2_000,
    )
    events = _events()
    until = events[-1].ts + 86_400_000
    whole = run_backtest([], events, until_ms=until, sample_size=10_000, journeys=[journey]).to_json()
    shards = [
        run_backtest([], events, until_ms=until, sample_size=10_000, shard=(k, 3), journeys=[journey]) for k in range(3)
    ]
    merged = merge_reports(shards, elapsed_s=1.0, sample_size=10_000).to_json()
    (summary,) = whole["journeys"]
    counts = summary["versions"]["0"]["journey"]
    assert counts["entered"] > 100 and counts["completed"] > 50
    assert summary["actions"]["message"] > 50 and summary["actions"]["tag"] > 50
    assert merged["journeys"] == whole["journeys"]
