"""The one settings object, read from `BEACON_*` environment variables in `main` and passed down.

Every variable is parsed strictly and refused with a `ValidationError` naming it: a boolean is one of
`TRUE_WORDS` / `FALSE_WORDS`, a number must lie in its range, a choice must be one of its values, and a
`BEACON_*` name that nothing reads is refused with the closest known name. An empty value means unset. A secret
(`SECRET_VARIABLES`) may be given as `<NAME>_FILE` instead, naming a file that holds it (`read_secret`).

Hand-written rather than on pydantic-settings: the connector settings (`connectors.settings`) already
parse their variables this way, the checks here are a few dozen lines, and that library would add
pydantic and its compiled core to every install without refusing unknown `BEACON_*` names by itself.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from beacon.errors import ValidationError
from beacon.logs import LOG_FORMATS, REDACTED, redact
from connectors.settings import SECRET_VARIABLES as CONNECTOR_SECRETS
from connectors.settings import ConnectorSettings

SCOPES = frozenset({"rules", "events", "admin"})
PREFIX = "BEACON_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster")
# Variables that may be given as <NAME>_FILE instead: a file holding the value, as Docker and Kubernetes mount
# secrets. Their values never appear in a log line (`Settings.secret_values`) nor in an error.
SECRET_VARIABLES = ("REDIS_URL", "BEACON_REDIS_URL", "BEACON_API_KEYS", "BEACON_LINK_SECRET", *CONNECTOR_SECRETS)
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
    # connectors.settings reads it only when BEACON_CONNECTOR_QUIET_HOURS is set.
    "BEACON_CONNECTOR_TIMEZONE": "the quiet hours' time zone (connectors)",
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


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable, with defaults that run a single-node server."""

    host: str = "127.0.0.1"
    port: int = 8080
    # None means: start a private server under data_dir (the embedded default).
    redis_url: str | None = None
    redis_cluster: bool = False
    data_dir: Path = Path(".beacon")
    embedded_redis_port: int = 0  # the private server's port; 0 picks a free one
    api_keys: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # key -> owner, for the keys `BEACON_API_KEYS` gives one (`key:scopes:owner`); a key without one owns nothing.
    api_key_owners: Mapping[str, str] = field(default_factory=dict)
    # 12 spreads evenly over 1, 2, 3, 4 or 6 Redis Cluster masters (cep.events.partition_tag).
    partitions: int = 12
    lateness_ms: int = 2_000
    max_batch_events: int = 1_000
    max_body_bytes: int = 4 * 1024 * 1024
    worker_batch: int = 500  # events per batch (one atomic commit each)
    worker_block_ms: int = 200
    # Events older than this are treated as duplicates-unknown: their ids are forgotten.
    dedupe_horizon_ms: int = 7 * 24 * 3600 * 1000
    # Batches whose trace entries are kept per user (`GET /v1/users/{id}/trace`; each committed batch that
    # touched the user adds one list element with its entries); 0 turns tracing off. A few KiB per
    # recently active user: bounded in batches and in time.
    trace_depth: int = 20
    trace_ttl_ms: int = 3 * 24 * 3600 * 1000
    # Also trace each event's rule matches (matched / `where_false`): about +40 % CPU per event on the
    # bench mix, so off unless asked for (docs/journeys.md, "Trace").
    trace_matches: bool = False
    # An event's `ts` may be at most this far ahead of the server clock (producers' clocks drift).
    max_future_ms: int = 15 * 60 * 1000
    # serve's share of the partitions beside `beacon worker` processes (weight 1 each): it also ingests.
    serve_partition_weight: float = 0.5
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
    log_format: str = "text"  # or "json": one object per line (beacon.logs.JsonFormatter)
    # The /metrics and /healthz listener of `beacon worker` / `beacon connectors`: None = `host`, and the
    # role's port in DEFAULT_OPS_PORTS (another free port, logged, if several processes share a host).
    ops_host: str | None = None
    ops_port: int | None = None
    # /healthz turns 503 when processing has made no progress with work waiting for this long (beacon.health).
    health_stall_ms: int = 30_000
    # How long a process retries Redis at start before it gives up; None: the role's DEFAULT_REDIS_WAIT_MS.
    redis_wait_ms: int | None = None
    # The event archive (docs/measurement.md): commits append their events and actions to the partitions'
    # archive streams, and one `beacon serve` per deployment (a Redis lease) drains them into files under
    # `data_dir/archive`, compacts a day's small files and drops days past the retention.
    archive: bool = True
    run_archiver: bool = True  # whether this `serve` may be that one
    archive_flush_ms: int = 5_000  # how often the archiver drains the streams into files
    archive_retention_days: int = 90
    archive_compact_files: int = 32  # a day's small files merged into one once this many wait
    # The base of tracked links' short URLs (`{{link "..."}}` -> `<public_url>/c/<token>`); None: this
    # server's own http://host:port, which only suits a test.
    public_url: str | None = None
    # Signs tracked links; None: a secret generated once per Redis and shared by every process (cep.links).
    link_secret: str | None = None

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
            return _parse(_Variables(resolved), resolved)
        except ValidationError as exc:
            if exc.path not in from_files:
                raise
            # Name the variable that was set, and never quote what the file holds (a value the parser
            # refused may still be a secret: a bare password where a URL belongs).
            message = exc.message.replace(resolved[exc.path], REDACTED)
            variable = exc.path + FILE_SUFFIX
            raise ValidationError(f"{message} (read from {env[variable].strip()})", path=variable) from None


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


def _parse(read: _Variables, env: Mapping[str, str]) -> Settings:
    """Settings from `read`; reads every variable whatever the others say (`known_variables` relies on it)."""
    base = Settings()
    redis_url = _redis_url(read.text("REDIS_URL"), "BEACON_REDIS_URL")
    plain_url = env.get("REDIS_URL") or None
    return Settings(
        host=read.text("HOST") or base.host,
        port=read.integer("PORT", base.port, 0, MAX_PORT),
        redis_url=redis_url or _redis_url(plain_url, "REDIS_URL"),
        redis_cluster=read.flag("REDIS_CLUSTER", base.redis_cluster),
        data_dir=Path(read.text("DATA_DIR") or base.data_dir),
        embedded_redis_port=read.integer("EMBEDDED_REDIS_PORT", base.embedded_redis_port, 0, MAX_PORT),
        api_keys=parse_api_keys(read.text("API_KEYS") or ""),
        api_key_owners=parse_api_key_owners(read.text("API_KEYS") or ""),
        partitions=read.integer("PARTITIONS", base.partitions, 1, MAX_PARTITIONS),
        lateness_ms=read.integer("LATENESS_MS", base.lateness_ms),
        max_batch_events=read.integer("MAX_BATCH_EVENTS", base.max_batch_events, 1),
        max_body_bytes=read.integer("MAX_BODY_BYTES", base.max_body_bytes, 1024),
        worker_batch=read.integer("WORKER_BATCH", base.worker_batch, 1),
        worker_block_ms=read.integer("WORKER_BLOCK_MS", base.worker_block_ms, 1),
        dedupe_horizon_ms=read.integer("DEDUPE_HORIZON_MS", base.dedupe_horizon_ms, 1000),
        trace_depth=read.integer("TRACE_DEPTH", base.trace_depth, 0, 10_000),
        trace_ttl_ms=read.integer("TRACE_TTL_MS", base.trace_ttl_ms, 1000),
        trace_matches=read.flag("TRACE_MATCHES", base.trace_matches),
        max_future_ms=read.integer("MAX_FUTURE_MS", base.max_future_ms, 0),
        serve_partition_weight=read.fraction("SERVE_PARTITION_WEIGHT", base.serve_partition_weight, 0.01, 100),
        ledger_retention_ms=read.integer("LEDGER_RETENTION_MS", base.ledger_retention_ms, 1000),
        ws_heartbeat_ms=read.integer("WS_HEARTBEAT_MS", base.ws_heartbeat_ms),
        ws_receive_timeout_ms=read.integer("WS_RECEIVE_TIMEOUT_MS", base.ws_receive_timeout_ms),
        ws_max_in_flight=read.integer("WS_MAX_IN_FLIGHT", base.ws_max_in_flight, 1),
        partition_lease_ms=read.integer("PARTITION_LEASE_MS", base.partition_lease_ms, 300),
        ack_fsync=read.choice("ACK_FSYNC", base.ack_fsync, ("auto", "on", "off")),
        ack_fsync_timeout_ms=read.integer("ACK_FSYNC_TIMEOUT_MS", base.ack_fsync_timeout_ms, 1),
        state_cache_users=read.integer("STATE_CACHE_USERS", base.state_cache_users, 1),
        connectors=ConnectorSettings.from_env(env),
        run_connectors=read.flag("RUN_CONNECTORS", base.run_connectors),
        run_workers=read.flag("RUN_WORKERS", base.run_workers),
        log_level=read.choice("LOG_LEVEL", base.log_level, LOG_LEVELS),
        log_format=read.choice("LOG_FORMAT", base.log_format, LOG_FORMATS),
        ops_host=read.text("OPS_HOST"),
        ops_port=read.optional_integer("OPS_PORT", 0, MAX_PORT),
        # Below a second, samples every quarter of it would cost more than they tell.
        health_stall_ms=read.integer("HEALTH_STALL_MS", base.health_stall_ms, 1_000),
        redis_wait_ms=read.optional_integer("REDIS_WAIT_MS", 0),
        archive=read.flag("ARCHIVE", base.archive),
        run_archiver=read.flag("RUN_ARCHIVER", base.run_archiver),
        archive_flush_ms=read.integer("ARCHIVE_FLUSH_MS", base.archive_flush_ms, 100, 3_600_000),
        archive_retention_days=read.integer("ARCHIVE_RETENTION_DAYS", base.archive_retention_days, 1, 36_500),
        archive_compact_files=read.integer("ARCHIVE_COMPACT_FILES", base.archive_compact_files, 2, 100_000),
        public_url=_public_url(read.text("PUBLIC_URL")),
        link_secret=read.text("LINK_SECRET"),
    )


def _public_url(url: str | None) -> str | None:
    """An http(s) base URL without query or fragment, or a one-line settings error."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValidationError("must be an http:// or https:// base URL", path="BEACON_PUBLIC_URL")
    return url.rstrip("/")


def _redis_url(url: str | None, variable: str) -> str | None:
    """A Redis URL with a scheme redis-py (or our cluster client) takes; the error never shows its password."""
    if url is None:
        return None
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        raise ValidationError(
            f"{redact(url)!r} is not a Redis URL: use {', '.join(s + '://' for s in REDIS_SCHEMES)}", path=variable
        )
    return url


class _Variables:
    """Reads `BEACON_<name>` variables strictly; every error names the variable; remembers what it read."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.names: set[str] = set()

    def text(self, name: str) -> str | None:
        """The value of BEACON_<name> without surrounding blanks, or None when unset or empty."""
        key = PREFIX + name
        self.names.add(key)
        value = self._env.get(key)
        return value.strip() or None if value is not None else None

    def flag(self, name: str, default: bool) -> bool:
        """A boolean: one of TRUE_WORDS or FALSE_WORDS, in any case."""
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() in TRUE_WORDS:
            return True
        if raw.lower() in FALSE_WORDS:
            return False
        raise ValidationError(
            f"{raw!r} is not a boolean: use {', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS)}", path=PREFIX + name
        )

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        """A whole number in decimal digits (`_` allowed between them), within [minimum, maximum]."""
        value = self.optional_integer(name, minimum, maximum)
        return default if value is None else value

    def optional_integer(self, name: str, minimum: int = 0, maximum: int | None = None) -> int | None:
        """Like `integer`, None when unset."""
        raw = self.text(name)
        if raw is None:
            return None
        if not re.fullmatch(r"-?[0-9]+(_[0-9]+)*", raw):
            raise ValidationError(f"{raw!r} is not a whole number", path=PREFIX + name)
        value = int(raw)
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise ValidationError(f"{value} is out of range: use a number {bounds}", path=PREFIX + name)
        return value

    def fraction(self, name: str, default: float, minimum: float, maximum: float) -> float:
        """A decimal number within [minimum, maximum]."""
        raw = self.text(name)
        if raw is None:
            return default
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?|\.[0-9]+", raw):
            raise ValidationError(f"{raw!r} is not a decimal number", path=PREFIX + name)
        value = float(raw)
        if not minimum <= value <= maximum:
            raise ValidationError(f"{value:g} is out of range: use {minimum:g} to {maximum:g}", path=PREFIX + name)
        return value

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        """One of `options`, in any case; returned as the option is spelt."""
        raw = self.text(name)
        if raw is None:
            return default
        for option in options:
            if raw.lower() == option.lower():
                return option
        raise ValidationError(f"{raw!r} is not one of {', '.join(options)}", path=PREFIX + name)


class _ReadLog(Mapping[str, str]):
    """An empty environment that remembers every name looked up in it."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.names.add(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@functools.cache
def _variable_names() -> tuple[frozenset[str], frozenset[str]]:
    """(names `Settings` reads itself, names the connector settings read): parsing an empty environment
    reads every name, so this list cannot drift from the code that parses them."""
    env = _ReadLog()
    read = _Variables(env)
    _parse(read, env)
    own = frozenset(read.names)
    return own, frozenset(name for name in env.names if name.startswith(PREFIX)) - own


def settings_variables() -> frozenset[str]:
    """The `BEACON_*` names `Settings.from_env` reads itself (the README's configuration table)."""
    return _variable_names()[0]


def known_variables() -> frozenset[str]:
    """Every `BEACON_*` name some part of Beacon reads."""
    own, connectors = _variable_names()
    files = frozenset(name + FILE_SUFFIX for name in SECRET_VARIABLES if name.startswith(PREFIX))
    return own | connectors | frozenset(OTHER_VARIABLES) | files


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
