"""Every Prometheus metric Beacon exports, behind narrow hooks the core calls (labels stay bounded)."""

from __future__ import annotations

import platform
import re
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

import beacon

REGISTRY = CollectorRegistry(auto_describe=True)
# process_* (CPU seconds, resident memory, open fds, start time) and python_info, as on the default registry;
# python_gc_* too: workers tune the collector (beacon.services.tune_gc) and its cost shows there.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

EVENTS_ACCEPTED = Counter(
    "beacon_events_accepted_total", "Events durably appended to an event stream", ["transport"], registry=REGISTRY
)
EVENTS_REJECTED = Counter(
    "beacon_events_rejected_total", "Events refused at ingest", ["transport", "reason"], registry=REGISTRY
)
EVENTS_PROCESSED = Counter(
    "beacon_events_processed_total",
    "Events evaluated by workers, once each (an event naming a merged user counts where it is evaluated, not where "
    "it was forwarded from)",
    ["origin"],
    registry=REGISTRY,
)
EVENTS_DUPLICATE = Counter(
    "beacon_events_duplicate_total", "Events whose event_id had been processed before", registry=REGISTRY
)
EVENTS_LATE = Counter(
    "beacon_events_late_total",
    "Events that arrived after a rule's deadline plus lateness and could no longer affect it",
    ["ruleset", "rule"],
    registry=REGISTRY,
)
EVENTS_QUARANTINED = Counter(
    "beacon_events_quarantined_total",
    "Stream entries that failed on their own and were moved to the quarantine stream",
    registry=REGISTRY,
)
HOP_LIMITED = Counter(
    "beacon_events_hop_limited_total",
    "Events caused by actions (tag_added ...) dropped because their chain reached the hop limit",
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "beacon_redis_errors_total",
    "Redis calls that failed (connection, OOM, MISCONF ...) and were retried",
    ["component"],
    registry=REGISTRY,
)
RULE_MATCHES = Counter(
    "beacon_rule_matches_total", "Rule firings admitted by re-entry policy", ["ruleset", "rule"], registry=REGISTRY
)
ITEM_FANOUT = Counter(
    "beacon_item_fanout_events_total",
    "Events appended for users by item-event fan-out, by event type",
    ["type"],
    registry=REGISTRY,
)
IDENTITY_MERGES = Counter(
    "beacon_identity_merges_total",
    "Identity merge steps: decided (by POST /v1/identities), out (a user became a tombstone), in (its state was "
    "merged into the target), duplicate (a state delivered again, ignored), repeated (a merge re-sent for a user "
    "merged already)",
    ["step"],
    registry=REGISTRY,
)
IDENTITY_FORWARDED = Counter(
    "beacon_identity_forwarded_total",
    "Items that reached a merged user and were handed on to the user it was merged into (event, patch, merge)",
    ["kind"],
    registry=REGISTRY,
)
IDENTITY_ALIASES = Counter(
    "beacon_identity_aliases_total",
    "Aliases linked to a user by POST /v1/identities (linked), or made a user of their own by an event (created)",
    ["outcome"],
    registry=REGISTRY,
)
JOURNEY_INSTANCES = Counter(
    "beacon_journey_instances_total",
    "Journey instances entered / exited / completed / converted, by node (node empty: the whole journey)",
    ["journey", "node", "outcome"],
    registry=REGISTRY,
)
JOURNEY_WAITING = Gauge(
    "beacon_journey_waiting_instances",
    "Instances of a journey waiting at a wait or wait_for node, summed over its versions and partitions",
    ["journey"],
    registry=REGISTRY,
)
ACTIONS_EMITTED = Counter(
    "beacon_actions_emitted_total", "Actions written to the ledger and outbox", ["type"], registry=REGISTRY
)
INGEST_TO_OUTBOX = Histogram(
    "beacon_ingest_to_outbox_seconds",
    "From an event's acceptance to its actions appearing in the outbox",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "beacon_worker_batch_seconds",
    "Time a worker spends on one batch of stream entries",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
BATCH_ITEMS = Histogram(
    "beacon_worker_batch_items",
    "Events, profile patches and due timers in one worker batch (small batches cost more per event)",
    buckets=(1, 5, 20, 50, 100, 200, 500, 1000, 2000),
    registry=REGISTRY,
)
STREAM_LAG = Gauge(
    "beacon_stream_lag_entries", "Event stream entries not yet acknowledged by the workers", registry=REGISTRY
)
TIMER_LAG = Histogram(
    "beacon_timer_lag_seconds",
    "How late a due timer was turned into an event",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
PENDING_TIMERS = Gauge("beacon_pending_timers", "Timers waiting for their due time", registry=REGISTRY)
RULESETS_ACTIVE = Gauge("beacon_rulesets_active", "Active rulesets in this process", registry=REGISTRY)
ACTION_DELIVERIES = Counter(
    "beacon_action_deliveries_total",
    "Delivery attempts by connector, outcome and reason (why it was skipped, deferred, failed or dead; "
    "empty when delivered)",
    ["connector", "outcome", "reason"],
    registry=REGISTRY,
)
OUTBOX_BACKLOG = Gauge(
    "beacon_outbox_backlog_entries",
    "Outbox entries the connectors have not finished with (unread plus read and unacknowledged), over all partitions",
    registry=REGISTRY,
)
ARCHIVE_BACKLOG = Gauge(
    "beacon_archive_backlog_entries",
    "Archive stream entries (one per committed batch) not yet written to the archive's files",
    registry=REGISTRY,
)
ARCHIVE_ROWS = Counter(
    "beacon_archive_rows_total", "Rows written to the event archive's files, by table", ["table"], registry=REGISTRY
)
ARCHIVE_FILES = Counter(
    "beacon_archive_files_total",
    "Archive files written by drains (drain) and compactions (compact)",
    ["kind"],
    registry=REGISTRY,
)
ARCHIVE_BYTES = Counter(
    "beacon_archive_bytes_total",
    "Bytes of archive files written, by drains and compactions",
    ["kind"],
    registry=REGISTRY,
)
ARCHIVE_UNREADABLE = Counter(
    "beacon_archive_unreadable_total",
    "Archive stream entries that could not be decoded and were skipped",
    registry=REGISTRY,
)
DEAD_LETTERS = Gauge(
    "beacon_dead_letter_entries",
    "Actions in the dead-letter stream (out of attempts, not replayed since), up to its cap",
    registry=REGISTRY,
)
STREAM_LAG_SECONDS = Gauge(
    "beacon_stream_lag_seconds",
    "Age of the oldest event stream entry not yet committed, per partition (0: nothing waits)",
    ["partition"],
    registry=REGISTRY,
)
HEALTH_PROBLEMS = Gauge(
    "beacon_health_problems",
    "Problems /healthz reports from its background samples and loops (0: healthy; see beacon.health)",
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "beacon_http_requests_total",
    "API requests by route template (unmatched: no route for the path or the method), method and status code",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "beacon_http_request_duration_seconds",
    "API request handling time by route template and method (WebSocket sessions are not timed)",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
BUILD_INFO = Info("beacon_build", "The running Beacon's version and Python version", registry=REGISTRY)
TRIGGER_TO_DELIVERY = Histogram(
    "beacon_trigger_to_delivery_seconds",
    "From an action's creation to its delivery",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)


PLAN_SENT = Counter(
    "beacon_plan_sent_total",
    "Users a plan's runs sent their plan event to (appended to the users' partition streams)",
    ["plan"],
    registry=REGISTRY,
)


LINK_CLICKS = Counter(
    "beacon_link_clicks_total",
    "Tracked-link redirects served (`GET /c/{token}`), by what made the link and whether the click was recorded",
    ["source", "recorded"],
    registry=REGISTRY,
)


def on_click(source: str, *, recorded: bool) -> None:
    """A tracked link was followed (`api.routes_clicks`); `recorded` False when Redis refused the click."""
    LINK_CLICKS.labels(source, "true" if recorded else "false").inc()


CONVERSIONS = Counter(
    "beacon_conversions_total",
    "Goal conversions by ruleset or journey and attribution model (acted, reach, click), as committed",
    ["kind", "id", "model"],
    registry=REGISTRY,
)
CLICKS = Counter(
    "beacon_clicks_total",
    "Tracked links clicked (each link's first click), by the ruleset or journey whose action carried it",
    ["kind", "id"],
    registry=REGISTRY,
)


def on_measured(scope: str, what: str, count: int) -> None:
    """A batch's conversions or clicks of a measurement scope (`m:rs:<id>`, `m:j:<id>`; cep.attribution)."""
    _, kind, scope_id = scope.split(":", 2)
    kind = "ruleset" if kind == "rs" else "journey"
    if what == "clicked":
        CLICKS.labels(kind, scope_id).inc(count)
    else:
        CONVERSIONS.labels(kind, scope_id, what.partition(":")[2] or "acted").inc(count)


def on_plan_sent(plan_id: str, count: int) -> None:
    """Users a plan run's send reached (`cep.plan_driver`)."""
    PLAN_SENT.labels(plan_id).inc(count)


def on_item_fanout(event_type: str, count: int) -> None:
    """Events an item event fanned out to users (`POST /v1/items/events`)."""
    ITEM_FANOUT.labels(event_type).inc(count)


def on_identity(what: str, count: int = 1) -> None:
    """Merge steps (`decided`, `out`, `in`, `duplicate`, `repeated`) or forwards (`forwarded:<kind>`)."""
    kind = what.removeprefix("forwarded:")
    if kind != what:
        IDENTITY_FORWARDED.labels(kind).inc(count)
    else:
        IDENTITY_MERGES.labels(what).inc(count)


def on_aliases(outcome: str, count: int) -> None:
    """Aliases linked to a user (`linked`) or made users of their own by their first event (`created`)."""
    if count:
        IDENTITY_ALIASES.labels(outcome).inc(count)


def on_events_accepted(transport: str, count: int) -> None:
    """Events appended by the HTTP or WebSocket ingest."""
    EVENTS_ACCEPTED.labels(transport).inc(count)


def on_event_rejected(transport: str, reason: str) -> None:
    """One event refused at ingest, by error code (a small fixed set)."""
    EVENTS_REJECTED.labels(transport, reason).inc()


def on_events_processed(origin: str, count: int) -> None:
    """Events a worker evaluated (not those it only forwarded from a merged user: `on_identity`)."""
    EVENTS_PROCESSED.labels(origin or "producer").inc(count)


def on_duplicate_event() -> None:
    """An event_id seen before."""
    EVENTS_DUPLICATE.inc()


def on_event_quarantined() -> None:
    """An entry that failed alone was moved aside."""
    EVENTS_QUARANTINED.inc()


def on_hop_limit(count: int) -> None:
    """Events caused by actions were dropped at the hop limit (a rule loop?)."""
    HOP_LIMITED.inc(count)


def on_redis_error(component: str) -> None:
    """A Redis call failed and will be retried."""
    REDIS_ERRORS.labels(component).inc()


def on_late_event(ruleset_id: str, rule_id: str) -> None:
    """An event past a rule's deadline plus lateness."""
    EVENTS_LATE.labels(ruleset_id, rule_id).inc()


def on_journey(journey_id: str, node: str, outcome: str, count: int) -> None:
    """Journey instances entered / exited / completed / converted, per node ("" for the whole journey)."""
    JOURNEY_INSTANCES.labels(journey_id, node, outcome).inc(count)


def set_journey_waiting(journey_id: str, waiting: int | None) -> None:
    """Instances of a journey waiting now (from its statistics); None: the journey is gone, drop its series."""
    if waiting is None:
        JOURNEY_WAITING.remove(journey_id)
    else:
        JOURNEY_WAITING.labels(journey_id).set(waiting)


def on_rule_fired(ruleset_id: str, rule_id: str, count: int = 1) -> None:
    """Firings admitted by the re-entry policy."""
    RULE_MATCHES.labels(ruleset_id, rule_id).inc(count)


def on_actions_emitted(action_type: str, count: int) -> None:
    """Actions reached the ledger/outbox."""
    ACTIONS_EMITTED.labels(action_type).inc(count)


def on_ingest_to_outbox(latency_s: float) -> None:
    """An action reached the outbox `latency_s` after its event was accepted."""
    INGEST_TO_OUTBOX.observe(max(latency_s, 0.0))


def on_batch(seconds: float, items: int) -> None:
    """A worker batch finished: its duration and how many events, patches and timers it held."""
    BATCH_SECONDS.observe(seconds)
    BATCH_ITEMS.observe(items)


def set_stream_lag(entries: int) -> None:
    """Undelivered plus unacknowledged entries over all partitions."""
    STREAM_LAG.set(entries)


def on_timer_fired(lag_s: float) -> None:
    """A timer turned into an event `lag_s` after its due time."""
    TIMER_LAG.observe(max(lag_s, 0.0))


def set_pending_timers(count: int) -> None:
    """Timers waiting over all partitions."""
    PENDING_TIMERS.set(count)


def set_active_rulesets(count: int) -> None:
    """Rulesets compiled in this process."""
    RULESETS_ACTIVE.set(count)


def on_delivery(connector: str, outcome: str, reason: str = "", latency_s: float | None = None) -> None:
    """A delivery attempt ended with `outcome` (delivered, failed, skipped, dead, deferred) for `reason`
    (the connector's or the policy's short code, such as http_4xx or frequency_capped; "" when delivered)."""
    ACTION_DELIVERIES.labels(connector, outcome, _bounded_reason(reason)).inc()
    if latency_s is not None and outcome == "delivered":
        TRIGGER_TO_DELIVERY.observe(max(latency_s, 0.0))


# Reasons are our codes, but WeChat's unknown errcodes become `errcode_<n>`: a provider could mint series
# without end. Past this many distinct reasons in a process, or for anything not shaped like a code, "other".
REASONS_MAX = 64
_REASON = re.compile(r"[a-z0-9_]{1,40}")
_reasons_seen: set[str] = set()


def _bounded_reason(reason: str) -> str:
    if reason in _reasons_seen or not reason:
        return reason
    if len(_reasons_seen) >= REASONS_MAX or not _REASON.fullmatch(reason):
        return "other"
    _reasons_seen.add(reason)
    return reason


def set_outbox_backlog(entries: int) -> None:
    """Outbox entries not yet done with, over all partitions (cluster-wide: every process reports the same)."""
    OUTBOX_BACKLOG.set(entries)


def set_dead_letters(count: int) -> None:
    """Entries in the dead-letter stream (cluster-wide)."""
    DEAD_LETTERS.set(count)


def set_stream_lag_seconds(ages_s: list[float]) -> None:
    """Per partition (by index), how old its oldest uncommitted entry is (0 when none waits)."""
    for partition, age in enumerate(ages_s):
        STREAM_LAG_SECONDS.labels(str(partition)).set(max(age, 0.0))


def set_health_problems(count: int) -> None:
    """How many problems the process's health monitor sees now."""
    HEALTH_PROBLEMS.set(count)


UNMATCHED_ROUTE = "unmatched"
# Methods a client may send are any token: others count as "other", so a scanner cannot mint series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The children for each (route, method, status) seen: labels() takes a lock and builds a tuple per call,
# and this runs on every ingest request. Bounded by the routes x methods x status codes the app can answer.
_http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def on_http_request(route: str, method: str, status: int, seconds: float | None) -> None:
    """An API request to route template `route` (`/v1/journeys/{id}`, or UNMATCHED_ROUTE) answered `status`
    after `seconds` (None: not timed, a WebSocket session)."""
    verb = method if method in _METHODS else "other"
    key = (route, verb, status)
    children = _http_children.get(key)
    if children is None:
        children = (HTTP_REQUESTS.labels(route, verb, str(status)), HTTP_SECONDS.labels(route, verb))
        _http_children[key] = children
    children[0].inc()
    if seconds is not None:
        children[1].observe(seconds)


def _version() -> str:
    """The installed distribution's version (the package's own when it runs from a source tree)."""
    try:
        return metadata.version("beacon-cep")
    except metadata.PackageNotFoundError:
        return beacon.__version__


BUILD_INFO.info({"version": _version(), "python": platform.python_version()})


def exposition() -> tuple[bytes, str]:
    """The text exposition and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def set_archive_backlog(entries: int) -> None:
    """Archive stream entries waiting for the archiver, over all partitions."""
    ARCHIVE_BACKLOG.set(entries)


def on_archive_file(kind: str, size: int, rows: dict[str, int] | None = None) -> None:
    """An archive file was written (`drain` or `compact`), with the rows a drain added per table."""
    ARCHIVE_FILES.labels(kind).inc()
    ARCHIVE_BYTES.labels(kind).inc(size)
    for table, count in (rows or {}).items():
        ARCHIVE_ROWS.labels(table).inc(count)


def on_archive_unreadable() -> None:
    """An archive stream entry could not be decoded (it is skipped, logged with its id)."""
    ARCHIVE_UNREADABLE.inc()
