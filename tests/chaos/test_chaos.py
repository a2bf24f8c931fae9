"""Issue 4's chaos test: kill -9 workers and the server while a producer streams; no action lost or doubled.

Real processes on loopback: a private Redis, one `beacon serve` (API, workers, timers; connectors off, since
the outbox is checked) and two `beacon worker` processes. A producer streams ~20k events over the WebSocket
while the test kills -9 a worker 4 times, then the server 3 times, restarting each (the server on the same
port). Each victim is frozen and inspected until it is caught between a step script and the appends and XACK
that follow, the window where a crash can lose effects, and killed there. When everything is processed, the
ledger, the tags and the outbox are compared with a crash-free run (one `beacon serve`, a second Redis) on
the same events.

Per-user processing order is not the same in the two runs: several consumers share a partition, and a dead
consumer's entries are reclaimed after newer ones were processed (docs/operations.md, known limitation).
Which event completes a sequence or a threshold depends on that order, so the trace gives those rules groups
(a funnel, a burst of visits) that complete exactly once in any order, and a lateness no reordering can
exceed; their actions are compared per group, the order-independent rules' actions per trigger event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from beacon.client import BeaconProducer
from beacon.redis_server import EmbeddedRedis, free_port
from cep import outbox, streams, timers
from cep.user_state import LEDGER, LEDGER_STATUS, SEEN, TAGS, user_key
from tests.chaos.processes import (
    BeaconProcess,
    beacon_env,
    kill9_mid_batch,
    stop_all,
    wait_consuming,
    wait_healthy,
)

PARTITIONS = 4
USERS = 400
EPISODES_PER_USER = 30  # about 20k events in all
SEED = 20240604
# The producer's pace: the stream lasts ~20 s, long enough for every kill to land while it runs.
EVENTS_PER_S = 1_000
# Kill -9 a `beacon worker` this many times, then the `beacon serve` this many times.
WORKER_KILLS = 4
SERVER_KILLS = 3

MINUTE = 60_000
# Past any reordering: with it no event is ever late, so reordering cannot drop one from a pattern.
PATIENT = "1h"

RULESET: dict[str, Any] = {
    "id": "chaos",
    "rules": [
        {
            "id": "big-pay",
            "when": {"event": "pay", "where": {"field": "amount", "op": ">=", "value": 500}},
            "then": [{"action": "coupon", "coupon_id": "C-BIG", "params": {"amount": "{{event.amount}}"}}],
        },
        {
            # A tag action is recorded on every firing; a delayed action goes through the timer set.
            "id": "vip",
            "when": {"event": "pay", "where": {"field": "amount", "op": ">=", "value": 900}},
            "then": [{"action": "tag", "add": ["vip"]}, {"action": "points", "amount": 10, "delay": "1s"}],
        },
        {
            "id": "member-on-signup",
            "when": {"event": "signup"},
            "then": [{"action": "tag", "add": ["member"]}],
        },
        {
            # Chained: fires on the tag_added event the tag action emits.
            "id": "member-welcome",
            "when": {"event": "tag_added", "where": {"field": "tag", "op": "==", "value": "member"}},
            "then": [{"action": "coupon", "coupon_id": "C-WELCOME", "params": {"cause": "{{event.cause_event_id}}"}}],
        },
        {
            "id": "funnel",
            "when": {
                "sequence": {
                    "first": {"event": "view"},
                    "then": {"event": "add_to_cart"},
                    "within": "5m",
                    "correlate": ["sku"],
                }
            },
            "then": [{"action": "message", "channel": "sms", "template": "cart", "params": {"sku": "{{event.sku}}"}}],
            "reentry": {"policy": "always"},
            "lateness": PATIENT,
        },
        {
            "id": "three-visits",
            "when": {"threshold": {"match": {"event": "visit"}, "count": 3, "window": "1m"}},
            "then": [{"action": "points", "amount": 5, "reason": "{{event.burst}}"}],
            "reentry": {"policy": "always"},
            "lateness": PATIENT,
        },
        {
            # Never followed by a checkout: each cart fires once, from a timer, at ts + 1m + 1h (in the past).
            "id": "cart-left",
            "when": {
                "absence": {
                    "first": {"event": "open_cart"},
                    "missing": {"event": "checkout"},
                    "within": "1m",
                    "correlate": ["cart"],
                }
            },
            "then": [
                {"action": "message", "channel": "sms", "template": "cart_left", "params": {"cart": "{{event.cart}}"}}
            ],
            "reentry": {"policy": "always"},
            "lateness": PATIENT,
        },
    ],
}
# Rules whose trigger event depends on processing order, and the action param naming the trigger's group.
GROUPED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "funnel": lambda params: params["params"]["sku"],
    "three-visits": lambda params: params["reason"],
}


def generate_events(seed: int = SEED) -> list[dict[str, Any]]:
    """A deterministic trace: many users, explicit ids, timestamps 4 h to 1.5 h ago, per-user ts ascending."""
    rng = random.Random(seed)
    start = (int(time.time() * 1000) // 1000) * 1000 - 4 * 60 * MINUTE
    per_user: list[list[dict[str, Any]]] = []
    for u in range(USERS):
        user, cursor, evs = f"u{u}", start + rng.randrange(MINUTE), []

        def add(kind: str, ts: int, user: str = user, evs: list[dict[str, Any]] = evs, **attrs: Any) -> None:
            evs.append({"user_id": user, "type": kind, "ts": ts, "attrs": attrs})

        if rng.random() < 0.5:
            add("signup", cursor)
        for k in range(EPISODES_PER_USER):
            episode = rng.choices(["funnel", "visits", "pay", "cart", "noise"], weights=[2, 2, 4, 1, 1])[0]
            if episode == "funnel":
                add("view", cursor, sku=f"{user}-f{k}")
                add("add_to_cart", cursor + rng.randrange(1_000, 4 * MINUTE), sku=f"{user}-f{k}")
            elif episode == "visits":
                for _ in range(3):
                    add("visit", cursor + rng.randrange(10_000), burst=f"{user}-v{k}")
            elif episode == "pay":
                add("pay", cursor, amount=rng.randrange(1, 1000))
            elif episode == "cart":
                add("open_cart", cursor, cart=f"{user}-c{k}")
            else:
                add(rng.choice(["other", "view"]), cursor, sku="nothing")
            # Episodes 5 min apart: no funnel, burst or cart window overlaps the next episode's.
            cursor += 5 * MINUTE
        per_user.append(sorted(evs, key=lambda event: event["ts"]))
    # Interleave users at random, keeping each user's events in ts order.
    events: list[dict[str, Any]] = []
    remaining = [list(reversed(evs)) for evs in per_user]
    live = [i for i, evs in enumerate(remaining) if evs]
    while live:
        pick = rng.randrange(len(live))
        event = remaining[live[pick]].pop()
        event["event_id"] = f"e{len(events)}"
        events.append(event)
        if not remaining[live[pick]]:
            live[pick] = live[-1]
            live.pop()
    return events


def takes_part(event: dict[str, Any]) -> bool:
    """Whether the event matches a rule: only those leave a dedupe mark (`seen`); the rest change nothing."""
    if event["type"] == "pay":
        return bool(event["attrs"]["amount"] >= 500)
    return event["type"] in {"signup", "visit", "open_cart"} or (
        event["type"] in {"view", "add_to_cart"} and event["attrs"]["sku"] != "nothing"
    )


@dataclass
class Outcome:
    """What a run left in Redis."""

    # Per user: (rule, trigger or group, type, params) -> how many actions.
    actions: dict[str, Counter[tuple[str, str, str, str]]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    tags: dict[str, set[str]] = field(default_factory=dict)
    pending_ids: set[str] = field(default_factory=set)
    outbox_ids: set[str] = field(default_factory=set)
    outbox_entries: int = 0
    unprocessed: list[str] = field(default_factory=list)
    misattributed: list[tuple[str, str]] = field(default_factory=list)


async def read_outcome(redis: aioredis.Redis, events: list[dict[str, Any]]) -> Outcome:
    """Ledger (without run-specific times and ids), statuses, tags, the outbox, and unprocessed event ids."""
    outcome = Outcome()
    by_id = {event["event_id"]: event for event in events}
    users = sorted({event["user_id"] for event in events})
    async with redis.pipeline(transaction=False) as pipe:
        for user in users:
            pipe.hgetall(user_key(user, LEDGER))
            pipe.hgetall(user_key(user, LEDGER_STATUS))
            pipe.smembers(user_key(user, TAGS))
        replies = await pipe.execute()
    for i, user in enumerate(users):
        records, statuses, tags = replies[3 * i : 3 * i + 3]
        outcome.actions[user] = Counter()
        for action_id, raw in records.items():
            record = json.loads(raw)
            rule, trigger, params = record["rule_id"], record["trigger_id"], record["params"]
            if rule in GROUPED:
                group = str(GROUPED[rule](params))
                # The trigger may be any event of the group, but it must be one of them.
                attrs = by_id[trigger]["attrs"] if trigger in by_id else {}
                if group not in (attrs.get("sku"), attrs.get("burst")):
                    outcome.misattributed.append((rule, trigger))
                trigger = f"group:{group}"
            key = (rule, trigger, record["type"], json.dumps(params, sort_keys=True))
            outcome.actions[user][key] += 1
            status = json.loads(statuses[action_id])["status"]
            outcome.statuses[status] += 1
            if status == "pending":
                outcome.pending_ids.add(action_id.decode())
        outcome.tags[user] = {tag.decode() for tag in tags}
    for partition in range(PARTITIONS):
        for _, fields in await redis.xrange(outbox.outbox_key(partition)):
            outcome.outbox_ids.add(json.loads(fields[outbox.OUTBOX_FIELD])["action_id"])
            outcome.outbox_entries += 1
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.zscore(user_key(event["user_id"], SEEN), event["event_id"])
        seen = await pipe.execute()
    outcome.unprocessed = [
        event["event_id"] for event, score in zip(events, seen, strict=True) if score is None and takes_part(event)
    ]
    return outcome


async def settled(redis: aioredis.Redis, timeout_s: float) -> None:
    """Wait until no stream entry is pending or undelivered and no timer waits, for 1 s in a row."""
    deadline = time.monotonic() + timeout_s
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        busy = await streams.backlog(redis, PARTITIONS) + await timers.pending_count(redis, PARTITIONS)
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 1.0:
            return
        await asyncio.sleep(0.05)
    backlog = await streams.backlog(redis, PARTITIONS)
    waiting = await timers.pending_count(redis, PARTITIONS)
    raise AssertionError(f"not settled within {timeout_s}s: stream backlog {backlog}, timers {waiting}")


@dataclass
class KillCues:
    """Kill j happens while the producer streams part j of the trace: `due[j]` is set halfway through that
    part, and the producer starts part j + 1 only once `done[j]` is set. So every kill lands mid-stream,
    however slow the machine."""

    kills: int
    due: list[asyncio.Event] = field(init=False)
    done: list[asyncio.Event] = field(init=False)

    def __post_init__(self) -> None:
        self.due = [asyncio.Event() for _ in range(self.kills)]
        self.done = [asyncio.Event() for _ in range(self.kills)]

    def release(self) -> None:
        """Let the producer run to the end (after the last kill, or when the test fails)."""
        for event in self.done:
            event.set()


async def stream_events(
    url: str, events: list[dict[str, Any]], events_per_s: float, cues: KillCues | None = None
) -> BeaconProducer:
    """Send every event over the WebSocket at a steady pace, in step with `cues` if given."""
    parts = cues.kills + 1 if cues is not None else 1
    part_size = -(-len(events) // parts)
    paced_since, paced = time.monotonic(), 0
    async with BeaconProducer(url, batch_size=100, linger_ms=5, max_backoff_s=0.5) as producer:
        for part in range(parts):
            chunk = events[part * part_size : (part + 1) * part_size]
            for index, event in enumerate(chunk):
                if cues is not None and part < cues.kills and index == len(chunk) // 2:
                    cues.due[part].set()
                await producer.send(event)
                paced += 1
                if paced % 100 == 0:
                    ahead = paced / events_per_s - (time.monotonic() - paced_since)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            if cues is not None and part < cues.kills:
                await cues.done[part].wait()
                paced_since, paced = time.monotonic(), 0  # no burst to catch up after waiting
    return producer


@contextlib.asynccontextmanager
async def private_redis(path: Path) -> AsyncIterator[tuple[EmbeddedRedis, aioredis.Redis]]:
    """A Redis of the test's own, and a client on it; stopped on exit."""
    server = EmbeddedRedis(path)
    server.start()
    client = aioredis.Redis.from_url(server.url)
    try:
        yield server, client
    finally:
        await client.aclose()
        server.stop()


async def put_ruleset(session: aiohttp.ClientSession, port: int) -> None:
    """Store the ruleset through the API."""
    async with session.put(f"http://127.0.0.1:{port}/v1/rulesets/chaos", json=RULESET) as response:
        assert response.status == 200, await response.text()


async def reference_run(tmp_path: Path, events: list[dict[str, Any]]) -> Outcome:
    """The crash-free run: one `beacon serve`, nothing killed, the same events as fast as they go."""
    async with private_redis(tmp_path / "reference-redis") as (server, redis), aiohttp.ClientSession() as session:
        serve = BeaconProcess("serve", beacon_env(server.url, free_port()), tmp_path, "reference-serve")
        try:
            serve.start()
            await wait_healthy(serve, session)
            await put_ruleset(session, serve.port)
            producer = await stream_events(f"http://127.0.0.1:{serve.port}", events, events_per_s=1e9)
            assert not producer.errors and producer.acked_events == len(events)
            await settled(redis, timeout_s=60)
            return await read_outcome(redis, events)
        finally:
            stop_all([serve])


def reclaimed_entries(processes: list[BeaconProcess]) -> int:
    """Stream entries the processes took over from dead consumers (from their warning logs)."""
    total = 0
    for process in processes:
        for line in process.log_text().splitlines():
            if "stale entries" in line:
                total += int(line.split("reclaimed ")[1].split()[0])
    return total


@pytest.mark.timeout(180)
async def test_kill_9_workers_then_server_while_streaming_loses_and_doubles_no_action(tmp_path: Path) -> None:
    events = generate_events()
    rng = random.Random(SEED)
    async with private_redis(tmp_path / "redis") as (server, redis), aiohttp.ClientSession() as session:
        port = free_port()
        serve = BeaconProcess("serve", beacon_env(server.url, port), tmp_path, "serve")
        workers = [BeaconProcess("worker", beacon_env(server.url, port), tmp_path, f"worker{i}") for i in range(2)]
        everyone = [serve, *workers]
        producing: asyncio.Task[BeaconProducer] | None = None
        try:
            for process in everyone:
                process.start()
            await wait_healthy(serve, session)
            await put_ruleset(session, port)
            for worker in workers:
                await wait_consuming(worker, redis, PARTITIONS)
            plan = ["worker"] * WORKER_KILLS + ["serve"] * SERVER_KILLS
            cues = KillCues(len(plan))
            producing = asyncio.create_task(stream_events(f"http://127.0.0.1:{port}", events, EVENTS_PER_S, cues))
            killed_at = []
            try:
                for j, target in enumerate(plan):
                    await cues.due[j].wait()
                    assert not producing.done(), producing  # it waits for the kills: it must not have failed
                    victim = serve if target == "serve" else rng.choice(workers)
                    killed_at.append(await kill9_mid_batch(victim, redis, PARTITIONS, rng, wait_s=2.0))
                    victim.start()  # the server on the same port: the producer reconnects, resends what has no ack
                    if victim is serve:
                        await wait_healthy(serve, session)
                    else:
                        await wait_consuming(victim, redis, PARTITIONS)
                    cues.done[j].set()
            finally:
                cues.release()
            producer = await asyncio.wait_for(producing, timeout=60)
            assert not producer.errors and producer.acked_events == len(events)
            assert producer.connections >= 1 + SERVER_KILLS  # it lost the socket and reconnected each time
            await settled(redis, timeout_s=60)
            chaos = await read_outcome(redis, events)
            reclaimed = reclaimed_entries(everyone)
        finally:
            if producing is not None and not producing.done():
                producing.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await producing
            stop_all(everyone)
    assert serve.kills == SERVER_KILLS and sum(worker.kills for worker in workers) == WORKER_KILLS
    # The window this test exists for was hit: a process died after a step script, before its appends and
    # XACK. If no kill ever finds a process there, entries are acknowledged too early or the kills prove nothing.
    assert "after step" in killed_at, killed_at
    expected = await reference_run(tmp_path, events)

    # The reference is itself exact: nothing queued twice, every event processed.
    assert expected.unprocessed == [] and expected.misattributed == []
    assert expected.outbox_entries == len(expected.outbox_ids) == len(expected.pending_ids)
    assert set(expected.statuses) == {"pending", "delivered"}  # every delayed action was released
    # Every accepted event was processed: its id is in the user's dedupe set.
    assert chaos.unprocessed == [], f"{len(chaos.unprocessed)} events never processed: {chaos.unprocessed[:10]}"
    assert chaos.misattributed == []
    # None lost, none doubled: the same actions, per user, as the crash-free run.
    differing = {user for user in expected.actions if chaos.actions.get(user) != expected.actions[user]}
    assert not differing, [
        (user, chaos.actions[user] - expected.actions[user], expected.actions[user] - chaos.actions[user])
        for user in sorted(differing)[:3]
    ]
    assert chaos.statuses == expected.statuses
    assert chaos.tags == expected.tags
    # Every pending action reached the outbox (copies are fine: the outbox consumer dedupes by action id),
    # and nothing else did.
    missing = chaos.pending_ids - chaos.outbox_ids
    assert not missing, f"{len(missing)} pending actions never reached the outbox"
    assert chaos.outbox_ids == chaos.pending_ids
    print(
        f"\nchaos: {len(events)} events, {WORKER_KILLS} worker and {SERVER_KILLS} server kills, "
        f"killed {killed_at}, {reclaimed} entries reclaimed, {producer.connections} producer connections, "
        f"{sum(chaos.statuses.values())} actions, {chaos.outbox_entries - len(chaos.outbox_ids)} outbox copies"
    )
