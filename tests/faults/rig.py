"""What every fault test runs and checks: Redis (single or cluster), `beacon serve` and a `beacon worker` as
real processes, the coupon provider stand-in, a steady producer; one fault injected mid-stream; then the
books compared with what the producer had acknowledged.

The ruleset gives each `pay` event one coupon, so the expected outcome needs no reference model: one ledger
action per acknowledged event, delivered, applied once by the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from beacon.redis_server import free_port
from cep import streams
from connectors.dead_letters import list_dead_letters
from tests.chaos.backends import RedisUnderTest
from tests.chaos.observe import delivered, reposts, request_key, sample, settled, trigger_of
from tests.chaos.processes import (
    BeaconProcess,
    beacon_env,
    progress_counts,
    redis_down,
    stop_all,
    wait_consuming,
    wait_healthy,
    wait_owning,
)
from tests.connectors.providers import FakeMerchant
from tests.faults.producer import HealthWatch, SteadyProducer
from tests.harness import eventually

PARTITIONS = 4
RULESET = {
    "id": "faults",
    "rules": [{"id": "paid", "when": {"event": "pay"}, "then": [{"action": "coupon", "coupon_id": "C-1"}]}],
}
STEADY_S = 1.5  # of production before the fault, and at least as much after it
DEADLINE_S = 45.0  # for the producer's last acks, for settling, for the deliveries


@dataclass
class Rig:
    """The processes and servers of one fault test."""

    backend: RedisUnderTest
    redis: aioredis.Redis
    session: aiohttp.ClientSession
    merchant: FakeMerchant
    serve: BeaconProcess
    worker: BeaconProcess
    notes: dict[str, Any] = field(default_factory=dict)  # what the fault reports about itself

    @property
    def url(self) -> str:
        """The API's base URL."""
        return f"http://127.0.0.1:{self.serve.port}"

    def server_client(self, server: int) -> aioredis.Redis:
        """A plain client on one Redis server (a cluster node's own CONFIG and INFO)."""
        return aioredis.Redis(port=self.backend.servers[server].port)


@contextlib.asynccontextmanager
async def running_rig(
    kind: str, tmp_path: Path, redis_dir: Path | None = None, **env_overrides: str
) -> AsyncIterator[Rig]:
    """Start Redis, the provider, `beacon serve` (API, owners, connectors) and a worker; stop them all on exit."""
    backend = RedisUnderTest(kind, redis_dir or tmp_path / "redis")
    backend.start()
    merchant = await FakeMerchant(seed=15).start()
    redis = backend.client()
    session = aiohttp.ClientSession()
    env = beacon_env(
        backend.url,
        free_port(),
        PARTITIONS,
        BEACON_RUN_CONNECTORS="1",
        BEACON_COUPON_URL=merchant.url("/coupons"),
        # A stalled partition shows on /healthz after 1 s, not 30 s.
        BEACON_HEALTH_STALL_MS="1000",
        # Longer than any fault here: a delivery in flight when it strikes must finish without a repost.
        BEACON_CONNECTOR_LEASE_MS="8000",
        # Generous: the provider runs in the test's busy event loop, and a slow reply retried is a second POST.
        BEACON_CONNECTOR_HTTP_TIMEOUT_MS="5000",
        BEACON_CONNECTOR_MAX_ATTEMPTS="60",
        BEACON_CONNECTOR_BACKOFF_BASE_MS="20",
        BEACON_CONNECTOR_BACKOFF_MAX_MS="300",
        BEACON_CONNECTOR_BLOCK_MS="50",
        BEACON_CONNECTOR_POLL_MS="20",
        **env_overrides,
    )
    serve = BeaconProcess("serve", env, tmp_path, "serve")
    worker = BeaconProcess("worker", {**env, "BEACON_OPS_PORT": "0"}, tmp_path, "worker")
    rig = Rig(backend, redis, session, merchant, serve, worker)
    try:
        serve.start()
        worker.start()
        await wait_healthy(serve, session)
        async with session.put(f"{rig.url}/v1/rulesets/faults", json=RULESET) as response:
            assert response.status == 200, await response.text()
        await wait_owning(worker, redis, PARTITIONS)
        await wait_consuming(serve, redis, PARTITIONS)
        yield rig
    finally:
        stop_all([serve, worker])
        await session.close()
        await redis.aclose()
        backend.stop()
        await merchant.close()


@dataclass
class Timeline:
    """When the fault began and was lifted, and how the stream backlog moved (monotonic seconds)."""

    began: float = 0.0
    lifted: float = 0.0
    backlog: list[tuple[float, int]] = field(default_factory=list)

    async def watch_backlog(self, redis: aioredis.Redis, stop: asyncio.Event) -> None:
        """Sample appended - committed over all partitions every 0.1 s (a Redis that does not answer: skipped)."""
        while not stop.is_set():
            try:
                counts = await asyncio.wait_for(progress_counts(redis, list(range(PARTITIONS))), 1.0)
                self.backlog.append((time.monotonic(), sum(added - done for added, done in counts)))
            except Exception as exc:
                if not (redis_down(exc) or isinstance(exc, TimeoutError)):
                    raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    def caught_up_after(self, steady: int) -> float | None:
        """Seconds from the lift until the backlog was back to its level before the fault (at most `steady`)."""
        after = [at for at, waiting in self.backlog if at >= self.lifted and waiting <= steady]
        return round(after[0] - self.lifted, 2) if after else None

    def steady_backlog(self) -> int:
        """The largest backlog sampled before the fault began."""
        return max((waiting for at, waiting in self.backlog if at < self.began), default=0)


Fault = Callable[[Rig, SteadyProducer], Awaitable[None]]


async def run_fault(rig: Rig, fault: Fault, name: str) -> dict[str, Any]:
    """Produce steadily, inject `fault` (it returns once lifted), produce on, then check the books; returns the
    measured figures, printed as one JSON line (`-s`)."""
    producer = SteadyProducer(rig.url, rig.session)
    health = HealthWatch(f"{rig.url}/healthz", rig.session)
    timeline = Timeline()
    stop_producing, stop_watching = asyncio.Event(), asyncio.Event()
    producing = asyncio.create_task(producer.run(stop_producing))
    watchers = [
        asyncio.create_task(health.run(stop_watching)),
        asyncio.create_task(timeline.watch_backlog(rig.redis, stop_watching)),
    ]
    try:
        await eventually(lambda: known(producer.acked), lambda acked: acked >= producer.rate * STEADY_S, 10)
        assert producer.acked >= producer.rate * STEADY_S, f"the producer is not flowing: {producer.replies}"
        timeline.began = time.monotonic()
        await fault(rig, producer)
        timeline.lifted = time.monotonic()
        # Production goes on until every batch the fault held up is acknowledged, and at least STEADY_S.
        held = len(producer.batches)
        await eventually(lambda: known(all(batch.acked_at for batch in producer.batches[:held])), bool, DEADLINE_S)
        await asyncio.sleep(max(timeline.lifted + STEADY_S - time.monotonic(), 0))
        stop_producing.set()
        await asyncio.wait_for(producing, DEADLINE_S)
        production_ended = time.monotonic()
        await wait_healthy(rig.serve, rig.session, DEADLINE_S)
        deadline = time.monotonic() + DEADLINE_S
        await settled(rig.redis, PARTITIONS, deadline)
        settled_s = time.monotonic() - production_ended
        users = sorted({event["user_id"] for event in producer.events})
        books = await delivered(rig.redis, PARTITIONS, users, deadline)
        counters = await progress_counts(rig.redis, list(range(PARTITIONS)))
        dead_letters = await list_dead_letters(rig.redis, PARTITIONS, 100)
        quarantined = sum([await rig.redis.xlen(streams.quarantine_key(p)) for p in range(PARTITIONS)])
    finally:
        stop_producing.set()
        stop_watching.set()
        if not producing.done():
            await producer.cancel()
            producing.cancel()
        for task in (producing, *watchers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in watchers:  # a watcher that failed by itself fails the test
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]

    events = producer.events
    held_up = [
        b for b in producer.batches if b.first_sent < timeline.lifted and b.acked_at and b.acked_at > timeline.began
    ]
    actions = [action for user in users for action in books[user]]
    posts = Counter(request_key(request) for request in rig.merchant.requests)
    report = {
        "fault": name,
        "redis": rig.backend.kind,
        **rig.notes,
        "fault_s": round(timeline.lifted - timeline.began, 2),
        "events": len(events),
        "requests": sum(producer.replies.values()),
        "replies": dict(producer.replies),
        "requests_resent": producer.resends,
        # The longest a request waited for its ack, and how long after the lift the last held-up one got it.
        "longest_ack_wait_s": round(max((b.acked_at or 0) - b.first_sent for b in producer.batches), 2),
        "acked_after_lift_s": round(max((b.acked_at or 0) for b in held_up) - timeline.lifted, 2) if held_up else 0,
        "unhealthy_during_fault": health.unhealthy_between(timeline.began, timeline.lifted + 1.0),
        "healthy_after_lift_s": health.healthy_again_after(timeline.lifted),
        "health_problems": health.problems[:4],
        "backlog_caught_up_after_lift_s": timeline.caught_up_after(max(timeline.steady_backlog(), 50)),
        "settled_after_production_s": round(settled_s, 2),
        "actions": len(actions),
        "posts": sum(posts.values()),
        "most_posts_of_one_action": max(posts.values(), default=0),
        **reposts(rig.merchant),
    }
    print(f"\nfaults: {json.dumps(report)}")

    # -- the client: every refusal was a 503 to retry, never a 500; everything was acknowledged in the end --
    assert not producer.server_faults, f"answers that are not 200 or 503 + Retry-After: {producer.server_faults[:5]}"
    assert all(batch.acked_at for batch in producer.batches)
    crashed = [process.name for process in (rig.serve, rig.worker) if not process.alive]
    assert not crashed, f"processes that died: {crashed}\n{rig.serve.log_tail()}\n{rig.worker.log_tail()}"
    # -- acknowledged = processed: everything appended is committed, and each event made its one action --
    assert all(added == done for added, done in counters), f"(appended, committed) per partition: {counters}"
    by_event: dict[str, list[dict[str, Any]]] = {}
    for action in actions:
        by_event.setdefault(trigger_of(action["trigger_id"]), []).append(action)
    acked_ids = {event["event_id"] for event in events}
    missing = acked_ids - set(by_event)
    assert not missing, f"{len(missing)} acknowledged events without their action: {sample(missing)}"
    assert set(by_event) == acked_ids, f"actions of events never sent: {sample(set(by_event) - acked_ids)}"
    doubled = {event_id: len(found) for event_id, found in by_event.items() if len(found) != 1}
    assert not doubled, f"events with more than one action: {sample(doubled.items())}"
    assert quarantined == 0 and not dead_letters, (quarantined, dead_letters[:3])
    # -- every action delivered, and applied once by the provider (which dedupes the Idempotency-Key) --
    stuck = Counter(action["status"] for action in actions if action["status"] != "delivered")
    assert not stuck, f"actions not delivered: {stuck}"
    assert "" not in posts, "a POST without an Idempotency-Key"
    action_ids = {action["action_id"] for action in actions}
    assert set(rig.merchant.effects) == action_ids, sample(set(rig.merchant.effects) ^ action_ids)
    assert set(rig.merchant.effect_count.values()) == {1}
    # No fault here outlasts the connector lease, so nothing was posted twice, even to this deduping provider
    # (an outcome write Redis refused used to be given up, and the action posted again after the lease).
    assert report["most_posts_of_one_action"] == 1, f"actions posted more than once: {report}"
    return report


async def known(value: Any) -> Any:
    """A value already at hand, as the awaitable `eventually` polls."""
    return value
