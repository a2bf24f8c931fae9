"""The one settings object, read from `BEACON_*` environment variables in `main` and passed down.

Every variable is parsed strictly and refused with a `ValidationError` naming it: a boolean is one of
`TRUE_WORDS` / `FALSE_WORDS`, a number must lie in its range, a choice must be one of its values, and a
`BEACON_*` name that nothing reads is refused with the closest known name. An empty value means unset. A secret
(`SECRET_VARIABLES`) may be given as `<NAME>_FILE` instead, naming a file that holds it (`read_secret`).

`Settings` and `connectors.settings.ConnectorSettings` are msgspec Structs whose fields declare their variables
(`beacon.environment`): msgspec converts and bounds-checks the values, and the README's and docs/connectors.md's
configuration tables are generated from the same declarations (architecture item 17 says why not pydantic-settings).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

import msgspec

from beacon import environment
from beacon.environment import PREFIX, setting
from beacon.errors import ValidationError
from beacon.logs import redact
from connectors.settings import ConnectorSettings

SCOPES = frozenset({"rules", "events", "admin"})
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster")
FILE_SUFFIX = "_FILE"
MAX_PORT = 65_535
# More partitions than Redis Cluster slots could not spread any further over masters.
MAX_PARTITIONS = 16_384
# Where `beacon worker` and `beacon connectors` serve /metrics and /healthz unless BEACON_OPS_PORT says.
DEFAULT_OPS_PORTS = {"worker": 8081, "connectors": 8082}
# How long each process waits for Redis at start unless BEACON_REDIS_WAIT_MS says (None: for ever). Workers and
# connectors serve /healthz (503) meanwhile and have nothing else to do; `serve` opens its API port only once
# Redis answers, so it reports an unreachable Redis at once (exit code 3) and leaves restarting to its supervisor.
DEFAULT_REDIS_WAIT_MS: dict[str, int | None] = {"serve": 0, "worker": None, "connectors": None}

# Read elsewhere than in `Settings.from_env`, so known without being read there.
OTHER_VARIABLES = {
    "BEACON_URL": "the server `beacon rules push` and `beacon healthcheck` call (CLI)",
    "BEACON_API_KEY": "the API key `beacon rules push` sends (CLI)",
    "BEACON_REDIS_SERVER": "the redis-server binary of the private server (beacon.redis_server)",
}


# An owner name as rulesets record it: a ruleset stored with an owned key may then be changed only by that
# owner's keys (or an admin key).
OWNER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def parse_api_keys(raw: str) -> dict[str, frozenset[str]]:
    """Parse `key1:rules+events,key2:admin:ops` into {key: scopes}; `admin` implies every scope."""
    return {key: scopes for key, (scopes, _) in _api_key_entries(raw).items()}


def parse_api_key_owners(raw: str) -> dict[str, str]:
    """The owners of the keys that name one (`key:scopes:owner`): {key: owner}."""
    return {key: owner for key, (_, owner) in _api_key_entries(raw).items() if owner is not None}


def _api_key_entries(raw: str) -> dict[str, tuple[frozenset[str], str | None]]:
    """`KEY:SCOPE[+SCOPE][:OWNER]` entries, comma-separated: {key: (scopes, owner or None)}."""
    keys: dict[str, tuple[frozenset[str], str | None]] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, rest = item.partition(":")
        if not sep or not key:
            # Not the item itself: it may be a key.
            raise ValidationError("an entry is not KEY:SCOPE[+SCOPE][:OWNER]", path="BEACON_API_KEYS")
        scope_list, owned, owner = rest.partition(":")
        scopes = frozenset(s.strip() for s in scope_list.split("+") if s.strip())
        unknown = scopes - SCOPES
        if unknown or not scopes:
            raise ValidationError(
                f"unknown scope(s) {sorted(unknown) or '(none)'}; use {sorted(SCOPES)}", path="BEACON_API_KEYS"
            )
        owner = owner.strip()
        if owned and not OWNER_PATTERN.fullmatch(owner):
            raise ValidationError(
                f"an owner must match {OWNER_PATTERN.pattern} (the part after the scopes)", path="BEACON_API_KEYS"
            )
        keys[key] = (SCOPES if "admin" in scopes else scopes, owner if owned else None)
    return keys


def _public_url(url: str) -> str:
    """An http(s) base URL without query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("must be an http:// or https:// base URL")
    return url.rstrip("/")


def _redis_url(url: str) -> str:
    """A Redis URL with a scheme redis-py (or our cluster client) takes; the error never shows its password."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        # Quoted only as a URL, whose password `redact` hides: anything else may be a bare password.
        shown = f"{redact(url)!r}" if "://" in url else "the value"
        raise ValueError(f"{shown} is not a Redis URL: use {', '.join(s + '://' for s in REDIS_SCHEMES)}")
    return url


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything configurable, with defaults that run a single-node server. Each field with a `setting(...)` is
    one variable (`beacon.environment`); the README's configuration table is generated from them."""

    redis_url: Annotated[
        str | None,
        setting(
            "Redis to use (`redis://`, `rediss://`, `unix://` or `redis+cluster://`; `BEACON_REDIS_URL` wins); unset: "
            "start a private server (AOF on) under the data dir and stop it on exit",
            env=("BEACON_REDIS_URL", "REDIS_URL"),
            parse=_redis_url,
            secret=True,
        ),
    ] = None
    redis_cluster: Annotated[
        bool, setting("treat `REDIS_URL` as a Redis Cluster (or use a `redis+cluster://` URL)")
    ] = False
    redis_wait_ms: Annotated[
        Annotated[int, msgspec.Meta(ge=0)] | None,
        setting(
            "how long a process keeps retrying Redis at start (backoff 0.1 s to 5 s, one WARNING line per attempt) "
            "before it exits with code 3. Unset: `beacon worker` and `beacon connectors` wait for ever (their "
            "`/healthz` answers 503 meanwhile), `beacon serve` not at all (its API port opens only once Redis "
            "answers; its supervisor restarts it). `0`: no waiting for any process "
            "([operations](docs/operations.md#when-redis-is-not-there-at-start))",
        ),
    ] = None
    # At least twice the slowest healthy call (a batch commit blocks Redis for up to about a quarter second).
    redis_timeout_ms: Annotated[
        int,
        setting(
            "how long a Redis reply may be late, beyond the time its command asks Redis to wait (`XREAD ... BLOCK`, "
            "`WAITAOF`), before the command fails: a hung Redis then costs a request a `503` with `Retry-After` "
            "([operations](docs/operations.md#a-hung-redis))",
            ge=500,
            le=300_000,
        ),
    ] = 5_000
    data_dir: Annotated[
        Path,
        setting(
            "where the private server keeps its files; one process at a time holds it (`beacon.lock`, an `flock` the "
            "kernel drops when the process dies): a second one exits at once with exit code 2 and a line naming the "
            "holder's pid, leaving the first untouched"
        ),
    ] = Path(".beacon")
    embedded_redis_port: Annotated[int, setting("the private server's port; `0`: a free one", ge=0, le=MAX_PORT)] = 0
    host: Annotated[str, setting("HTTP listen address (`beacon serve --host` overrides)")] = "127.0.0.1"
    port: Annotated[
        int, setting("HTTP listen port (`beacon serve --port` overrides); `0`: a free one, logged", ge=0, le=MAX_PORT)
    ] = 8080
    # None = `host`, and the role's port in DEFAULT_OPS_PORTS (another free port, logged, if several processes share
    # a host).
    ops_host: Annotated[
        str | None,
        setting(
            "where `beacon worker` and `beacon connectors` serve `/metrics` and `/healthz`", default="`BEACON_HOST`"
        ),
    ] = None
    ops_port: Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=MAX_PORT)] | None,
        setting(
            "their port. Port `0`: a free one, logged. When the default port is taken (several processes on one "
            "host), the process takes a free one and logs it at WARNING; a port set here that is taken stops the "
            "process",
            default="`8081` (worker), `8082` (connectors)",
        ),
    ] = None
    public_url: Annotated[
        str | None,
        setting(
            "the base of tracked links' short URLs (`{{link \"...\"}}` → `<base>/c/<token>`); the address users' "
            "phones reach this server's `/c/` at ([measurement](docs/measurement.md#clicks)). Unset: this server's "
            "own address, which only suits a test",
            parse=_public_url,
            default="`http://HOST:PORT`",
        ),
    ] = None
    # None: a secret generated once per Redis and shared by every process (cep.links).
    link_secret: Annotated[
        str | None,
        setting(
            "signs tracked links; unset, a secret is generated once per Redis and shared by every process",
            secret=True,
            default="generated",
        ),
    ] = None
    api_keys: Annotated[
        Mapping[str, frozenset[str]],
        setting(
            "`key1:rules+events,key2:admin,key3:rules:alice` — scopes `rules`, `events`, `admin` (admin implies "
            "all), and optionally the key's owner: rulesets and journeys it stores are then changed only by that "
            "owner's keys or an admin key",
            parse=parse_api_keys,
            secret=True,
            default="empty (open)",
        ),
    ] = msgspec.field(default_factory=dict)
    # key -> owner, for the keys `BEACON_API_KEYS` gives one (`key:scopes:owner`); a key without one owns nothing.
    api_key_owners: Mapping[str, str] = msgspec.field(default_factory=dict)
    # 12 spreads evenly over 1, 2, 3, 4 or 6 Redis Cluster masters (cep.events.partition_tag).
    partitions: Annotated[
        int,
        setting(
            "partitions (users are spread by CRC-32 of the user id); fixed once a database is in use, refused if "
            "changed",
            ge=1,
            le=MAX_PARTITIONS,
        ),
    ] = 12
    state_cache_users: Annotated[
        int, setting("users whose state a worker keeps in memory (LRU), over the partitions it owns", ge=1)
    ] = 200_000
    ack_fsync: Annotated[
        Literal["auto", "on", "off"],
        setting("ingest acks wait for the AOF fsync (`WAITAOF`): `auto` when the server has an AOF, `on`, `off`"),
    ] = "auto"
    ack_fsync_timeout_ms: Annotated[int, setting("how long an ack waits for that fsync", ge=1)] = 5_000
    lateness_ms: Annotated[int, setting("default rule lateness", ge=0)] = 2_000
    max_batch_events: Annotated[int, setting("events per HTTP batch", ge=1)] = 1_000
    max_body_bytes: Annotated[int, setting("request body limit", ge=1024)] = 4 * 1024 * 1024
    worker_batch: Annotated[int, setting("events (and due timers) per batch, one atomic commit each", ge=1)] = 500
    worker_block_ms: Annotated[int, setting("how long a worker's idle read blocks", ge=1)] = 200
    # Events older than this are treated as duplicates-unknown: their ids are forgotten.
    dedupe_horizon_ms: Annotated[int, setting("how long processed event ids are remembered", ge=1000)] = (
        7 * 24 * 3600 * 1000
    )
    # Each committed batch that touched the user adds one list element with its entries: a few KiB per recently
    # active user, bounded in batches and in time.
    trace_depth: Annotated[
        int,
        setting(
            "batches whose entries the per-user trace keeps (`GET /v1/users/{id}/trace`: each committed batch that "
            "touched the user adds its entries as one list element, usually one event or timer with its "
            "consequences); `0` turns tracing off",
            ge=0,
            le=10_000,
        ),
    ] = 20
    trace_ttl_ms: Annotated[
        int, setting("how long a user's trace is kept after the user's last traced step", ge=1000)
    ] = 3 * 24 * 3600 * 1000
    trace_matches: Annotated[
        bool,
        setting(
            "also trace, for every event some rule listens to, which rules' matchers took it and which refused it "
            '(`where_false`): the fullest "why not?", at about +40 % CPU per event on the bench mix, so off by '
            "default (dry-runs always show it)"
        ),
    ] = False
    max_future_ms: Annotated[
        int,
        setting(
            "how far ahead of the server clock an event's `ts` may be (producers' clocks drift); further is refused "
            "(422 for that item), since it would move its rules' watermarks and make the user's real events late",
            ge=0,
        ),
    ] = 15 * 60 * 1000
    serve_partition_weight: Annotated[
        float,
        setting(
            "`beacon serve`'s weight when the partitions are shared among processes (each `beacon worker` weighs "
            "1): serve also runs the API, so beside one worker it owns 4 of 12 partitions",
            ge=0.01,
            le=100,
        ),
    ] = 0.5
    ledger_retention_ms: Annotated[int, setting("how long action records are kept", ge=1000)] = 30 * 24 * 3600 * 1000
    ws_heartbeat_ms: Annotated[int, setting("WebSocket ping interval; `0`: none", ge=0)] = 20_000
    ws_receive_timeout_ms: Annotated[int, setting("WebSocket idle timeout", ge=0)] = 60_000
    ws_max_in_flight: Annotated[
        int, setting("WebSocket frames read but not yet acknowledged, per connection", ge=1)
    ] = 8
    # Renewed every third of it.
    partition_lease_ms: Annotated[
        int,
        setting(
            "partition lease: a dead process's partitions are taken over, and its unacknowledged entries replayed, "
            "after at most this long",
            ge=300,
        ),
    ] = 10_000
    # Read by ConnectorSettings.from_env from its own variables (docs/connectors.md).
    connectors: ConnectorSettings = msgspec.field(default_factory=ConnectorSettings)
    run_workers: Annotated[bool, setting("whether `beacon serve` runs workers (with their partitions' timers)")] = True
    run_connectors: Annotated[bool, setting("whether `beacon serve` runs the connectors")] = True
    run_api: bool = True
    # Below a second, samples every quarter of it would cost more than they tell.
    health_stall_ms: Annotated[
        int,
        setting(
            "`/healthz` turns 503 when processing has made no progress with work waiting for this long, or Redis "
            "errors lasted this long ([operations](docs/operations.md#health))",
            ge=1_000,
        ),
    ] = 30_000
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], setting("log level")] = "INFO"
    log_format: Annotated[
        Literal["text", "json"],
        setting(
            "`text` (`time LEVEL logger message`) or `json`: one object per line with `ts` (ISO 8601, UTC), "
            "`level`, `logger`, `message`, the ids a log call passes (`partition`, `user_id`, `action_id`, "
            "`connector`...) and `exc` (the traceback)"
        ),
    ] = "text"
    # The event archive (docs/measurement.md): commits append their events and actions to the partitions' archive
    # streams, and one `beacon serve` per deployment (a Redis lease) drains them into files.
    archive: Annotated[
        bool,
        setting(
            "the event archive: each batch's commit also appends its processed events and created actions to the "
            "partition's archive stream, which `beacon serve` writes to Parquet files under "
            "`<BEACON_DATA_DIR>/archive` ([measurement](docs/measurement.md#the-event-archive)); off in every "
            "process stops both. Set it alike in every process"
        ),
    ] = True
    run_archiver: Annotated[
        bool,
        setting(
            "whether this `beacon serve` may be the deployment's archiver (one at a time, by a Redis lease; the "
            "archive stays with the data directory that first held it)"
        ),
    ] = True
    archive_flush_ms: Annotated[
        int, setting("how often the archiver drains the archive streams into files", ge=100, le=3_600_000)
    ] = 5_000
    archive_retention_days: Annotated[
        int,
        setting(
            "days of the archive kept (UTC days of each row's own time, today included); older day directories are "
            "deleted",
            ge=1,
            le=36_500,
        ),
    ] = 90
    archive_compact_files: Annotated[
        int,
        setting(
            "a day's files of one compaction level are merged into one once this many wait; a past day ends as one "
            "file",
            ge=2,
            le=100_000,
        ),
    ] = 32

    def link_base(self) -> str:
        """Where a tracked link's clicks arrive."""
        return self.public_url or f"http://{self.host}:{self.port}"

    def ops_address(self, role: str) -> tuple[str, int, bool]:
        """(host, port, configured) of a role's ops listener; `configured` is False for the default port."""
        host = self.ops_host or self.host
        if self.ops_port is None:
            return host, DEFAULT_OPS_PORTS[role], False
        return host, self.ops_port, True

    def redis_wait_limit_ms(self, role: str) -> int | None:
        """How long `role` ("serve", "worker", "connectors") waits for Redis at start; None: for ever."""
        return self.redis_wait_ms if self.redis_wait_ms is not None else DEFAULT_REDIS_WAIT_MS[role]

    def secret_values(self) -> frozenset[str]:
        """The configured secrets' values (API keys, the Redis password, the connectors' secrets), which the log
        formatter hides wherever they appear."""
        values = set(self.api_keys) | self.connectors.secret_values() | {self.link_secret or ""}
        if self.redis_url:
            with contextlib.suppress(ValueError):
                url = urlsplit(self.redis_url)
                values.add(url.password or "")
                values.update(parse_qs(url.query).get("password", ()))
        return frozenset(value for value in values if value)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `BEACON_*` variables (and plain `REDIS_URL`), a secret's from its `<NAME>_FILE`
        when that is set instead; refuse unknown `BEACON_*` names."""
        env = os.environ if env is None else env
        refuse_unknown(env)
        resolved, from_files = read_secret_files(env)
        try:
            return environment.read(
                cls,
                resolved,
                connectors=ConnectorSettings.from_env(resolved),
                api_key_owners=parse_api_key_owners(resolved.get("BEACON_API_KEYS") or ""),
            )
        except ValidationError as exc:
            if exc.path not in from_files:
                raise
            # Name the variable that was set, and the file (the message never quotes a secret's text: environment).
            variable = exc.path + FILE_SUFFIX
            raise ValidationError(f"{exc.message} (read from {env[variable].strip()})", path=variable) from None


def read_secret(env: Mapping[str, str], name: str) -> str | None:
    """The secret `name` from `env`, or from the file `<name>_FILE` names (its text less trailing newlines);
    None when neither is set. Refuses both set, and a file that cannot be read or is empty, in one line that
    names the variable and the file but never quotes the file's contents."""
    variable = name + FILE_SUFFIX
    path = (env.get(variable) or "").strip()
    if not path:
        value = env.get(name)
        return value if value else None
    if (env.get(name) or "").strip():
        raise ValidationError(f"{name} is set too; set {name} or {variable}, not both", path=variable)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror or type(exc).__name__}", path=variable) from None
    try:
        value = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValidationError(f"cannot read {path}: not UTF-8 text", path=variable) from None
    if not value.strip():
        raise ValidationError(f"{path} is empty", path=variable)
    return value


def read_secret_files(env: Mapping[str, str]) -> tuple[dict[str, str], frozenset[str]]:
    """(`env` with every secret given as `<NAME>_FILE` read into `<NAME>`, the names so read)."""
    resolved = dict(env)
    from_files = set()
    for name in SECRET_VARIABLES:
        if (env.get(name + FILE_SUFFIX) or "").strip():
            resolved[name] = read_secret(env, name) or ""
            from_files.add(name)
    return resolved, frozenset(from_files)


# The settings' variables: Beacon's own, then the connectors' (docs/connectors.md).
MODELS: tuple[type[msgspec.Struct], ...] = (Settings, ConnectorSettings)
# Variables that may be given as <NAME>_FILE instead: a file holding the value, as Docker and Kubernetes mount
# secrets. Their values never appear in a log line (`Settings.secret_values`) nor in an error.
SECRET_VARIABLES = tuple(
    name for model in MODELS for variable in environment.variables(model) if variable.secret for name in variable.names
)


def settings_variables() -> frozenset[str]:
    """The `BEACON_*` names `Settings.from_env` reads itself (the README's configuration table)."""
    return frozenset(name for name in environment.names(Settings) if name.startswith(PREFIX))


@functools.cache
def known_variables() -> frozenset[str]:
    """Every `BEACON_*` name some part of Beacon reads."""
    read = frozenset(name for model in MODELS for name in environment.names(model) if name.startswith(PREFIX))
    files = frozenset(name + FILE_SUFFIX for name in SECRET_VARIABLES if name.startswith(PREFIX))
    return read | frozenset(OTHER_VARIABLES) | files


def refuse_unknown(env: Mapping[str, str]) -> None:
    """Refuse a set `BEACON_*` variable nothing reads (a typo would otherwise be ignored), naming the closest known
    one. An empty one is unset, as everywhere, so it is not refused."""
    known = known_variables()
    unknown = sorted(name for name, value in env.items() if name.startswith(PREFIX) and value and name not in known)
    if not unknown:
        return
    # Compared without the prefix, which every name shares and which would make any two look alike.
    close = difflib.get_close_matches(
        unknown[0].removeprefix(PREFIX), [name[len(PREFIX) :] for name in sorted(known)], 1, 0.6
    )
    hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
    if unknown[0].endswith(FILE_SUFFIX) and unknown[0].removesuffix(FILE_SUFFIX) in known:
        hint = f"; {unknown[0].removesuffix(FILE_SUFFIX)} cannot be read from a file (only secrets can)"
    more = f" ({len(unknown) - 1} more unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    raise ValidationError(f"unknown setting{hint}{more}", path=unknown[0])
