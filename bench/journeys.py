"""Journeys: throughput and CPU per event of a stream that moves users through the four library journeys
(on the mix ruleset, against the same stream without journeys), and the Redis memory of a waiting instance.

Throughput: `JourneyWorkload` (bench/workload.py) flat out over HTTP on three fresh stacks, each with the
mix ruleset (bench/rulesets/mix.json, as the ingest rows): without journeys (`off`), with the four
journeys of rules/library/journeys (`on`), and with them on `beacon serve` + one `beacon worker`
(`on+worker`). The same seeded events go to each; CPU per event is measured as in bench/ingest.py.

Memory: the four journeys and no ruleset (so that no rule's state or action is counted), on two fresh
stacks: per-user trace off (BEACON_TRACE_DEPTH=0), then on (the default). N fresh users first send one
`login` (nothing matches it: a record with a dedupe id and the last interaction), then one entry event
each, with a server-assigned event id (a 32-character UUID, as for producers that send none, which the
instance keeps): `follow` puts them into new-fan, which sends its welcome message and waits at
`wait-click` (a 1-day wait_for); `pay` puts other users into post-purchase, which waits at
`wait-delivery` (a 7-day wait_for) with no action before. The INFO used_memory delta over the entry
events (streams excluded, bench/memory.py), per instance, is set beside MEMORY USAGE of what each user
gained: record growth, the timer set member, the trace list, the action ledger. The target (200 B per
waiting instance) is for the instance's own state: record growth + timer member.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from redis.asyncio import Redis

from beacon.settings import Settings
from bench import cpu, ingest, load, memory
from bench.harness import BeaconStack, beacon_stack
from bench.report import Row, skipped
from bench.sizes import Size
from bench.workload import JourneyWorkload
from cep import timers as cep_timers
from cep.events import partition_of
from cep.journey_stats import read_counts, stats_key
from cep.outbox import outbox_key
from cep.ownership import fair_shares
from cep.user_record import Instance, JourneyMarks
from cep.user_state import LEDGER, LEDGER_INDEX, LEDGER_STATUS, STATE, TRACE, user_key_for

log = logging.getLogger("bench.journeys")

LIBRARY = Path(__file__).resolve().parent.parent / "rules" / "library" / "journeys"
SECTION = "journeys"
SECTION_MEMORY = "journey memory"
TARGET_BYTES = 200  # per waiting instance: its part of the user's record and its timer member
SAMPLE_USERS = 2_000  # users whose keys are read with MEMORY USAGE for the breakdown
SEND_BATCH = 50_000


@dataclass(frozen=True, slots=True)
class Variant:
    """One throughput run: journeys on or off, and whether a `beacon worker` runs beside `serve`."""

    name: str
    journeys: bool
    worker: bool
    what: str


VARIANTS = (
    Variant("off", False, False, "journey stream, mix rules only (no journeys)"),
    Variant("on", True, False, "journey stream, mix + 4 journeys"),
    Variant("on+worker", True, True, "journey stream, mix + 4 journeys, serve + 1 worker"),
)


@dataclass(frozen=True, slots=True)
class Case:
    """One memory case: users `<prefix><n>` enter `journey` with `entry` and wait at `node`."""

    name: str
    journey: str
    node: str
    prefix: str
    entry: str
    what: str


CASES = (
    Case("new_fan", "new-fan", "wait-click", "mf", "follow", "new-fan at wait-click (1d wait_for), after its welcome"),
    Case("post_purchase", "post-purchase", "wait-delivery", "mp", "pay", "post-purchase at wait-delivery (7d)"),
)


def library_journeys() -> list[dict[str, Any]]:
    """The library journeys (rules/library/journeys/*.json), by file name."""
    return [json.loads(path.read_text()) for path in sorted(LIBRARY.glob("*.json"))]


def row_ids() -> list[str]:
    """Every row this benchmark reports, in order."""
    ids = [f"journeys.{variant.name}.processed" for variant in VARIANTS]
    for variant in VARIANTS:
        roles = ("serve", "workers") if variant.worker else ("serve",)
        ids += [f"cpu.journeys.{variant.name}.{role}_us_per_event" for role in (*roles, "redis", "total")]
    ids.append("journeys.cost_us_per_event")
    ids.append("journeys.memory.baseline_per_user")
    ids += [f"journeys.memory.{case.name}.per_instance" for case in CASES]
    ids += [f"journeys.memory.{case.name}.per_instance_traced" for case in CASES]
    ids += [f"journeys.memory.{case.name}.record_and_timer" for case in CASES]
    return ids


async def push_library(stack: BeaconStack) -> list[str]:
    """PUT the four library journeys; returns their ids."""
    ids = []
    for document in library_journeys():
        await stack.push_journey(document)
        ids.append(str(document["id"]))
    return ids


# -- throughput ---------------------------------------------------------------------------------------


def _stats_summary(counts: dict[str, dict[str, int]]) -> str:
    """`new-fan entered 1,234 waiting 456 converted 7; ...` from each journey's summed statistics."""
    parts = []
    for journey_id, fields in counts.items():

        def total(what: str, fields: dict[str, int] = fields) -> int:
            return sum(value for name, value in fields.items() if name.split("|")[1:] == ["", what])

        waiting = sum(value for name, value in fields.items() if name.endswith("|waiting"))

        parts.append(
            f"{journey_id} entered {total('entered'):,} waiting {waiting:,} "
            f"converted {total('converted'):,} exited {total('exited'):,}"
        )
    return "; ".join(parts)


async def _queued_actions(redis: Redis, partitions: int) -> int:
    """Entries in the outbox streams: every action queued so far (connectors are off, nothing reads them)."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.xlen(outbox_key(partition))
        return sum(await pipe.execute())


async def _stream_run(variant: Variant, size: Size) -> tuple[Row, list[Row], float | None]:
    """One fresh stack: the processed/s row, the CPU rows and the total CPU per event (None: not drained)."""
    log.info("journey stream %s: %s events", variant.name, f"{size.journey_events:,}")
    async with beacon_stack() as stack:
        redis = stack.client()
        try:
            journey_ids = await push_library(stack) if variant.journeys else []
            if variant.worker:
                await stack.start_workers(1)
                serve = f"serve@{Settings().serve_partition_weight:g}"
                share = fair_shares([serve, "worker@1"], stack.partitions)["worker@1"]
                await load.wait_owning(
                    redis, stack.partitions, stack.workers[0].process.pid, share, size.drain_timeout_s
                )
            workload = JourneyWorkload(size.users)
            await ingest.load_profiles(redis, workload, stack.partitions)
            await ingest.warm_up(stack, redis, workload, min(1_000, size.journey_events), size.drain_timeout_s)
            events = workload.events(size.journey_events)
            roles = stack.pids_by_role()
            before = await cpu.sample(redis, roles)
            result = await load.blast_http(stack.base_url, events)
            drained = await load.wait_drained(redis, stack.partitions, size.drain_timeout_s)
            after = await cpu.sample(redis, roles)
            counts = {jid: await read_counts(redis, stack.partitions, jid) for jid in journey_ids}
            actions = await _queued_actions(redis, stack.partitions)
        finally:
            await redis.aclose()
    row_id, label = f"journeys.{variant.name}.processed", f"{variant.what}: processed/s (flat out)"
    prefix = f"cpu.journeys.{variant.name}"
    if drained is None:
        reason = f"backlog not drained within {size.drain_timeout_s:.0f}s"
        cpu_skipped = [
            skipped(f"{prefix}.{role}_us_per_event", cpu.SECTION, f"{variant.what}: {cpu.ROLE_LABELS[role]}", reason)
            for role in [*roles, "redis", "total"]
        ]
        return skipped(row_id, SECTION, label, reason), cpu_skipped, None
    seconds = drained - result.started
    sent = ", ".join(f"{name} {count:,}" for name, count in sorted(workload.counts.items(), key=lambda kv: -kv[1]))
    detail = f"HTTP msgpack batches of 500, 8 in flight; first send -> backlog empty: {result.accepted:,} events in "
    detail += f"{seconds:.1f}s; sent (warm-up included): {sent}; actions queued (warm-up included): {actions:,}"
    if counts:
        detail += f"; at the end: {_stats_summary(counts)}"
    row = Row(
        row_id,
        SECTION,
        label,
        result.accepted / seconds,
        "events/s",
        detail,
        {
            "events": result.accepted,
            "seconds": seconds,
            "sent": dict(workload.counts),
            "actions": actions,
            "journeys": counts,
        },
    )
    cost = cpu.per_event_us(before, after, result.accepted)
    window = "first send -> backlog empty"
    return row, cpu.cpu_rows(prefix, variant.what, cost, result.accepted, window), cost["total"]


async def stream_rows(size: Size) -> list[Row]:
    """processed/s and CPU per event of the journey stream without journeys, with them, and with a worker."""
    rows: list[Row] = []
    cpu_rows: list[Row] = []
    totals: dict[str, float | None] = {}
    for variant in VARIANTS:
        row, costs, totals[variant.name] = await _stream_run(variant, size)
        rows.append(row)
        cpu_rows += costs
    off, on = totals["off"], totals["on"]
    label = "journeys' CPU per event (on - off, serve + Redis)"
    if off is None or on is None:
        cost_row = skipped("journeys.cost_us_per_event", SECTION, label, "a run did not drain")
    else:
        cost_row = Row(
            "journeys.cost_us_per_event",
            SECTION,
            label,
            on - off,
            "µs/event",
            f"total CPU per event with the 4 journeys {on:.1f} - without {off:.1f}, same events, one run each "
            f"(a difference of two noisy figures: {100 * (on - off) / max(off, 1e-9):+.0f} %)",
        )
    return [*rows, *cpu_rows, cost_row]


# -- memory -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    """One memory case on one stack: per-user figures in bytes."""

    case: Case
    traced: bool
    instances: int
    baseline: float  # used_memory delta per user over the logins
    per_instance: float  # used_memory delta per user over the entry events
    parts: dict[str, float]  # MEMORY USAGE per user: record growth, timer member, trace, ledger, stats; rest
    waiting: int  # instances waiting at the case's node (journey statistics)
    timers_added: int
    packed_journeys: int  # bytes of one sampled record's packed journeys part
    packed_record: int  # bytes of that record as stored
    packed_fields: dict[str, int]  # bytes of each field of that journeys part
    timer_member: str  # that user's timer set member
    seconds: float

    @property
    def record_and_timer(self) -> float:
        """The instance's own state: its record growth and its timer set member."""
        return self.parts["record_growth"] + self.parts["timer_member"]


def _logins(users: list[str], case: Case) -> list[dict[str, Any]]:
    return [
        {"user_id": user, "type": "login", "event_id": f"{case.prefix}l-{user}", "attrs": {"channel": "web"}}
        for user in users
    ]


def _entries(users: list[str], case: Case) -> list[dict[str, Any]]:
    """One entry event per user, no event id (the server assigns a UUID, which the instance keeps)."""
    if case.entry == "follow":
        return [{"user_id": user, "type": "follow", "attrs": {"channel": "wechat"}} for user in users]
    return [
        {
            "user_id": user,
            "type": "pay",
            "attrs": {"order_id": f"O-{user}", "sku": "K1", "amount": 99, "store": "S-01", "category": "apparel"},
        }
        for user in users
    ]


async def _send(stack: BeaconStack, redis: Redis, events: list[dict[str, Any]], size: Size) -> None:
    for start in range(0, len(events), SEND_BATCH):
        await load.blast_http(stack.base_url, events[start : start + SEND_BATCH], batch=1000, concurrency=4)
    timeout = size.drain_timeout_s + len(events) / 1_000
    if await load.wait_drained(redis, stack.partitions, timeout) is None:
        raise RuntimeError(f"{len(events):,} events not processed within {timeout:.0f}s")


async def _packed_sizes(redis: Redis, partitions: int, user_id: str) -> tuple[int, int, dict[str, int]]:
    """One user's record: bytes of its packed journeys part, of the whole record as stored, and of each field
    of the journeys part as msgpack encodes it, named after `Instance` and `JourneyMarks` (`framing`: map and
    array headers, journey short keys and instance keys)."""
    raw = await redis.get(user_key_for(partitions, user_id, STATE))
    if raw is None:
        return 0, 0, {}
    journeys = msgpack.unpackb(raw, raw=False, strict_map_key=False).get("j") or {}
    total = len(msgpack.packb({"j": journeys}, use_bin_type=True)) - 1  # less the record map's own header
    mark_names = [item.name for item in dataclasses.fields(JourneyMarks) if item.name != "instances"]
    instance_names = [item.name for item in dataclasses.fields(Instance)]
    sizes: dict[str, int] = {}

    def add(names: list[str], values: list[Any]) -> None:
        for index, value in enumerate(values):
            name = names[index] if index < len(names) else f"#{index}"
            sizes[name] = sizes.get(name, 0) + len(msgpack.packb(value, use_bin_type=True))

    for marks in journeys.values():  # [mark, ..., {instance key: [field, ...]}]
        add(mark_names, marks[:-1])
        for instance in marks[-1].values():
            add(instance_names, instance)
    sizes["framing"] = total - sum(sizes.values())
    return total, len(raw), sizes


async def _timer_member(redis: Redis, partitions: int, user_id: str) -> str:
    """One user's journey timer member (`j<US>user<US>journey<US>key<US>seq`), "" if none is found."""
    key = cep_timers.timers_key(partition_of(user_id, partitions))
    async for member, _ in redis.zscan_iter(key, match=f"j\x1f{user_id}\x1f*", count=1_000):
        return str(member.decode() if isinstance(member, bytes) else member)
    return ""


async def _measure(stack: BeaconStack, redis: Redis, case: Case, traced: bool, size: Size) -> Measured:
    """Fresh users log in, then enter the case's journey; the memory each step added, per user."""
    count, partitions = size.journey_instances, stack.partitions
    users = [f"{case.prefix}{index}" for index in range(count)]
    sample = users[:: max(1, count // SAMPLE_USERS)][:SAMPLE_USERS]
    records = [user_key_for(partitions, user, STATE) for user in sample]
    stats_keys = [stats_key(p, case.journey) for p in range(partitions)]

    log.info("journey memory %s (trace %s): %s users", case.name, "on" if traced else "off", f"{count:,}")
    empty = await memory.state_bytes(redis, partitions)
    await _send(stack, redis, _logins(users, case), size)
    baseline = await memory.state_bytes(redis, partitions)
    records_before = sum(await memory.usages(redis, records))
    timers_before = await memory.timer_set_bytes(redis, partitions)
    pending_before = await cep_timers.pending_count(redis, partitions)
    stats_before = sum(await memory.usages(redis, stats_keys))

    started = time.monotonic()
    await _send(stack, redis, _entries(users, case), size)
    seconds = time.monotonic() - started
    after = await memory.state_bytes(redis, partitions)
    records_after = sum(await memory.usages(redis, records))
    timers_after = await memory.timer_set_bytes(redis, partitions)
    timers_added = await cep_timers.pending_count(redis, partitions) - pending_before
    stats_after = sum(await memory.usages(redis, stats_keys))
    trace = sum(await memory.usages(redis, [user_key_for(partitions, user, TRACE) for user in sample]))
    ledger_families = (LEDGER, LEDGER_INDEX, LEDGER_STATUS)
    ledger = sum(await memory.usages(redis, [user_key_for(partitions, u, f) for u in sample for f in ledger_families]))
    counts = await read_counts(redis, partitions, case.journey)
    packed_journeys, packed_record, packed_fields = await _packed_sizes(redis, partitions, sample[-1])

    sampled = max(len(sample), 1)
    parts = {
        "record_growth": (records_after - records_before) / sampled,
        "timer_member": (timers_after - timers_before) / count,
        "trace": trace / sampled,
        "ledger": ledger / sampled,
        "stats": (stats_after - stats_before) / count,
    }
    per_instance = (after - baseline) / count
    parts["rest"] = per_instance - sum(parts.values())
    return Measured(
        case,
        traced,
        count,
        (baseline - empty) / count,
        per_instance,
        parts,
        counts.get(f"1|{case.node}|waiting", 0),
        timers_added,
        packed_journeys,
        packed_record,
        packed_fields,
        await _timer_member(redis, partitions, sample[-1]),
        seconds,
    )


def _instance_row(found: Measured) -> Row:
    case = found.case
    breakdown = ", ".join(f"{name.replace('_', ' ')} {value:.0f}" for name, value in found.parts.items())
    depth = Settings().trace_depth
    trace = (
        f"trace on (BEACON_TRACE_DEPTH {depth}, the default)" if found.traced else "trace off (BEACON_TRACE_DEPTH=0)"
    )
    suffix = "_traced" if found.traced else ""
    return Row(
        f"journeys.memory.{case.name}.per_instance{suffix}",
        SECTION_MEMORY,
        f"bytes per waiting instance, all state, {'trace on' if found.traced else 'trace off'}: {case.what}",
        found.per_instance,
        "bytes",
        f"{trace}; used_memory delta minus streams over {found.instances:,} users' entry events "
        f"({found.seconds:.0f}s), against the same users after one login each; MEMORY USAGE per user "
        f"({min(found.instances, SAMPLE_USERS):,} sampled): {breakdown} (rest: keyspace entries of new keys, "
        f"expiry entries, allocator rounding); {found.waiting:,} waiting at {case.node} (journey stats), "
        f"{found.timers_added:,} timers added",
        {
            "instances": found.instances,
            "waiting": found.waiting,
            "timers_added": found.timers_added,
            **{f"{name}_bytes": value for name, value in found.parts.items()},
        },
    )


def _own_row(found: Measured) -> Row:
    case, own = found.case, found.record_and_timer
    verdict = "met" if own <= TARGET_BYTES else "missed"
    fields = ", ".join(f"{name} {size}" for name, size in sorted(found.packed_fields.items(), key=lambda kv: -kv[1]))
    return Row(
        f"journeys.memory.{case.name}.record_and_timer",
        SECTION_MEMORY,
        f"bytes per waiting instance, record growth + timer member: {case.journey}",
        own,
        "bytes",
        f"target <= {TARGET_BYTES} B: {verdict}; MEMORY USAGE: record +{found.parts['record_growth']:.0f}, timer set "
        f"+{found.parts['timer_member']:.0f} per member (the member string is {len(found.timer_member)} B: "
        f"{found.timer_member.replace(chr(0x1F), '|')}); one sampled record: its journeys part packs to "
        f"{found.packed_journeys} of its {found.packed_record} B ({fields}), and the entry event's dedupe id "
        "adds 12 B for 7 days",
        {
            "record_growth_bytes": found.parts["record_growth"],
            "timer_member_bytes": found.parts["timer_member"],
            "packed_journeys_bytes": found.packed_journeys,
            "packed_record_bytes": found.packed_record,
            "packed_fields": found.packed_fields,
            "timer_member": found.timer_member,
        },
    )


async def memory_rows(size: Size) -> list[Row]:
    """Each case with the trace off and then on (fresh stacks): a baseline row, then per-instance rows."""
    measured: list[Measured] = []
    for traced in (False, True):
        extra_env = {} if traced else {"BEACON_TRACE_DEPTH": "0"}
        async with beacon_stack(with_ruleset=False, extra_env=extra_env) as stack:
            redis = stack.client()
            try:
                await push_library(stack)
                for case in CASES:
                    measured.append(await _measure(stack, redis, case, traced, size))
            finally:
                await redis.aclose()
    first = measured[0]
    others = ", ".join(f"{found.baseline:.0f}" for found in measured[1:])
    rows = [
        Row(
            "journeys.memory.baseline_per_user",
            SECTION_MEMORY,
            "bytes per user before entering (one login)",
            first.baseline,
            "bytes",
            f"used_memory delta minus streams over {first.instances:,} fresh users' logins, trace off (a record "
            f"with one dedupe id and the last interaction; nothing matches a login); the other groups: {others}",
        )
    ]
    untraced = [found for found in measured if not found.traced]
    rows += [_instance_row(found) for found in untraced]
    rows += [_instance_row(found) for found in measured if found.traced]
    rows += [_own_row(found) for found in untraced]
    return rows


async def journey_rows(size: Size) -> list[Row]:
    """The throughput rows, then the memory rows."""
    return [*await stream_rows(size), *await memory_rows(size)]
