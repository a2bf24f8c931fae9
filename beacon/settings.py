"""The one settings object, read from `BEACON_*` environment variables in `main` and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from beacon.errors import ValidationError
from connectors.settings import ConnectorSettings

SCOPES = frozenset({"rules", "events", "admin"})


def parse_api_keys(raw: str) -> dict[str, frozenset[str]]:
    """Parse `key1:rules+events,key2:admin` into {key: scopes}; `admin` implies every scope."""
    keys: dict[str, frozenset[str]] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, scope_list = item.partition(":")
        if not sep or not key:
            raise ValidationError(f"{item!r} is not KEY:SCOPE[+SCOPE]", path="BEACON_API_KEYS")
        scopes = frozenset(s.strip() for s in scope_list.split("+") if s.strip())
        unknown = scopes - SCOPES
        if unknown or not scopes:
            raise ValidationError(
                f"unknown scope(s) {sorted(unknown) or '(none)'}; use {sorted(SCOPES)}", path="BEACON_API_KEYS"
            )
        keys[key] = SCOPES if "admin" in scopes else scopes
    return keys


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable, with defaults that run a single-node server."""

    host: str = "127.0.0.1"
    port: int = 8080
    # None means: start a private server under data_dir (the embedded default).
    redis_url: str | None = None
    redis_cluster: bool = False
    data_dir: Path = Path(".beacon")
    api_keys: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # 12 spreads evenly over 1, 2, 3, 4 or 6 Redis Cluster masters (cep.events.partition_tag).
    partitions: int = 12
    lateness_ms: int = 2_000
    max_batch_events: int = 1_000
    max_body_bytes: int = 4 * 1024 * 1024
    worker_batch: int = 500  # events per batch (one atomic commit each)
    worker_block_ms: int = 200
    # Events older than this are treated as duplicates-unknown: their ids are forgotten.
    dedupe_horizon_ms: int = 7 * 24 * 3600 * 1000
    ledger_retention_ms: int = 30 * 24 * 3600 * 1000
    # WebSocket ingest: ping interval (0 = off), idle close, and frames read but not yet acknowledged.
    ws_heartbeat_ms: int = 20_000
    ws_receive_timeout_ms: int = 60_000
    ws_max_in_flight: int = 8
    # A partition's consumer holds a lease this long (renewed every third of it): a dead worker's
    # partitions are taken over, and its unacknowledged entries replayed, after at most this long.
    partition_lease_ms: int = 10_000
    # Ingest acks wait for the AOF fsync (WAITAOF): "auto" does when the server has appendonly on.
    ack_fsync: str = "auto"
    ack_fsync_timeout_ms: int = 5_000
    # Users whose state a worker keeps in memory, over all the partitions it owns (LRU beyond that).
    state_cache_users: int = 200_000
    connectors: ConnectorSettings = field(default_factory=ConnectorSettings)
    run_connectors: bool = True
    run_workers: bool = True
    run_api: bool = True
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `BEACON_*` variables (and plain `REDIS_URL`)."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(f"BEACON_{name}")
            return value if value not in (None, "") else None

        def integer(name: str, default: int, minimum: int = 0) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ValidationError(f"{raw!r} is not an integer", path=f"BEACON_{name}") from None
            if value < minimum:
                raise ValidationError(f"must be >= {minimum}", path=f"BEACON_{name}")
            return value

        def flag(name: str, default: bool) -> bool:
            raw = get(name)
            return default if raw is None else raw.lower() in {"1", "true", "yes", "on"}

        def choice(name: str, default: str, options: tuple[str, ...]) -> str:
            raw = get(name)
            if raw is None:
                return default
            if raw not in options:
                raise ValidationError(f"{raw!r} is not one of {', '.join(options)}", path=f"BEACON_{name}")
            return raw

        base = cls()
        return replace(
            base,
            host=get("HOST") or base.host,
            port=integer("PORT", base.port),
            redis_url=get("REDIS_URL") or env.get("REDIS_URL") or None,
            redis_cluster=flag("REDIS_CLUSTER", base.redis_cluster),
            data_dir=Path(get("DATA_DIR") or base.data_dir),
            api_keys=parse_api_keys(get("API_KEYS") or ""),
            partitions=integer("PARTITIONS", base.partitions, 1),
            lateness_ms=integer("LATENESS_MS", base.lateness_ms),
            max_batch_events=integer("MAX_BATCH_EVENTS", base.max_batch_events, 1),
            max_body_bytes=integer("MAX_BODY_BYTES", base.max_body_bytes, 1024),
            worker_batch=integer("WORKER_BATCH", base.worker_batch, 1),
            worker_block_ms=integer("WORKER_BLOCK_MS", base.worker_block_ms, 1),
            dedupe_horizon_ms=integer("DEDUPE_HORIZON_MS", base.dedupe_horizon_ms, 1000),
            ledger_retention_ms=integer("LEDGER_RETENTION_MS", base.ledger_retention_ms, 1000),
            ws_heartbeat_ms=integer("WS_HEARTBEAT_MS", base.ws_heartbeat_ms),
            ws_receive_timeout_ms=integer("WS_RECEIVE_TIMEOUT_MS", base.ws_receive_timeout_ms),
            ws_max_in_flight=integer("WS_MAX_IN_FLIGHT", base.ws_max_in_flight, 1),
            partition_lease_ms=integer("PARTITION_LEASE_MS", base.partition_lease_ms, 300),
            ack_fsync=choice("ACK_FSYNC", base.ack_fsync, ("auto", "on", "off")),
            ack_fsync_timeout_ms=integer("ACK_FSYNC_TIMEOUT_MS", base.ack_fsync_timeout_ms, 1),
            state_cache_users=integer("STATE_CACHE_USERS", base.state_cache_users, 1),
            connectors=ConnectorSettings.from_env(env),
            run_connectors=flag("RUN_CONNECTORS", base.run_connectors),
            run_workers=flag("RUN_WORKERS", base.run_workers),
            log_level=get("LOG_LEVEL") or base.log_level,
        )
