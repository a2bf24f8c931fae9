"""The `beacon` commands a rule author uses against a running server, run as real processes: rules and journeys
(list, get, diff, delete, push, dry-run, stats), `users show`, `actions tail`, `dead-letters list / replay`."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from api import paging, routes_dead_letters, routes_dryrun, routes_segments
from beacon import cli_audiences, cli_commands
from beacon.cli import build_parser
from beacon.redis_server import free_port
from rules.store import RulesetStore
from tests.harness import Beacon, eventually, running_beacon, server_settings
from tests.processes import BEACON, clean_env
from tests.processes import run_beacon as beacon

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC

RULESET = {
    "id": "big-spend",
    "rules": [
        {
            "id": "paid-1000",
            "when": {"event": "pay", "where": {"field": "amount", "op": ">=", "value": 1000}},
            "then": [{"action": "coupon", "coupon_id": "C-1000"}, {"action": "tag", "add": ["big_spender"]}],
        }
    ],
}
JOURNEY = {
    "id": "cart-nudge",
    "entry": {"event": "add_to_cart"},
    "key": ["sku"],
    "start": "wait",
    "nodes": {
        "wait": {"wait": "30m", "next": "sms"},
        "sms": {
            "do": [{"action": "message", "channel": "sms", "template": "cart", "params": {"sku": "{{event.sku}}"}}]
        },
    },
}


def one_line(err: str) -> str:
    """The single line a failed command printed (no traceback, nothing else)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def with_amount(amount: int) -> dict[str, Any]:
    """RULESET with another threshold: a second version whose diff is one line."""
    document: dict[str, Any] = json.loads(json.dumps(RULESET))
    document["rules"][0]["when"]["where"]["value"] = amount
    return document


def write(path: Path, document: Any) -> str:
    path.write_text(json.dumps(document))
    return str(path)


@pytest.fixture
async def server(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    """An open server (no API keys) with its workers; actions stay pending (no connectors)."""
    async with running_beacon(server_settings(redis_url)) as running:
        yield running


async def test_new_options_name_their_env_var_and_default() -> None:
    """Every option has help (tests/test_cli.py walks the whole parser); the connection options say where
    their value comes from when not given."""
    parsers = [build_parser()]
    checked = 0
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:  # argparse keeps no public list of a parser's arguments
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                parsers += list(action.choices.values())
            elif "--url" in action.option_strings and parser.prog != "beacon healthcheck":
                assert "env BEACON_URL; default http://127.0.0.1:8080" in (action.help or ""), parser.prog
                checked += 1
            elif "--key" in action.option_strings:
                assert "env BEACON_API_KEY; default none" in (action.help or ""), parser.prog
            elif "--timeout" in action.option_strings:
                assert "default " in (action.help or ""), parser.prog
    assert checked >= 17  # rules (6), journeys (7), users, actions, dead-letters (2)


def test_the_clients_bounds_are_the_servers() -> None:
    """The command checks these before it sends anything: they must be the server's."""
    assert cli_commands.MAX_DRY_RUN_EVENTS == routes_dryrun.MAX_DRY_RUN_EVENTS
    assert cli_commands.MAX_LIMIT == paging.LIST_LIMIT_MAX == routes_dead_letters.MAX_LIMIT
    assert cli_audiences.BACKFILL_CHUNK == routes_segments.MAX_BACKFILL


async def test_rules_list_get_diff_and_delete(server: Beacon, tmp_path: Path) -> None:
    url = server.url("")
    code, out, err = await beacon("rules", "push", write(tmp_path / "v1.json", RULESET), "--url", url)
    assert (code, out.strip(), err) == (0, "pushed big-spend as version 1", "")
    code, _, err = await beacon("rules", "diff", "big-spend", "--url", url)
    assert (code, one_line(err)) == (
        2,
        "beacon: big-spend keeps no version before 1: give --from N, or a FILE to compare with",
    )
    await server.put_ruleset(with_amount(2000))

    code, out, _ = await beacon("rules", "list", BEACON_URL=url)
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split() == ["id", "version", "rules", "updated", "(UTC)", "description"]
    assert row.split()[:3] == ["big-spend", "2", "1"]
    code, out, _ = await beacon("rules", "list", "--json", BEACON_URL=url)
    assert [(item["id"], item["version"]) for item in json.loads(out)["rulesets"]] == [("big-spend", 2)]

    code, out, _ = await beacon("rules", "get", "big-spend", "--version", "1", BEACON_URL=url)
    assert (code, json.loads(out)) == (0, RULESET)
    code, out, _ = await beacon("rules", "get", "big-spend", "--json", BEACON_URL=url)
    assert (json.loads(out)["version"], json.loads(out)["versions"]) == (2, [1, 2])

    code, out, _ = await beacon("rules", "diff", "big-spend", BEACON_URL=url)
    assert code == 0
    lines = out.splitlines()
    assert lines[:2] == ["--- big-spend v1", "+++ big-spend v2"]
    assert [line for line in lines[2:] if line[:1] in "+-"] == ['-          "value": 1000', '+          "value": 2000']
    code, out, _ = await beacon("rules", "diff", "big-spend", "--from", "2", "--to", "2", BEACON_URL=url)
    assert (code, out) == (0, "")

    local = with_amount(5000)
    del local["id"]  # a file without its id is the document the server stores under the id
    code, out, _ = await beacon("rules", "diff", "big-spend", write(tmp_path / "local.json", local), BEACON_URL=url)
    assert code == 0
    assert [line for line in out.splitlines() if line[:1] in "+-"] == [
        "--- big-spend v2",
        f"+++ {tmp_path / 'local.json'}",
        '-          "value": 2000',
        '+          "value": 5000',
    ]

    code, out, _ = await beacon("rules", "delete", "big-spend", BEACON_URL=url)
    assert (code, out.strip()) == (0, "deleted ruleset big-spend")
    code, out, _ = await beacon("rules", "list", BEACON_URL=url)
    assert out.split() == ["id", "version", "rules", "updated", "(UTC)", "description"]  # the empty table
    code, _, err = await beacon("rules", "get", "big-spend", BEACON_URL=url)
    assert code == 4
    assert one_line(err).startswith(f"beacon: {url}/v1/rulesets/big-spend: HTTP 404 not_found: ")


async def test_rules_dry_run_prints_firings_and_names_the_bad_line(server: Beacon, tmp_path: Path) -> None:
    url = server.url("")
    ruleset = write(tmp_path / "ruleset.json", RULESET)
    events = tmp_path / "events.jsonl"
    lines = [
        {"user_id": "alice", "type": "pay", "ts": T0, "event_id": "e1", "attrs": {"amount": 1200}},
        {"user_id": "bob", "type": "pay", "ts": T0 + 1000, "event_id": "e2", "attrs": {"amount": 10}},
    ]
    events.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    code, out, err = await beacon("rules", "dry-run", ruleset, "--events", str(events), BEACON_URL=url)
    assert (code, err) == (0, "")
    summary, blank, header, firing = out.strip().splitlines()
    assert blank == ""
    assert summary == "ruleset big-spend: 2 events, 1 firing"
    assert header.split()[:5] == ["at", "(UTC)", "user", "rule", "event"]
    assert firing.startswith("2026-01-01 00:00:00  alice  paid-1000  e1     ")
    assert 'coupon {"coupon_id":"C-1000"}; tag {"add":["big_spender"]}' in firing
    # The dry-run stored nothing.
    assert (await server.call("GET", "/v1/rulesets"))[1] == {"rulesets": [], "next": None, "total": 0}

    profiles = write(tmp_path / "profiles.json", {"alice": {"tags": ["vip"]}})
    code, out, _ = await beacon(
        "rules", "dry-run", ruleset, "--events", str(events), "--profiles", profiles, "--json", BEACON_URL=url
    )
    assert code == 0
    assert [(f["user_id"], f["rule_id"]) for f in json.loads(out)["firings"]] == [("alice", "paid-1000")]

    # A bad event is named by its file and line (line 3: a blank line does not count as an event).
    events.write_text(json.dumps(lines[0]) + "\n\n" + json.dumps({"user_id": "bob", "type": 5}) + "\n")
    code, _, err = await beacon("rules", "dry-run", ruleset, "--events", str(events), BEACON_URL=url)
    assert code == 1
    assert one_line(err).startswith(f"{events}:3: events[1].type: ")

    invalid = write(tmp_path / "invalid.json", {"id": "bad", "rules": [{"id": "r1", "when": {"event": 5}, "then": []}]})
    code, _, err = await beacon("rules", "dry-run", invalid, "--events", str(events), BEACON_URL=url)
    assert code == 1
    assert err.startswith(f"{invalid}: rules[0]."), err

    code, _, err = await beacon("rules", "dry-run", ruleset, "--events", str(tmp_path / "nope.jsonl"), BEACON_URL=url)
    assert (code, one_line(err)) == (2, f"beacon: cannot read {tmp_path / 'nope.jsonl'}: No such file or directory")


async def test_rules_list_follows_the_pages_to_the_end(redis_url: str, redis_client: aioredis.Redis) -> None:
    """The server answers at most MAX_LIMIT a page: `rules list` lists every ruleset, `--limit N` the first N."""
    ids = [f"rs-{n:04d}" for n in range(cli_commands.MAX_LIMIT + 5)]
    store = RulesetStore(redis_client)
    for start in range(0, len(ids), 50):  # stored as PUT does, without compiling each; within the pool
        await asyncio.gather(*(store.put(item, {**RULESET, "id": item}, T0) for item in ids[start : start + 50]))
    async with running_beacon(server_settings(redis_url, run_workers=False)) as server:
        url = server.url("")
        code, out, _ = await beacon("rules", "list", BEACON_URL=url)
        assert code == 0
        assert [row.split()[0] for row in out.strip().splitlines()[1:]] == ids
        code, out, _ = await beacon("rules", "list", "--json", BEACON_URL=url)
        assert (code, [item["id"] for item in json.loads(out)["rulesets"]]) == (0, ids)
        code, out, _ = await beacon("rules", "list", "--limit", "3", "--json", BEACON_URL=url)
        assert (code, [item["id"] for item in json.loads(out)["rulesets"]]) == (0, ids[:3])
        code, _, err = await beacon("rules", "list", "--limit", "0", BEACON_URL=url)
        assert code == 2 and "use a whole number from 1" in err


async def test_journeys_push_list_dry_run_stats_and_delete(server: Beacon, tmp_path: Path) -> None:
    url = server.url("")
    journey = write(tmp_path / "journey.json", JOURNEY)
    code, out, err = await beacon("journeys", "push", journey, BEACON_URL=url)
    assert (code, out.strip(), err) == (0, "pushed cart-nudge as version 1", "")

    code, out, _ = await beacon("journeys", "list", BEACON_URL=url)
    header, row = out.strip().splitlines()
    assert header.split()[:3] == ["id", "version", "nodes"] and row.split()[:3] == ["cart-nudge", "1", "2"]
    code, out, _ = await beacon("journeys", "get", "cart-nudge", BEACON_URL=url)
    assert json.loads(out) == JOURNEY

    code, out, _ = await beacon("journeys", "stats", "cart-nudge", BEACON_URL=url)
    assert out.strip().splitlines() == [
        "journey cart-nudge (active version 1)",
        "",
        "no statistics yet: nobody entered",
    ]

    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps({"user_id": "u1", "type": "add_to_cart", "ts": T0, "event_id": "c1", "attrs": {"sku": "A1"}})
    )
    code, out, err = await beacon("journeys", "dry-run", journey, "--events", str(events), BEACON_URL=url)
    assert (code, err) == (0, "")
    lines = out.strip().splitlines()
    assert lines[0] == "journey cart-nudge: 1 event, 1 step with actions"
    assert lines[3].startswith('2026-01-01 00:30:00  u1    sms   message {"channel":"sms","template":"cart"')
    assert "totals: entered 1, completed 1, exited 0, converted 0" in lines

    invalid = dict(JOURNEY, start="nowhere")
    code, _, err = await beacon("journeys", "push", write(tmp_path / "bad.json", invalid), BEACON_URL=url)
    assert code == 1 and "start" in err and "Traceback" not in err

    code, out, _ = await beacon("journeys", "delete", "cart-nudge", BEACON_URL=url)
    assert (code, out.strip()) == (0, "deleted journey cart-nudge")
    code, _, err = await beacon("journeys", "stats", "cart-nudge", BEACON_URL=url)
    assert code == 4 and "HTTP 404" in one_line(err)


async def test_users_show_has_the_profile_the_tag_and_the_trace(server: Beacon) -> None:
    url = server.url("")
    status, body = await server.call("PATCH", "/v1/users/alice", json={"attrs": {"region": "SH"}, "add_tags": ["vip"]})
    assert status == 200, body
    await server.put_ruleset(RULESET)
    status, body = await server.call("PUT", "/v1/journeys/cart-nudge", json=JOURNEY)
    assert status == 200, body
    await server.post_events([{"user_id": "alice", "type": "pay", "event_id": "p1", "attrs": {"amount": 1500}}])
    await server.wait_actions("alice", 2)
    await server.post_events([{"user_id": "alice", "type": "add_to_cart", "event_id": "c1", "attrs": {"sku": "A1"}}])
    await eventually(lambda: server.call("GET", "/v1/users/alice"), lambda answer: bool(answer[1]["journeys"]))

    code, out, err = await beacon("users", "show", "alice", BEACON_URL=url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:4] == ["user      alice", 'attrs     region: "SH"', "tags      big_spender, vip", "segments  -"]
    assert lines[4] == "journeys  cart-nudge: 1 instance"
    assert lines[5].startswith("            key sA1 v1 at wait, due ")
    rows = lines[lines.index("trace, newest first (3 entries):") + 2 :]
    assert [row.split()[4:7] for row in rows] == [
        ["journey", "cart-nudge", "v1"],
        ["journey", "cart-nudge", "v1"],
        ["rule", "big-spend/paid-1000", "fired"],
    ]
    assert rows[0].split()[7:9] == ["wait", "timer_set"]
    assert rows[2].endswith("event_id p1; actions: pending, delivered")

    code, out, _ = await beacon("users", "show", "alice", "--trace", "0", "--json", BEACON_URL=url)
    shown = json.loads(out)
    assert (shown["user"]["tags"], shown["trace"]) == (["big_spender", "vip"], [])


async def test_actions_tail_and_follow_until_ctrl_c(server: Beacon) -> None:
    url = server.url("")
    await server.put_ruleset(RULESET)
    await server.post_events([{"user_id": "alice", "type": "pay", "event_id": "p1", "attrs": {"amount": 1500}}])
    await server.wait_actions("alice", 2)

    code, out, _ = await beacon("actions", "tail", "--user", "alice", BEACON_URL=url)
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split() == ["created", "(UTC)", "user", "rule", "type", "status", "params"]
    assert sorted(row.split()[2:6] for row in rows) == [
        ["alice", "big-spend/paid-1000", "coupon", "pending"],
        ["alice", "big-spend/paid-1000", "tag", "delivered"],
    ]

    follow = await asyncio.create_subprocess_exec(
        *BEACON, "actions", "tail", "--follow", "--interval", "0.1", "--json", "--url", url,
        env=clean_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert follow.stdout is not None
        first = [json.loads(await asyncio.wait_for(follow.stdout.readline(), 30)) for _ in range(2)]
        assert {action["user_id"] for action in first} == {"alice"}
        await server.post_events([{"user_id": "bob", "type": "pay", "event_id": "p2", "attrs": {"amount": 2000}}])
        later = [json.loads(await asyncio.wait_for(follow.stdout.readline(), 30)) for _ in range(2)]
        assert {(action["user_id"], action["type"]) for action in later} == {("bob", "coupon"), ("bob", "tag")}
        follow.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(follow.communicate(), 30)
    finally:
        if follow.returncode is None:
            follow.kill()
            await follow.wait()
    assert (follow.returncode, err.decode()) == (0, "")


async def test_dead_letters_list_and_replay(redis_url: str, redis_client: aioredis.Redis) -> None:
    keys = {"root": frozenset({"rules", "events", "admin"}), "author": frozenset({"rules"})}
    settings = server_settings(redis_url, run_connectors=True, api_keys=keys)
    async with running_beacon(settings, api_key="root") as server:
        url = server.url("")
        code, out, err = await beacon("dead-letters", "list", "--url", url, "--key", "root")
        assert (code, out.split(), err) == (
            0,
            ["id", "dead", "at", "(UTC)", "connector", "reason", "user", "action", "action", "id"],
            "",
        )
        code, _, err = await beacon("dead-letters", "list", BEACON_URL=url, BEACON_API_KEY="author")
        assert code == 4
        assert one_line(err).startswith(f"beacon: {url}/v1/dead-letters?limit=100: HTTP 403 forbidden: ")

        # No coupon connector is configured: the coupon gives up at once (not_configured).
        await server.put_ruleset(RULESET)
        await server.post_events([{"user_id": "alice", "type": "pay", "event_id": "p1", "attrs": {"amount": 1500}}])
        letters = await eventually(
            lambda: server.call("GET", "/v1/dead-letters"), lambda answer: bool(answer[1]["dead_letters"]), 10
        )
        (letter,) = letters[1]["dead_letters"]
        code, out, _ = await beacon(
            "dead-letters", "list", "--connector", "coupon", BEACON_URL=url, BEACON_API_KEY="root"
        )
        row = out.strip().splitlines()[1].split()
        assert (row[0], row[3:]) == (letter["id"], ["coupon", "not_configured", "alice", "coupon", letter["action_id"]])

        code, out, err = await beacon("dead-letters", "replay", "--all", BEACON_URL=url, BEACON_API_KEY="root")
        assert (code, out.strip(), err) == (0, f"replayed 1 action: {letter['action_id']}", "")
        code, out, err = await beacon("dead-letters", "replay", "--id", "1-1", BEACON_URL=url, BEACON_API_KEY="root")
        assert (code, out.strip(), one_line(err)) == (1, "replayed 0 actions", "beacon: no dead letter 1-1")
        code, _, err = await beacon("dead-letters", "replay", "--connector", "coupon", BEACON_URL=url)
        assert code == 2 and "one of the arguments --id --all is required" in err


@pytest.mark.parametrize(
    "args",
    [
        ["rules", "list"],
        ["rules", "diff", "big-spend"],
        ["journeys", "stats", "cart-nudge"],
        ["users", "show", "alice"],
        ["actions", "tail", "--follow"],
        ["dead-letters", "list"],
        ["dead-letters", "replay", "--all"],
    ],
)
async def test_a_server_that_is_down_is_one_line_and_exit_code_3(args: list[str]) -> None:
    port = free_port()
    code, _, err = await beacon(*args, BEACON_URL=f"http://127.0.0.1:{port}")
    assert (code, one_line(err)) == (3, f"beacon: cannot connect to 127.0.0.1:{port}: Connection refused")


async def test_plans_and_segment_backfill(server: Beacon, redis_client: aioredis.Redis, tmp_path: Path) -> None:
    """`plans push / list / runs / pause / resume / cancel` and `segments backfill` against a live server."""
    url = server.url("").rstrip("/")
    status, body = await server.call("PUT", "/v1/audiences/vip", json={"ids": ["a", "b"]})
    assert status == 200, body
    plan = {
        "id": "vip-day",
        "audience": "aud:vip",
        "schedule": {"cron": "0 10 * * *", "tz": "Asia/Shanghai"},
        "then": [{"action": "coupon", "coupon_id": "V"}],
    }
    code, out, err = await beacon("plans", "push", write(tmp_path / "plan.json", plan), "--url", url)
    assert (code, out.strip()) == (0, "pushed vip-day as version 1"), err
    code, out, err = await beacon("plans", "push", write(tmp_path / "bad.json", {**plan, "rate": 0}), "--url", url)
    assert code == 1 and "rate" in one_line(err), err
    code, out, _ = await beacon("plans", "list", BEACON_URL=url)
    assert code == 0 and "vip-day" in out and "active" in out, out
    code, out, _ = await beacon("plans", "pause", "vip-day", BEACON_URL=url)
    assert (code, out.strip()) == (0, "plan vip-day: paused"), out
    code, out, _ = await beacon("plans", "runs", "vip-day", "--json", BEACON_URL=url)
    assert code == 0 and json.loads(out) == {"id": "vip-day", "state": "paused", "runs": []}, out
    code, out, _ = await beacon("plans", "cancel", "vip-day", BEACON_URL=url)
    assert (code, out.strip()) == (0, "plan vip-day: cancelled"), out
    code, out, _ = await beacon("plans", "resume", "vip-day", BEACON_URL=url)
    assert (code, out.strip()) == (0, "plan vip-day: active"), out
    code, _, err = await beacon("plans", "runs", "nope", BEACON_URL=url)
    assert code != 0 and "404" in one_line(err), err

    segment = {"id": "buyers", "where": {"did": {"event": "pay"}, "within": "30d"}}
    status, body = await server.call("PUT", "/v1/segments/buyers", json=segment)
    assert status == 200, body
    lines = [{"user_id": "a", "type": "pay", "ts": T0 - 86_400_000}, {"user_id": "b", "type": "view", "ts": T0}]
    events = tmp_path / "history.jsonl"
    events.write_text("\n".join(json.dumps(line) for line in [*lines, {"user_id": "c"}]) + "\n")
    code, out, err = await beacon("segments", "backfill", "buyers", "--events", str(events), BEACON_URL=url)
    assert code == 1, (out, err)
    assert "backfilled 1 events into buyers; ignored (types it does not read): view 1" in out, out
    assert "event 3: events[2].type: is required" in err, err


async def test_report_prints_the_funnel(server: Beacon, redis_client: aioredis.Redis) -> None:
    url = server.url("").rstrip("/")
    await server.put_ruleset(RULESET)
    status, body = await server.call(
        "POST", "/v1/events", json={"events": [{"user_id": "u1", "type": "pay", "attrs": {"amount": 1500}}]}
    )
    assert status == 200, body
    await eventually(lambda: server.actions("u1"), lambda found: len(found) == 2)
    code, out, err = await beacon("report", "rulesets", "big-spend", "--by-day", BEACON_URL=url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("ruleset big-spend, ")
    total = next(line.split() for line in lines if line.startswith("total"))
    assert total[1:3] == ["1", "1"], out  # triggered 1, acted 1 (the coupon; the tag is not counted)
    assert "paid-1000" in out and "by day" in out
    code, out, _ = await beacon("report", "rulesets", "big-spend", "--csv", BEACON_URL=url)
    assert code == 0 and out.splitlines()[1].startswith("total,,1,0,1,"), out
    code, _, err = await beacon("report", "journeys", "nope", BEACON_URL=url)
    assert code != 0 and "404" in one_line(err), err
