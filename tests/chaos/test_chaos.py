"""The engine issue's chaos test: SIGKILL workers, the server and Redis while a producer streams and the
connectors deliver; 0 acknowledged events lost, 0 actions lost, 0 actions emitted twice. It runs twice:
on a single Redis ("single") and on a 3-master Redis Cluster ("cluster"), with the same trace and checks.

Real processes on loopback: a private Valkey with its append-only file as Beacon configures it (AOF,
`appendfsync everysec`), or three of them joined as a cluster without replicas (beacon.redis_server.
EmbeddedCluster, reached with a `redis+cluster://` URL: its partition 0 on the first master, 1 on the
second, 2 and 3 on the third); `beacon serve` (API, partition owners, connectors), two `beacon worker`s
and one `beacon connectors`, 4 partitions, 600 ms leases. The connectors post coupons and points to a
provider stand-in (tests/connectors/providers.FakeMerchant) that fails 5% of requests and leaves 2%
unanswered, half of each after applying the effect, and applies each Idempotency-Key once, as a real
merchant API does; it records every POST. A producer streams a seeded trace (~13k events, 300 users)
through the WebSocket client, which resends every unacknowledged frame with the same event ids.

While it streams, in a seeded order, each at a random moment of its own part of the trace, the test
SIGKILLs a worker 3 times and the server twice (frozen and killed while a partition they own has
uncommitted entries, when one is caught within 1.5 s), freezes a worker for 2 s, longer than its lease,
and lets it run on (its commit must be fenced), SIGKILLs `beacon connectors`, and SIGKILLs Redis twice,
restarted on the same data dir and port after 0.2-1 s. On the cluster a Redis kill is the SIGKILL of one
master, another one each time (seeded: the third, then the second, which also holds the rulesets and the
layout key); the others keep serving, and the killed one restarts with its nodes.conf (same id, same
slots). Without replicas its partitions are unavailable until it serves again (~2 s after it restarts):
Beacon must retry and recover. Each killed process is restarted.

The expected result is computed independently: tests/scenarios/reference.py, a brute-force reading of
docs/semantics.md, over the trace in the producer's order (the test checks it is each user's stream
order); the one chained rule, on `tag_added`, which the reference does not model, is expected by hand.
The servers run on real clocks, so the trace is built to make the outcome independent of when a clock
passes a deadline, and the test checks that premise (the reference with a "frozen" clock and with an
"eager" one agree): no `cart-left` cart is followed by a checkout that could cancel it (its deadlines
pass mid-stream, among the kills), and `trial-unpaid` deadlines are a day away, so that rule is checked
by its pending timers (cancelled and covered trials included) rather than by firings. Every other rule
is single, first, sequence or threshold: its outcome depends only on each user's order of events.

Checked: every event was acknowledged and is in its user's dedupe set; each user's events reached the
stream in the order sent (read back from the servers' append-only files after the run: a reader following
the streams can miss entries the owners trim); everything appended is committed and the backlog counters
agree; the ledger holds exactly the expected firings, each with its actions once; every action was
delivered; the provider applied exactly the ledger's actions, each once, and was posted nothing else
(repeated POSTs of an applied key are counted and printed apart); tags and the pending absence timers are
as expected; no process died by itself, nothing was dead-lettered or quarantined.

Redis durability. Each kill records the appended/committed counters of the partitions the killed server
held, just before the SIGKILL and just after the restart, and `-s` prints what the restart rolled back
("lost_appends", "lost_commits"). Owner commits are not fsync-acknowledged; a restart that rolls one back
shows in "lost_commits", and the owners must process those entries again. With `everysec` alone, Valkey
may acknowledge writes it has not written to the AOF yet (it postpones the write, for up to 2 s, while a
background fsync still runs), and a SIGKILL then loses them; ingest acks wait for the AOF fsync (WAITAOF;
BEACON_ACK_FSYNC is "auto", on when the server has AOF on) to close that gap.

- Both backends: strict. An acknowledged event that Redis loses fails the test. On the cluster the ingest
  pipeline ends with one WAITAOF per master that took writes (cep.scripts), so a master's SIGKILL cannot
  take what it acknowledged. `-s` prints, per kill, how many lost events it could have taken
  (observe.losses_by_kill: of a partition the killed server held, appended at most 2.5 s before the
  SIGKILL), which tells a durability bug from a processing one when the test fails. (Before acks waited
  on the cluster, cutting 300 KB off a killed master's AOF lost ~300 acknowledged events.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from beacon.client import BeaconProducer
from beacon.redis_server import free_port
from cep import streams
from cep.user_record import event_id_hash
from cep.user_state import read_state
from connectors.dead_letters import list_dead_letters
from tests.chaos.aof import appended_events
from tests.chaos.backends import KINDS, RedisUnderTest
from tests.chaos.observe import (
    RedisKill,
    StreamWatch,
    delivered,
    kill_redis,
    losses_by_kill,
    pending_absences,
    reposts,
    request_key,
    sample,
    settled,
    trigger_of,
)
from tests.chaos.processes import (
    BeaconProcess,
    beacon_env,
    freeze_mid_batch,
    kill9_mid_batch,
    progress_counts,
    stop_all,
    wait_consuming,
    wait_healthy,
    wait_owning,
)
from tests.chaos.trace import EVENTS_PER_S, POSTED_PER_RULE, RULESET, SEED, expected_outcome, generate_events
from tests.connectors.providers import FakeMerchant
from tests.scenarios.reference import Firing

PARTITIONS = 4
# The seeded order of the disruptions; each lands in its own part of the trace.
DISRUPTIONS = ["worker", "worker", "worker", "freeze", "connectors", "serve", "serve", "redis", "redis"]
FREEZE_S = 2.0  # > 3 leases of 600 ms: the frozen worker's partitions are taken over meanwhile
DEADLINE_S = 60.0  # for settling after the stream, and for deliveries


@dataclass
class KillCues:
    """Disruption j happens while the producer streams part j of the trace: `due[j]` is set at a random point
    of that part, and the producer starts part j + 1 only once `done[j]` is set. So every disruption lands
    mid-stream, however slow the machine."""

    kills: int
    rng: random.Random
    due: list[asyncio.Event] = field(init=False)
    done: list[asyncio.Event] = field(init=False)
    at: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.due = [asyncio.Event() for _ in range(self.kills)]
        self.done = [asyncio.Event() for _ in range(self.kills)]
        self.at = [self.rng.uniform(0.2, 0.8) for _ in range(self.kills)]

    def release(self) -> None:
        """Let the producer run to the end (after the last disruption, or when the test fails)."""
        for event in self.done:
            event.set()


async def stream_events(url: str, events: list[dict[str, Any]], cues: KillCues) -> BeaconProducer:
    """Send every event over the WebSocket at a steady pace, in step with `cues`; returns once all are acked."""
    parts = cues.kills + 1
    part_size = -(-len(events) // parts)
    paced_since, paced = time.monotonic(), 0
    async with BeaconProducer(url, batch_size=100, linger_ms=5, max_backoff_s=0.5) as producer:
        for part in range(parts):
            chunk = events[part * part_size : (part + 1) * part_size]
            for index, event in enumerate(chunk):
                if part < cues.kills and index == int(len(chunk) * cues.at[part]):
                    cues.due[part].set()
                await producer.send(event)
                paced += 1
                if paced % 100 == 0:
                    ahead = paced / EVENTS_PER_S - (time.monotonic() - paced_since)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            if part < cues.kills:
                await cues.done[part].wait()
                paced_since, paced = time.monotonic(), 0  # no burst to catch up after waiting
    return producer


@dataclass
class Cast:
    """The processes under test, their Redis, and what the disruptions did to Redis."""

    backend: RedisUnderTest
    redis: aioredis.Redis
    session: aiohttp.ClientSession
    serve: BeaconProcess
    workers: list[BeaconProcess]
    deliverer: BeaconProcess
    redis_victims: list[int]  # which server each Redis kill hits, in order
    redis_kills: list[RedisKill] = field(default_factory=list)


async def disrupt(cast: Cast, target: str, rng: random.Random) -> str:
    """One disruption of the plan, the victim restarted and back at work; returns what happened."""
    if target == "redis":
        server = cast.redis_victims[len(cast.redis_kills)]
        cast.redis_kills.append(await kill_redis(cast.backend, cast.redis, server, PARTITIONS, rng))
        return f"redis {server}" if cast.backend.cluster else "redis"
    if target == "freeze":
        frozen = rng.choice(cast.workers)
        where = await freeze_mid_batch(frozen, cast.redis, PARTITIONS, rng, FREEZE_S)
        return f"freeze {frozen.name} {where}"
    if target == "connectors":
        await asyncio.sleep(rng.uniform(0, 0.3))  # a random moment of its deliveries
        cast.deliverer.kill9()
        cast.deliverer.start()
        await wait_consuming(cast.deliverer, cast.redis, PARTITIONS)  # before the next disruption: up again
        return "connectors"
    victim = cast.serve if target == "serve" else rng.choice(cast.workers)
    where = await kill9_mid_batch(victim, cast.redis, PARTITIONS, rng, wait_s=1.5)
    victim.start()  # the server on the same port: the producer reconnects and resends what has no ack
    if victim is cast.serve:
        await wait_healthy(victim, cast.session)
    else:
        await wait_owning(victim, cast.redis, PARTITIONS)
    return f"{target} {where}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", KINDS)
async def test_sigkill_workers_server_and_redis_loses_and_doubles_nothing(tmp_path: Path, kind: str) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    plan = list(DISRUPTIONS)
    rng.shuffle(plan)
    merchant = await FakeMerchant(fail_rate=0.05, timeout_rate=0.02, seed=SEED).start()
    backend = RedisUnderTest(kind, tmp_path / "redis")
    backend.start()
    # On a cluster each Redis kill hits another master (seeded apart, so both kinds share the plan's timing).
    victims = backend.victims(plan.count("redis"), seed=f"{SEED}:victims")
    redis = backend.client()
    session = aiohttp.ClientSession()
    port = free_port()
    connectors_env = {
        "BEACON_COUPON_URL": merchant.url("/coupons"),
        "BEACON_POINTS_URL": merchant.url("/points"),
        # A dead consumer's claimed outbox entries and deliveries are taken over after 1 s.
        "BEACON_CONNECTOR_LEASE_MS": "1000",
        "BEACON_CONNECTOR_HTTP_TIMEOUT_MS": "300",
        "BEACON_CONNECTOR_MAX_ATTEMPTS": "60",
        "BEACON_CONNECTOR_BACKOFF_BASE_MS": "20",
        "BEACON_CONNECTOR_BACKOFF_MAX_MS": "300",
        "BEACON_CONNECTOR_BLOCK_MS": "50",
        "BEACON_CONNECTOR_POLL_MS": "20",
    }
    env = beacon_env(backend.url, port, PARTITIONS, BEACON_RUN_CONNECTORS="1", **connectors_env)
    serve = BeaconProcess("serve", env, tmp_path, "serve")
    workers = [BeaconProcess("worker", env, tmp_path, f"worker{i}") for i in range(2)]
    deliverer = BeaconProcess("connectors", env, tmp_path, "connectors")
    everyone = [serve, *workers, deliverer]
    cast = Cast(backend, redis, session, serve, workers, deliverer, victims)
    watch = StreamWatch(redis, PARTITIONS)
    watch_stop = asyncio.Event()
    watching = asyncio.create_task(watch.run(watch_stop))
    producing: asyncio.Task[BeaconProducer] | None = None
    outcomes: list[str] = []
    try:
        for process in everyone:
            process.start()
        await wait_healthy(serve, session)
        async with session.put(f"http://127.0.0.1:{port}/v1/rulesets/chaos", json=RULESET) as response:
            assert response.status == 200, await response.text()
        for worker in workers:
            await wait_owning(worker, redis, PARTITIONS)
        t0 = time.time_ns() // 1_000_000
        events = generate_events(t0)
        cues = KillCues(len(plan), rng)
        producing = asyncio.create_task(stream_events(f"http://127.0.0.1:{port}", events, cues))
        try:
            for j, target in enumerate(plan):
                await cues.due[j].wait()
                assert not producing.done(), producing  # it waits for the disruptions: it must not have failed
                outcomes.append(await disrupt(cast, target, rng))
                cues.done[j].set()
        finally:
            cues.release()
        producer = await asyncio.wait_for(producing, timeout=DEADLINE_S)
        streamed_s = time.monotonic() - started
        deadline = time.monotonic() + DEADLINE_S
        await settled(redis, PARTITIONS, deadline)
        users = sorted({event["user_id"] for event in events})
        books = await delivered(redis, PARTITIONS, users, deadline)
        states = {user: await read_state(redis, PARTITIONS, user) for user in users}
        absences, other_timers = await pending_absences(redis, PARTITIONS)
        counters = await progress_counts(redis, list(range(PARTITIONS)))
        dead_letters = await list_dead_letters(redis, PARTITIONS, 1_000)
        quarantined = sum([await redis.xlen(streams.quarantine_key(p)) for p in range(PARTITIONS)])
        crashed = [process.name for process in everyone if not process.alive]
        watch_stop.set()
        await asyncio.wait_for(watching, timeout=10)
    finally:
        watch_stop.set()
        for task in (producing, watching):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        stop_all(everyone)
        await session.close()
        await redis.aclose()
        backend.stop()
        await merchant.close()

    # -- what happened ------------------------------------------------------------------------------
    appended, copies = appended_events([server.data_dir for server in backend.servers], PARTITIONS)
    actions = [action for user in users for action in books[user]]
    posts = Counter(request_key(request) for request in merchant.requests)
    lost = [e for e in events if event_id_hash(e["event_id"]) not in states[e["user_id"]].seen]
    # Acks wait for the AOF fsync on every server that took the writes (one WAITAOF per master on the
    # cluster, cep.scripts), so nothing acknowledged may be lost on either backend. Which kill could have
    # taken a loss is worked out for the report only, to tell a durability bug from a processing one.
    taken, _ = losses_by_kill(lost, cast.redis_kills, watch, PARTITIONS)
    unexplained = [e["event_id"] for e in lost]
    lost_ids = {e["event_id"] for e in lost}
    kept = [e for e in events if e["event_id"] not in lost_ids]
    expected = expected_outcome(kept, t0)
    # Actions of firings that only lost events caused may have reached the provider before the kill.
    vanished = expected_outcome(events, t0).firings - expected.firings if lost else frozenset()
    sent = {action["action_id"]: action for action in actions if action["type"] != "tag"}
    strays = {key: request.body for request in merchant.requests if (key := request_key(request)) not in sent}
    fenced = {process.name: process.log_text().count("was superseded") for process in everyone}
    unretrieved = sum(process.log_text().count("Task exception was never retrieved") for process in everyone)
    report = {
        "redis": kind,
        "events": len(events),
        "appended_copies": copies,
        "producer_connections": producer.connections,
        "disruptions": outcomes,
        "fenced_commits": fenced,
        "unretrieved_task_errors": unretrieved,
        "redis_kills": [
            {
                "server": kill.server,
                "partitions": kill.partitions,
                "down_s": round(kill.down_s, 2),
                "lost_appends": kill.lost_appends,
                "lost_commits": kill.lost_commits,
                "acked_events_lost": count,
            }
            for kill, count in zip(cast.redis_kills, taken, strict=True)
        ],
        "acked_events_lost": len(lost),
        "progress_counters": counters,
        "expected_firings": len(expected.firings),
        "late_events": len(expected.late),
        "pending_trials": len(expected.trial_pending),
        "actions": len(actions),
        "delayed_through_timers": sum(1 for a in actions if int(a["due_at"]) > int(a["created_at"])),
        "posts": sum(posts.values()),
        **reposts(merchant),
        "posted_for_lost_events": len(strays),
        "applied_for_lost_events": len(set(merchant.effects) - set(sent)),
        "provider_replies": dict(merchant.outcomes),
        "streamed_s": round(streamed_s, 1),
        "total_s": round(time.monotonic() - started, 1),
    }
    print("\nchaos:", json.dumps(report))

    # -- the processes were disrupted as planned, and the producer got through it --------------------
    assert serve.kills == plan.count("serve") and deliverer.kills == plan.count("connectors")
    assert sum(worker.kills for worker in workers) == plan.count("worker")
    assert sum(worker.freezes for worker in workers) == plan.count("freeze")
    assert len(cast.redis_kills) == plan.count("redis")
    assert not producer.errors and producer.acked_events == len(events)
    assert producer.connections >= 1 + plan.count("serve")  # it lost the socket and reconnected each time
    assert not crashed, f"processes that died by themselves: {crashed}"
    # An owner that lost its lease (frozen, or after a Redis restart) had a commit refused at least once.
    assert sum(fenced.values()) >= 1, "no commit was ever fenced: the freeze proved nothing"

    # -- no acknowledged event lost: every one was processed (its id is in the user's dedupe set) ------
    assert not unexplained, f"{len(unexplained)} acknowledged events never processed: {unexplained[:10]}"
    # ... and each user's events were appended in the order the producer sent them (the reference's order).
    sent_order: dict[str, list[str]] = defaultdict(list)
    for event in events:
        sent_order[event["user_id"]].append(event["event_id"])
    kept_ids = {event["event_id"] for event in kept}
    assert {e for order in appended.values() for e in order} == kept_ids, "what the streams got is not what was kept"
    reordered = [user for user in users if appended[user] != [e for e in sent_order[user] if e in kept_ids]]
    assert not reordered, [(user, appended[user][:20], sent_order[user][:20]) for user in reordered[:2]]

    # Everything appended is committed (settled() compared positions): the counters must agree ("exact backlog").
    assert all(added == done for added, done in counters), f"(appended, committed) per partition: {counters}"

    # -- the ledger holds exactly the expected firings, each with its actions once ---------------------
    by_firing: dict[Firing, list[dict[str, Any]]] = defaultdict(list)
    for action in actions:
        by_firing[(action["rule_id"], action["user_id"], trigger_of(action["trigger_id"]))].append(action)
    missing = expected.firings - set(by_firing)
    unexpected = set(by_firing) - expected.firings
    assert not missing, f"{len(missing)} expected firings missing from the ledger: {sample(missing)}"
    assert not unexpected, f"{len(unexpected)} unexpected firings in the ledger: {sample(unexpected)}"
    doubled = {key: len(found) for key, found in by_firing.items() if len(found) != expected.actions_per_rule[key[0]]}
    assert not doubled, f"firings with the wrong number of actions: {sample(doubled.items())}"
    assert len({action["action_id"] for action in actions}) == len(actions)

    # -- every action was delivered, and the provider applied each effect exactly once ----------------
    statuses = Counter(action["status"] for action in actions)
    stuck = [(a["action_id"], a["user_id"], a["status"]) for a in actions if a["status"] != "delivered"]
    assert set(statuses) == {"delivered"}, f"{statuses}; not delivered: {stuck[:5]}"
    assert not dead_letters, dead_letters[:3]
    assert quarantined == 0, f"{quarantined} stream entries quarantined"
    # A POST (applied or not) for an action no ledger holds must be of a firing that only lost events caused.
    assert "" not in posts, "a POST without an Idempotency-Key"
    posted = Counter((body["rule_id"], body["user_id"]) for body in strays.values())
    explained = Counter((rule, user) for rule, user, _ in vanished for _ in range(POSTED_PER_RULE[rule]))
    assert not posted - explained, f"POSTs for actions not in the ledger: {sample(strays)}"
    unapplied = set(sent) - set(merchant.effects)
    assert not unapplied, f"actions without an effect: {sample(unapplied)}"
    assert set(merchant.effect_count.values()) == {1}
    for key, action in sent.items():
        body = merchant.effects[key]["body"]
        assert (body["action_id"], body["rule_id"], body["user_id"]) == (key, action["rule_id"], action["user_id"])

    # -- user state and the timers left -------------------------------------------------------------
    wrong_tags = {user: states[user].tags for user in users if states[user].tags != expected.tags[user]}
    assert not wrong_tags, sample(wrong_tags.items())
    assert not other_timers, other_timers[:5]
    assert absences == expected.trial_pending, (
        f"pending trial deadlines: missing {sample(expected.trial_pending - absences)}, "
        f"unexpected {sample(absences - expected.trial_pending)}"
    )
