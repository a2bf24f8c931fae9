"""Start and stop, in one place and in dependency order, everything a Beacon process runs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from beacon import metrics
from beacon.clock import Clock
from beacon.errors import ValidationError
from beacon.health import HealthMonitor
from beacon.logs import redact
from beacon.pause import pause
from beacon.redis_errors import REFUSALS, describe, is_redis_trouble
from beacon.redis_timeouts import time_cluster, timed
from beacon.settings import Settings
from cep import archive_stream, outbox, scripts, streams, timers
from cep.commit import COMMIT_SCRIPT
from cep.journey_stats import read_counts, waiting_now
from cep.layout import check_layout
from cep.links import LinkSigner, deployment_secret
from cep.ownership import MEMBERS_SCRIPT, PARTITION_LEASE_SCRIPT
from cep.partition_owner import OwnerLimits
from cep.plan_driver import PlanDriver
from cep.streams import APPEND_SCRIPT
from cep.worker import Worker
from connectors.consumer import GROUP as OUTBOX_GROUP
from connectors.dead_letters import dead_letter_count
from connectors.redis_trouble import REDIS_BACKOFF
from connectors.runtime import run_connectors
from measure.archiver import ArchiveLimits, Archiver
from rules.registry import RulesetRegistry
from rules.store import RulesetStore

log = logging.getLogger("beacon")
T = TypeVar("T")

LAG_EVERY_S = 2.0
# The hot path's scripts: ingest appends, partition leases, batch commits.
ENGINE_SCRIPTS = (APPEND_SCRIPT, PARTITION_LEASE_SCRIPT, MEMBERS_SCRIPT, COMMIT_SCRIPT)


@dataclass(slots=True)
class Services:
    """The long-lived objects of one process."""

    settings: Settings
    clock: Clock
    redis: Redis
    store: RulesetStore
    registry: RulesetRegistry
    worker: Worker | None = None
    # Ingest appends end with WAITAOF for this long (0: acks mean "written by Redis", not "fsynced").
    ack_fsync_ms: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    health: HealthMonitor | None = None  # what /healthz reports (beacon.health)
    # Loops check this between iterations: stopping them this way never cancels a Redis call midway.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


CLUSTER_SCHEME = "redis+cluster://"
# The async cluster client fails a command outright once a node's pool is exhausted, rather than
# waiting: workers hold one blocking read per partition, so leave plenty of headroom.
CLUSTER_MAX_CONNECTIONS = 512
POOL_MAX_CONNECTIONS = 256
POOL_WAIT_S = 20.0


def is_cluster(settings: Settings) -> bool:
    """Whether Redis is a Redis Cluster: `BEACON_REDIS_CLUSTER=1` or a `redis+cluster://` URL."""
    return settings.redis_cluster or bool(settings.redis_url and settings.redis_url.startswith(CLUSTER_SCHEME))


def connect(settings: Settings, timeout_ms: int | None = None) -> Redis:
    """The Redis client for `settings.redis_url` (must be resolved by now); a cluster client if asked.

    Each reply may be `timeout_ms` late (default `settings.redis_timeout_ms`) beyond its command's own block
    time (beacon.redis_timeouts), before it fails with a TimeoutError: a hung server (SIGSTOP, a stalled disk, a
    network partition) costs a request a 503 after this long instead of holding it. That TimeoutError is Redis
    trouble like a lost connection (`beacon.redis_errors`). Neither client
    retries a failed command itself: every caller has its retry policy, and a retry at a hung server would
    cost another timeout."""
    if not settings.redis_url:
        raise ValueError("redis_url must be resolved before connecting")
    timeout_s = (settings.redis_timeout_ms if timeout_ms is None else timeout_ms) / 1000
    if is_cluster(settings):
        url = "redis://" + settings.redis_url.removeprefix(CLUSTER_SCHEME)
        # redis-py's cluster client re-sends a failed command ten times by default, re-reading the slot map
        # between tries: a hung node held each command ten timeouts (55 s). Without retries the command fails
        # after one, and the next command re-reads the map.
        cluster = RedisCluster.from_url(
            url,
            max_connections=CLUSTER_MAX_CONNECTIONS,
            socket_keepalive=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        time_cluster(cluster)
        # Both clients speak the same command API; the core is written against that shared surface.
        return cluster  # type: ignore[return-value]
    # A blocking pool waits for a free connection: the default pool raises "Too many connections" at
    # once when partition loops, timers, ingest and the delivery workers all need one together.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=POOL_MAX_CONNECTIONS,
        timeout=POOL_WAIT_S,
        health_check_interval=30,
        socket_keepalive=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
    pool.connection_class = timed(pool.connection_class)  # the URL's scheme chose TCP, TLS or a unix socket
    return Redis.from_pool(pool)  # the client owns the pool and closes it with itself


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    clock: Clock,
    *,
    workers: bool,
    connectors: bool | None = None,
    role: str = "serve",
    on_redis_wait: Callable[[int], None] | None = None,
) -> AsyncIterator[Services]:
    """Connect (waiting for Redis as long as `role` may, see `wait_for_redis`), compile the active rulesets,
    start background loops; undo it all on exit."""
    redis = connect(settings)
    try:
        store = RulesetStore(redis)
        registry = RulesetRegistry(store, settings.lateness_ms)

        async def start() -> int:
            await redis.ping()
            await check_layout(redis, settings.partitions)
            await scripts.register(redis, ENGINE_SCRIPTS)
            await registry.refresh()
            return await _ack_fsync_ms(redis, settings)

        ack_fsync_ms = await wait_for_redis(settings, role, start, on_redis_wait)
        services = Services(settings, clock, redis, store, registry)
        services.ack_fsync_ms = ack_fsync_ms
        if workers:
            tune_gc()
            limits = OwnerLimits(
                batch_size=settings.worker_batch,
                block_ms=settings.worker_block_ms,
                cache_users=max(settings.state_cache_users // settings.partitions, 1_000),
                dedupe_horizon_ms=settings.dedupe_horizon_ms,
                ledger_retention_ms=settings.ledger_retention_ms,
                trace_depth=settings.trace_depth,
                trace_ttl_ms=settings.trace_ttl_ms,
                trace_matches=settings.trace_matches,
                partitions=settings.partitions,
                archive=settings.archive,
            )
            services.worker = Worker(
                redis,
                registry,
                clock,
                limits,
                partitions=settings.partitions,
                lease_ms=settings.partition_lease_ms,
                stopping=services.stopping,
                # serve also runs the API: beside `beacon worker` processes it takes a smaller share.
                weight=settings.serve_partition_weight if role == "serve" else 1.0,
                links=LinkSigner(
                    settings.link_base(), await deployment_secret(redis, settings.link_secret), settings.partitions
                ),
            )
            services.tasks.append(asyncio.create_task(services.worker.run(), name="worker"))
            # Plans are sent by the processes that own partitions, each to the partitions it owns.
            ownership = services.worker.ownership
            driver = PlanDriver(
                redis,
                registry,
                clock,
                lambda: ownership.owned,
                partitions=settings.partitions,
                stopping=services.stopping,
            )
            services.tasks.append(asyncio.create_task(driver.run(), name="plans"))
        delivering = settings.run_connectors if connectors is None else connectors
        if delivering:
            delivery = run_connectors(
                redis, settings.connectors, settings.partitions, clock, stopping=services.stopping
            )
            services.tasks.append(asyncio.create_task(delivery, name="connectors"))
        if role == "serve" and settings.archive and settings.run_archiver:
            # One per deployment (a Redis lease): the serve whose data directory holds the archive.
            archiver = Archiver(
                redis,
                settings.data_dir,
                settings.partitions,
                clock,
                ArchiveLimits(
                    settings.archive_flush_ms,
                    settings.archive_retention_days,
                    settings.archive_compact_files,
                    lease_ms=settings.partition_lease_ms,
                ),
                services.stopping,
            )
            services.tasks.append(asyncio.create_task(archiver.run(), name="archiver"))
        services.tasks.append(
            asyncio.create_task(
                _report_gauges(redis, settings.partitions, registry, services.stopping, journeys=role == "serve"),
                name="gauges",
            )
        )
        services.health = HealthMonitor(
            redis,
            settings.health_stall_ms,
            worker=services.worker,
            outbox_partitions=settings.partitions if delivering else 0,
            tasks=services.tasks,
            stopping=services.stopping,
            probe_partitions=settings.partitions,
        )
        services.tasks.append(asyncio.create_task(services.health.run(), name="health"))
        try:
            yield services
        finally:
            await stop_tasks(services.tasks, services.stopping)
            registry.close()
    finally:
        await redis.aclose()


async def wait_for_redis(
    settings: Settings, role: str, start: Callable[[], Awaitable[T]], on_wait: Callable[[int], None] | None = None
) -> T:
    """`start()` (the start-up's Redis calls), retried while Redis cannot serve it (down, loading, failing over,
    out of memory...) with a backoff from 0.1 s to 5 s, for up to `settings.redis_wait_limit_ms(role)`:
    by default for ever for workers and connectors, not at all for `serve`. Each failed attempt is one
    WARNING line (the URL without its password), a count in `beacon_redis_errors_total{component="startup"}`
    and a call of `on_wait(attempt)`. Past the limit, the last error is raised as a redis ConnectionError
    (`beacon` exits with code 3); refused credentials and anything that is not Redis trouble at once."""
    limit_ms = settings.redis_wait_limit_ms(role)
    began = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await start()
        except Exception as exc:
            if isinstance(exc, REFUSALS) or not is_redis_trouble(exc):
                raise
            delay_ms = REDIS_BACKOFF.backoff_ms(attempt)
            waited_ms = (time.monotonic() - began) * 1000
            if limit_ms is not None and waited_ms + delay_ms > limit_ms:
                if attempt == 1 and isinstance(exc, RedisConnectionError | RedisTimeoutError):
                    raise
                tried = f"{attempt} attempt(s) in {waited_ms / 1000:.0f}s, the last: " if attempt > 1 else ""
                raise RedisConnectionError(f"{tried}{describe(exc)}") from exc
            metrics.on_redis_error("startup")
            left = "for ever" if limit_ms is None else f"for {max(limit_ms - waited_ms, 0) / 1000:.0f}s more"
            log.warning(
                "Redis at %s is not available (%s); attempt %d, retrying in %.1fs, waiting %s",
                redact(settings.redis_url or ""), describe(exc), attempt, delay_ms / 1000, left,
            )  # fmt: skip
            if on_wait is not None:
                on_wait(attempt)
            await asyncio.sleep(delay_ms / 1000)


def tune_gc() -> None:
    """Collect young objects less often: a worker keeps up to `state_cache_users` users' state alive, and
    CPython's default thresholds (700 allocations) rescan it so often that decoding a record cost 4-6x
    its own time in collections here. Long-lived state is what the cache is for, not garbage."""
    gc.set_threshold(50_000, 50, 100)


async def _ack_fsync_ms(redis: Redis, settings: Settings) -> int:
    """Whether ingest acks wait for the AOF fsync: on request, or ("auto") when the server has AOF on."""
    if settings.ack_fsync == "off":
        return 0
    try:
        if is_cluster(settings):
            # One WAITAOF per node that took writes (cep.scripts): every primary needs its AOF.
            replies: Any = await redis.config_get("appendonly", target_nodes=RedisCluster.PRIMARIES)
            values = {reply.get("appendonly") for reply in replies.values()}
            appendonly = values.pop() if len(values) == 1 else None
        else:
            appendonly = (await redis.config_get("appendonly")).get("appendonly")
    except Exception:  # CONFIG may be disabled on managed servers
        appendonly = None
    if appendonly in ("yes", b"yes"):
        return settings.ack_fsync_timeout_ms
    if settings.ack_fsync == "on":
        raise ValidationError("on needs a Redis with appendonly yes (or CONFIG readable)", path="BEACON_ACK_FSYNC")
    log.warning("Redis has no append-only file: an ingest ack means written to memory only")
    return 0


async def stop_tasks(tasks: list[asyncio.Task[None]], stopping: asyncio.Event, grace_s: float = 5.0) -> None:
    """Ask background loops to stop, wait for them, and cancel only what outlives the grace period.

    Cancelling a redis-py call mid-read can leave it waiting for ever (seen here with XREADGROUP on
    redis-py 8 and Python 3.11), so loops are stopped between calls; cancelling is the fallback and is
    repeated because a cancellation landing inside redis-py's own timeout can be lost.
    """
    stopping.set()
    if tasks:
        await asyncio.wait(tasks, timeout=grace_s)
    for task in tasks:
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s had failed: %r", task.get_name(), task.exception())


async def _report_gauges(
    redis: Redis, partitions: int, registry: RulesetRegistry, stopping: asyncio.Event, *, journeys: bool
) -> None:
    """Gauges read from Redis now and then: the stream backlog and lag, the outbox backlog, the dead letters
    (every process: each reports the same cluster-wide figures, so one process's scrape shows them), and each
    journey's waiting instances."""
    reported: set[str] = set()
    while not stopping.is_set():
        try:
            metrics.set_stream_lag(await streams.backlog(redis, partitions))
            metrics.set_stream_lag_seconds(await streams.lag_seconds(redis, partitions))
            metrics.set_outbox_backlog(await outbox.backlog(redis, partitions, OUTBOX_GROUP))
            metrics.set_dead_letters(await dead_letter_count(redis))
            metrics.set_archive_backlog(await archive_stream.backlog(redis, partitions))
            metrics.set_pending_timers(await timers.pending_count(redis, partitions))
            # Cluster-wide figures: only `serve` reports them, so a sum over processes does not count twice.
            kept = {item.active.journey.id: item for item in registry.journeys()} if journeys else {}
            active = set(kept)
            for journey_id, item in sorted(kept.items()):
                counts = await read_counts(redis, partitions, journey_id)
                versions = {compiled.journey.version for compiled in item.versions}
                metrics.set_journey_waiting(journey_id, waiting_now(counts, versions))
            for journey_id in reported - active:
                metrics.set_journey_waiting(journey_id, None)
            reported = active
        except Exception as exc:  # a metrics loop must outlive a Redis hiccup
            log.debug("gauge report failed: %s", exc)
        await pause(stopping, LAG_EVERY_S)
