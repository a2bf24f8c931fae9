"""`beacon backtest`: ruleset files over a .jsonl[.gz] log, checked against a trace with known firings."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from beacon.backtest_command import ProgressBar, backtest
from beacon.settings import Settings
from cep import backtest as cep_backtest
from cep.backtest import PROGRESS_EVERY, run_backtest
from cep.events import Event
from rules.registry import compile_ruleset
from tests.cart_trace import RULE, T0, cart_trace
from tests.scenarios.library import LIBRARY, library_ruleset

CART_RECOVERY = str(LIBRARY / "cart-recovery.json")


def write_log(path: Path, events: list[dict[str, Any]], *, compress: bool) -> Path:
    """Events as JSON lines, gzip-compressed or not."""
    text = "".join(json.dumps(event) + "\n" for event in events)
    if compress:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def beacon_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m beacon.cli` as a real subprocess, with no BEACON_ settings from the caller."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BEACON_")}
    return subprocess.run(
        [sys.executable, "-m", "beacon.cli", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_report_matches_the_trace_built_to_fire(tmp_path: Path, jobs: str) -> None:
    trace = cart_trace(per_group=25)
    log = write_log(tmp_path / "events.jsonl.gz", trace.events, compress=True)
    done = beacon_cli("backtest", "--ruleset", CART_RECOVERY, "--events", str(log), "--json", "--jobs", jobs)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    [rule] = report["rules"]
    assert (rule["ruleset_id"], rule["rule_id"]) == tuple(RULE.split("/"))
    assert rule["firings"] == len(trace.firing_at) == 125
    assert rule["users"] == len(trace.firing_at)
    assert rule["actions"] == {"message": 125}
    assert (rule["late"], rule["duplicates"]) == (trace.late, trace.duplicates) == (25, 25)
    assert rule["first_firing_at"] == min(trace.firing_at.values())
    assert rule["last_firing_at"] == max(trace.firing_at.values())
    totals = report["totals"]
    assert totals["events"] == len(trace.events) == 25 * 12
    assert totals["users"] == len(trace.users)
    assert totals["timers_fired"] == trace.timers_fired
    assert totals["pending_timers"] == 0
    assert (totals["late"], totals["duplicates"]) == (25, 25)
    assert totals["events_per_s"] > 0
    timeline = report["timeline"]
    assert {day["day"]: day["events"] for day in timeline if day["events"]} == trace.events_by_day()
    assert {day["day"]: day["firings"] for day in timeline if day["firings"]} == trace.firings_by_day()
    assert len(trace.firings_by_day()) == 2  # the trace does cross midnight
    # The sample is the first 100 firings in firing order, in full.
    assert report["sample_size"] == 100
    assert [item["at"] for item in report["sample"]] == sorted(trace.firing_at.values())[:100]
    first = report["sample"][0]
    assert first["user_id"] in trace.firing_at and first["at"] == trace.firing_at[first["user_id"]]
    assert first["actions"][0]["params"]["params"] == {"sku": "S1"}


def test_until_stops_the_clock_and_leaves_later_timers_pending(tmp_path: Path) -> None:
    trace = cart_trace(per_group=5)
    log = write_log(tmp_path / "events.jsonl", trace.events, compress=False)
    until = max(event["ts"] for event in trace.events)
    done = beacon_cli("backtest", "--ruleset", CART_RECOVERY, "--events", str(log), "--json", "--until", str(until))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    fired = sorted(at for at in trace.firing_at.values() if at <= until)
    assert report["rules"][0]["firings"] == len(fired) < len(trace.firing_at)
    assert report["totals"]["pending_timers"] > 0
    assert report["until"] == until


def test_text_report_has_a_row_per_rule_and_a_day_per_line(tmp_path: Path) -> None:
    trace = cart_trace(per_group=3)
    log = write_log(tmp_path / "events.jsonl.gz", trace.events, compress=True)
    first_pay = str(LIBRARY / "first-purchase.json")
    done = beacon_cli("backtest", "--ruleset", CART_RECOVERY, "--ruleset", first_pay, "--events", str(log))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    [row] = [line for line in lines if line.startswith(RULE)]
    assert row.split()[1:3] == ["15", "15"]  # firings, users
    payers = {event["user_id"] for event in trace.events if event["type"] == "pay"}
    [first_row] = [line for line in lines if line.startswith("first-purchase/first-pay-join")]
    assert first_row.split()[1:3] == [str(len(payers))] * 2
    day_rows = [line.split() for line in lines if line.startswith("2026-")]
    assert [row[0] for row in day_rows] == list(trace.events_by_day())
    assert [int(row[1]) for row in day_rows] == list(trace.events_by_day().values())
    assert sum(int(row[2]) for row in day_rows) == len(trace.firing_at) + len(payers)
    assert f"{len(trace.events)} events of {len(trace.users)} users" in done.stdout
    assert done.stderr == ""  # no progress bar when stderr is not a terminal


def test_bad_line_exits_2_naming_the_line_and_field(tmp_path: Path) -> None:
    events = cart_trace(per_group=1).events
    events[2] = {**events[2], "ts": "yesterday"}
    log = write_log(tmp_path / "events.jsonl.gz", events, compress=True)
    done = beacon_cli("backtest", "--ruleset", CART_RECOVERY, "--events", str(log))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"beacon backtest: {log}:3: events[2].ts: ts must be an integer (ms since the epoch)"
    ]
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", ":2: events[1]: line 2 is not valid JSON"),
        ('{"user_id": "u", "type": "pay"}', ":2: events[1].ts: is required in a backtest"),
        ('{"user_id": "u", "type": "pay", "ts": 1767225600000, "colour": 1}', ":2: events[1].colour: unknown field"),
        ("[1, 2]", ":2: events[1]: an event must be an object"),
    ],
)
def test_each_kind_of_bad_line_is_one_line_of_error(tmp_path: Path, line: str, expected: str) -> None:
    good = json.dumps({"user_id": "u", "type": "pay", "ts": T0})
    log = tmp_path / "events.jsonl"
    log.write_text(f"{good}\n{line}\n{good}\n")
    done = beacon_cli("backtest", "--ruleset", CART_RECOVERY, "--events", str(log))
    assert done.returncode == 2
    [message] = done.stderr.strip().splitlines()
    assert expected in message and "Traceback" not in done.stderr


def test_bad_ruleset_missing_file_and_corrupt_gzip_exit_2(tmp_path: Path) -> None:
    log = write_log(tmp_path / "events.jsonl", cart_trace(per_group=1).events, compress=False)
    bad = library_ruleset("cart-recovery")
    bad["rules"][0]["when"]["absence"]["within"] = "soon"
    bad_path = tmp_path / "bad.json"
    bad_path.write_text(json.dumps(bad))
    done = beacon_cli("backtest", "--ruleset", str(bad_path), "--events", str(log))
    assert done.returncode == 2
    [message] = done.stderr.strip().splitlines()
    assert message.startswith(f"beacon backtest: {bad_path}: rules[0].when.absence.within: ")

    done = beacon_cli("backtest", "--ruleset", CART_RECOVERY, "--events", str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"beacon backtest: cannot read {tmp_path / 'nope.jsonl'}: No such file or directory"

    corrupt = tmp_path / "events.jsonl.gz"
    corrupt.write_bytes(gzip.compress(log.read_bytes())[:-20])  # truncated: the stream ends early
    done = beacon_cli("backtest", "--ruleset", CART_RECOVERY, "--events", str(corrupt))
    assert done.returncode == 2
    [message] = done.stderr.strip().splitlines()
    assert "unreadable gzip data" in message

    done = beacon_cli("backtest", "--ruleset", CART_RECOVERY, "--ruleset", CART_RECOVERY, "--events", str(log))
    assert done.returncode == 2 and "given twice" in done.stderr


class Terminal(io.StringIO):
    """stderr as a terminal: the command draws its progress bar on it."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_is_drawn_on_a_terminal_and_erased(tmp_path: Path) -> None:
    log = write_log(tmp_path / "events.jsonl", cart_trace(per_group=2).events, compress=False)
    out, err = io.StringIO(), Terminal()
    assert backtest([CART_RECOVERY], str(log), Settings(), out=out, err=err) == 0
    drawn = err.getvalue()
    assert drawn.startswith("\r[" + "#" * 30 + "] 100%  24 events")
    assert drawn.endswith("\r\x1b[K")  # erased before the report
    assert RULE in out.getvalue()
    bar = ProgressBar(io.StringIO(), total_bytes=1000, bytes_read=lambda: 250)
    assert bar.line(5000, 2.0) == "[#######.......................]  25%  5,000 events  2,500 events/s"


def test_memory_is_bounded_in_firings_kept() -> None:
    """A run keeps counts, not firings: the sample stops at its size however many fire."""
    ruleset = compile_ruleset(
        {
            "id": "every-pay",
            "rules": [{"id": "pay", "when": {"event": "pay"}, "then": [{"action": "points", "amount": 1}]}],
        },
        ruleset_id=None,
        lateness_ms=2000,
    )
    count = 2 * PROGRESS_EVERY + 7
    events = (Event(f"e{n}", f"u{n % 7}", "pay", T0 + n * 1000) for n in range(count))
    calls: list[int] = []
    report = run_backtest([ruleset], events, progress=calls.append, sample_size=10)
    assert report.totals.firings == count and len(report.sample) == 10
    assert report.rules[0].users == {f"u{n}" for n in range(7)}
    assert calls == [PROGRESS_EVERY, 2 * PROGRESS_EVERY, count]  # and once more at the end
    assert report.totals.clock_end_ms == T0 + (count - 1) * 1000


def test_long_runs_prune_user_state_as_live_processing_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the dedupe horizon a re-sent event id is new again, live and in a long backtest alike."""
    ruleset = compile_ruleset(library_ruleset("first-purchase"), ruleset_id=None, lateness_ms=2000)
    resent = Event("e-1", "ann", "pay", T0)
    filler = [Event(f"f{n}", f"u{n}", "view", T0 + n * 60_000) for n in range(1, 40)]
    events = [resent, *filler, Event("e-1", "ann", "pay", T0 + 40 * 60_000)]

    kept = run_backtest([ruleset], events, dedupe_horizon_ms=10 * 60_000)
    assert (kept.totals.duplicates, kept.rules[0].duplicates) == (1, 1)
    monkeypatch.setattr(cep_backtest, "PROGRESS_EVERY", 5)
    monkeypatch.setattr(cep_backtest, "PRUNE_EVERY", 10)
    pruned = run_backtest([ruleset], events, dedupe_horizon_ms=10 * 60_000)
    assert pruned.totals.duplicates == 0
    assert pruned.rules[0].firings == 1  # `first` is kept for ever: the re-sent pay does not fire again
    assert pruned.to_json()["timeline"] == kept.to_json()["timeline"]


def test_journey_files_backtest_alone_and_bad_ones_exit_2(tmp_path: Path) -> None:
    """`--journey` runs a library journey offline: entries, completions, conversions and actions are counted."""
    hour = 3_600_000
    events = [{"user_id": f"u{i}", "type": "follow", "ts": T0 + i, "event_id": f"f{i}"} for i in range(20)] + [
        {"user_id": f"u{i}", "type": "menu_click", "ts": T0 + hour + i, "event_id": f"c{i}"} for i in range(5)
    ]
    events.append({"user_id": "u0", "type": "pay", "ts": T0 + 2 * hour, "event_id": "p0"})
    log = write_log(tmp_path / "events.jsonl", events, compress=False)
    new_fan = str(LIBRARY / "journeys" / "new-fan.json")
    done = beacon_cli("backtest", "--journey", new_fan, "--events", str(log), "--json", "--jobs", "2")
    assert done.returncode == 0, done.stderr
    (journey,) = json.loads(done.stdout)["journeys"]
    totals = journey["versions"]["0"]["journey"]
    assert (totals["entered"], totals["completed"], totals["converted"]) == (20, 20, 1)
    # 20 welcomes, 15 articles for those who did not click, 5 tags for those who did.
    assert journey["actions"]["message"] == 35 and journey["actions"]["tag"] == 5
    nodes = journey["versions"]["0"]["nodes"]
    assert nodes["wait-click"]["left"] == {"menu_click": 5, "timeout": 15}
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"id": "x", "entry": {"event": "a"}, "start": "nowhere", "nodes": {}}))
    done = beacon_cli("backtest", "--journey", str(broken), "--events", str(log))
    assert done.returncode == 2
    assert f'{broken}: start: "nowhere" is not a node' in done.stderr
    done = beacon_cli("backtest", "--events", str(log))
    assert done.returncode == 2 and "--ruleset or --journey" in done.stderr
