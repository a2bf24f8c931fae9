"""Segments: what live membership costs per event with 20 segments, the Redis memory of a membership, the
latency of `POST /v1/segments:estimate`, and the plan send rate (not measured: plans are not built yet).

Maintenance CPU: the storefront mix (`Workload`, bench/workload.py, seeded) flat out over HTTP on fresh
stacks with the mix ruleset (bench/rulesets/mix.json, as the ingest rows): without segments (`off`) and
with the 20 segments of `LIVE_SEGMENTS` (`on`), which read the mix's event types, tags and profiles.
The same events go to every run; `size.segment_rounds` rounds of off-then-on, averaged. CPU per event
is measured as in bench/ingest.py (serve + Redis, first send -> backlog empty); the difference is the
segments' cost. Events carry no `ts`: no window timer falls due during a run.

Memory per (user, segment) membership, on one stack with no ruleset and the trace off
(BEACON_TRACE_DEPTH=0), two cases of `size.segment_users` fresh users each:
- `profile`: 5 segments over tags and the profile (no window). The users get their profile and tags by a
  patch before the segments exist; then the segments are stored and each user gets an empty patch (a
  patch re-evaluates the segments that read the profile or tags) and enters all 5.
- `window`: 5 segments over `pay` in 7- to 90-day windows (3 behaviour shapes). Stored first; each user
  sends a `login` (read by no segment), then one `pay` and enters all 5, each with a window timer (the
  day the payment leaves the window).
INFO used_memory minus the streams (bench/memory.py), delta over the step that makes the members, per
membership; beside it, MEMORY USAGE of what each membership added: the record's segment marks, the member
SET entry, the window timer (a member of the partition's timer sorted set).

Estimate: a population of user records written straight into Redis (`encode_user_state` under
`user_key`, pipelined: profile, tags, kept `pay` history of two shapes, dedupe ids), then
`POST /v1/segments:estimate` for a definition over tags, profile and both histories, with the default
`exact_limit` and with a tenth of the population (a hash sample): wall time, exact or sampled, the
error bound, and the true count (the same compiled condition evaluated here over the records written).
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
from redis.asyncio import Redis

from bench import cpu, ingest, load, memory
from bench.harness import BeaconStack, HarnessError, beacon_stack
from bench.report import Row, skipped
from bench.sizes import Size
from bench.workload import LEVELS, REGIONS, Workload
from cep import timers as cep_timers
from cep.events import ProfilePatch, encode_patch, partition_of
from cep.history import history_of
from cep.scripts import ScriptCall, run_scripts
from cep.segment_members import members_key, segment_size, sizes_key
from cep.streams import APPEND_SCRIPT, PATCH_FIELD, events_key, progress_key
from cep.user_record import PatternState, UserState, encode_user_state, event_id_hash
from cep.user_state import STATE, user_key, user_key_for
from rules.predicates import NO_ATTRS
from rules.segments import CompiledSegment, parse_segment

log = logging.getLogger("bench.segments")

SECTION = "segments"
SECTION_MEMORY = "segment memory"
SECTION_ESTIMATE = "segment estimate"
SAMPLE_USERS = 2_000  # users whose record is read with MEMORY USAGE for the breakdown
SEND_BATCH = 50_000
WRITE_BATCH = 1_000  # patches or records per pipeline
DAY_MS = 86_400_000


def _did(event: str, within: str, where: dict[str, Any] | None = None, at_least: int = 1) -> dict[str, Any]:
    match: dict[str, Any] = {"event": event, **({"where": where} if where else {})}
    condition: dict[str, Any] = {"did": match, "within": within}
    if at_least > 1:
        condition["count"] = {"op": ">=", "value": at_least}
    return condition


def _field(name: str, op: str, value: Any) -> dict[str, Any]:
    return {"field": name, "op": op, "value": value}


# Twenty segments of the shapes a storefront defines, over the mix's event types, tags and profiles.
LIVE_SEGMENTS: tuple[dict[str, Any], ...] = (
    *(
        {"id": f"viewed-{category}-7d", "where": _did("view", "7d", _field("category", "==", category), 3)}
        for category in ("consumable", "apparel", "digital")
    ),
    {"id": "no-pay-30d", "where": {"did_not": {"event": "pay"}, "within": "30d"}},
    {
        "id": "spent-1000-90d",
        "where": {"sum": "amount", "of": {"event": "pay"}, "within": "90d", "op": ">=", "value": 1000},
    },
    {
        "id": "spent-5000-90d",
        "where": {"sum": "amount", "of": {"event": "pay"}, "within": "90d", "op": ">=", "value": 5000},
    },
    {"id": "vip", "where": {"tag": "vip"}},
    {"id": "region-north-east", "where": {"profile": "region", "op": "in", "value": ["SH", "BJ"]}},
    {"id": "vip-sh-bj", "where": {"all": [{"tag": "vip"}, {"profile": "region", "op": "in", "value": ["SH", "BJ"]}]}},
    {
        "id": "cart-no-pay-7d",
        "where": {"all": [_did("add_to_cart", "7d"), {"did_not": {"event": "pay"}, "within": "7d"}]},
    },
    {"id": "active-login-30d", "where": _did("login", "30d", at_least=5)},
    {"id": "lapsed-login-30d", "where": {"did_not": {"event": "login"}, "within": "30d"}},
    {
        "id": "new-fans-no-order",
        "where": {"all": [_did("follow", "30d"), {"did_not": {"event": "pay"}, "within": "30d"}]},
    },
    {"id": "refunded-90d", "where": _did("refund", "90d")},
    {
        "id": "coupon-unused-30d",
        "where": {"all": [_did("coupon_issued", "30d"), {"did_not": {"event": "coupon_used"}, "within": "30d"}]},
    },
    {"id": "coupon-seekers-7d", "where": _did("search", "7d", _field("query", "prefix", "coupon"))},
    {
        "id": "gold-spenders-90d",
        "where": {
            "all": [
                {"profile": "level", "op": "in", "value": ["gold", "platinum"]},
                {"sum": "amount", "of": {"event": "pay"}, "within": "90d", "op": ">=", "value": 2000},
            ]
        },
    },
    {"id": "member-or-repeat-buyer", "where": {"any": [{"tag": "member"}, _did("pay", "90d", at_least=2)]}},
    {"id": "sharers-30d", "where": _did("share", "30d")},
    {
        "id": "consumable-repurchase-due",
        "where": {
            "all": [
                {"not": {"tag": "vip"}},
                _did("pay", "60d", _field("category", "==", "consumable")),
                {"did_not": {"event": "pay", "where": _field("category", "==", "consumable")}, "within": "30d"},
            ]
        },
    },
)


@dataclass(frozen=True, slots=True)
class MemoryCase:
    """Users `<prefix><n>` become members of `segments`, each the same way."""

    name: str
    prefix: str
    segments: tuple[dict[str, Any], ...]
    what: str

    @property
    def windowed(self) -> bool:
        """Whether the segments read behaviour in a window (each membership then holds a timer)."""
        return self.name == "window"


MEMORY_CASES = (
    MemoryCase(
        "profile",
        "gp",
        (
            {"id": "m-vip", "where": {"tag": "vip"}},
            {"id": "m-member", "where": {"tag": "member"}},
            {"id": "m-region", "where": {"profile": "region", "op": "in", "value": ["SH", "BJ"]}},
            {"id": "m-level", "where": {"profile": "level", "op": "in", "value": ["gold", "platinum"]}},
            {"id": "m-vip-sh", "where": {"all": [{"tag": "vip"}, {"profile": "region", "op": "==", "value": "SH"}]}},
        ),
        "5 segments over tags and profile (no window), entered on a profile patch",
    ),
    MemoryCase(
        "window",
        "gw",
        (
            {"id": "w-paid-7d", "where": _did("pay", "7d")},
            {"id": "w-paid-30d", "where": _did("pay", "30d")},
            {"id": "w-paid-90d", "where": _did("pay", "90d")},
            {"id": "w-apparel-30d", "where": _did("pay", "30d", _field("category", "==", "apparel"))},
            {
                "id": "w-spent-50-90d",
                "where": {"sum": "amount", "of": {"event": "pay"}, "within": "90d", "op": ">=", "value": 50},
            },
        ),
        "5 segments over pay in 7d-90d windows (3 behaviour shapes), entered on a pay event",
    ),
)

# The definition estimated: tags or profile, region, and either of two behaviour histories.
ESTIMATE_WHERE: dict[str, Any] = {
    "all": [
        {"any": [{"tag": "vip"}, {"profile": "level", "op": "in", "value": ["gold", "platinum"]}]},
        {"profile": "region", "op": "in", "value": ["SH", "BJ", "GZ"]},
        {
            "any": [
                _did("pay", "30d", at_least=2),
                {"sum": "amount", "of": {"event": "pay"}, "within": "90d", "op": ">=", "value": 1500},
            ]
        },
    ]
}


def row_ids() -> list[str]:
    """Every row this benchmark reports, in order."""
    ids = [f"segments.{variant}.processed" for variant in ("off", "on")]
    ids += [
        f"cpu.segments.{variant}.{role}_us_per_event"
        for variant in ("off", "on")
        for role in ("serve", "redis", "total")
    ]
    ids.append("segments.cost_us_per_event")
    for case in MEMORY_CASES:
        ids += [f"segments.memory.{case.name}.per_membership", f"segments.memory.{case.name}.own"]
    ids += ["segments.estimate.default_limit", "segments.estimate.sampled"]
    return ids


async def _http(stack: BeaconStack, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One JSON request to `beacon serve`; a non-200 answer is a HarnessError."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{stack.base_url}{path}", json=body) as response,
    ):
        reply: dict[str, Any] = await response.json(content_type=None)
        if response.status != 200:
            raise HarnessError(f"{method} {path} answered {response.status}: {str(reply)[:300]}")
        return reply


async def push_segments(stack: BeaconStack, documents: Sequence[dict[str, Any]]) -> None:
    """PUT each segment (`PUT /v1/segments/{id}`)."""
    for document in documents:
        await _http(stack, "PUT", f"/v1/segments/{document['id']}", document)


async def _sizes(stack: BeaconStack) -> dict[str, int]:
    """Every segment's size now (`GET /v1/segments`)."""
    listed = await _http(stack, "GET", "/v1/segments")
    return {str(item["id"]): int(item["size"]) for item in listed["segments"]}


# -- maintenance CPU ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamRun:
    """One flat-out run: events, wall seconds to an empty backlog, CPU per event by role, what was left."""

    events: int
    seconds: float
    cost: dict[str, float]
    pending_timers: int
    sizes: dict[str, int]

    @property
    def rate(self) -> float:
        """Processed events per second, first send -> backlog empty."""
        return self.events / self.seconds


async def _stream_run(with_segments: bool, size: Size) -> StreamRun | None:
    """A fresh stack with the mix ruleset (and the 20 segments): the same seeded events flat out; None if
    the backlog does not drain in time."""
    async with beacon_stack() as stack:
        redis = stack.client()
        try:
            if with_segments:
                await push_segments(stack, LIVE_SEGMENTS)
            workload = Workload(size.users, prefix="s", seed=19)
            await ingest.load_profiles(redis, workload, stack.partitions)
            await ingest.warm_up(stack, redis, workload, min(1_000, size.segment_events), size.drain_timeout_s)
            events = workload.events(size.segment_events)
            roles = stack.pids_by_role()
            before = await cpu.sample(redis, roles)
            result = await load.blast_http(stack.base_url, events)
            drained = await load.wait_drained(redis, stack.partitions, size.drain_timeout_s)
            after = await cpu.sample(redis, roles)
            if drained is None:
                return None
            return StreamRun(
                result.accepted,
                drained - result.started,
                cpu.per_event_us(before, after, result.accepted),
                await cep_timers.pending_count(redis, stack.partitions),
                await _sizes(stack) if with_segments else {},
            )
        finally:
            await redis.aclose()


def _mean_cost(runs: Sequence[StreamRun]) -> dict[str, float]:
    return {role: statistics.fmean(run.cost[role] for run in runs) for role in runs[0].cost}


async def stream_rows(size: Size) -> list[Row]:
    """processed/s and CPU per event without and with the 20 segments, and the difference."""
    runs: dict[str, list[StreamRun]] = {"off": [], "on": []}
    failed = ""
    for round_ in range(size.segment_rounds):
        for variant in ("off", "on"):
            log.info("segment stream %s, round %d: %s events", variant, round_ + 1, f"{size.segment_events:,}")
            run = await _stream_run(variant == "on", size)
            if run is None:
                failed = f"a run ({variant}, round {round_ + 1}) did not drain within {size.drain_timeout_s:.0f}s"
                break
            runs[variant].append(run)
        if failed:
            break
    what = {
        "off": "mix stream, mix rules only (no segments)",
        "on": f"mix stream, mix + {len(LIVE_SEGMENTS)} live segments",
    }
    rows: list[Row] = []
    cpu_rows: list[Row] = []
    for variant in ("off", "on"):
        label = f"{what[variant]}: processed/s (flat out)"
        if failed:
            rows.append(skipped(f"segments.{variant}.processed", SECTION, label, failed))
            cpu_rows += [
                skipped(f"cpu.segments.{variant}.{role}_us_per_event", cpu.SECTION, f"{what[variant]}: {name}", failed)
                for role, name in cpu.ROLE_LABELS.items()
                if role != "workers"
            ]
            continue
        done = runs[variant]
        rates = ", ".join(f"{run.rate:,.0f}" for run in done)
        totals = ", ".join(f"{run.cost['total']:.1f}" for run in done)
        detail = (
            f"HTTP msgpack batches of 500, 8 in flight; {done[0].events:,} events per run, first send -> backlog "
            f"empty; mean of {len(done)} run(s), each on a fresh stack: {rates} events/s, total CPU {totals} µs/event; "
            f"timers pending at the end: {done[-1].pending_timers:,}"
        )
        if variant == "on":
            members = sorted(done[-1].sizes.items(), key=lambda kv: -kv[1])
            detail += "; members at the end: " + ", ".join(f"{sid} {count:,}" for sid, count in members)
        rows.append(
            Row(
                f"segments.{variant}.processed",
                SECTION,
                label,
                statistics.fmean(run.rate for run in done),
                "events/s",
                detail,
                {
                    "events": done[0].events,
                    "rates": [run.rate for run in done],
                    "totals_us": [run.cost["total"] for run in done],
                    "pending_timers": [run.pending_timers for run in done],
                    "sizes": done[-1].sizes,
                },
            )
        )
        window = f"first send -> backlog empty, mean of {len(done)} run(s)"
        cpu_rows += cpu.cpu_rows(f"cpu.segments.{variant}", what[variant], _mean_cost(done), done[0].events, window)
    label = f"{len(LIVE_SEGMENTS)} segments' CPU per event (on - off, serve + Redis)"
    if failed:
        return [*rows, *cpu_rows, skipped("segments.cost_us_per_event", SECTION, label, failed)]
    off, on = _mean_cost(runs["off"])["total"], _mean_cost(runs["on"])["total"]
    pairs = ", ".join(f"{b.cost['total'] - a.cost['total']:+.1f}" for a, b in zip(runs["off"], runs["on"], strict=True))
    cost_row = Row(
        "segments.cost_us_per_event",
        SECTION,
        label,
        on - off,
        "µs/event",
        f"total CPU per event with the {len(LIVE_SEGMENTS)} segments {on:.1f} - without {off:.1f}, same events "
        f"(per round: {pairs}; a difference of noisy figures: {100 * (on - off) / max(off, 1e-9):+.0f} %)",
    )
    return [*rows, *cpu_rows, cost_row]


# -- memory -------------------------------------------------------------------------------------------


async def _raw_records(redis: Redis, keys: Sequence[str]) -> list[bytes]:
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.get(key)
        return [bytes(raw or b"") for raw in await pipe.execute()]


async def _patch(redis: Redis, partitions: int, patches: Sequence[ProfilePatch]) -> None:
    """Append profile patches to the users' streams (what `PATCH /v1/users/{id}` appends), pipelined."""
    for start in range(0, len(patches), WRITE_BATCH):
        calls = []
        for patch in patches[start : start + WRITE_BATCH]:
            partition = partition_of(patch.user_id, partitions)
            keys = [events_key(partition), progress_key(partition)]
            calls.append(ScriptCall(APPEND_SCRIPT, keys, [PATCH_FIELD, encode_patch(patch), 1]))
        await run_scripts(redis, calls)


async def _drain(redis: Redis, partitions: int, items: int, size: Size) -> None:
    timeout = size.drain_timeout_s + items / 1_000
    if await load.wait_drained(redis, partitions, timeout) is None:
        raise RuntimeError(f"{items:,} events or patches not processed within {timeout:.0f}s")


async def _send(stack: BeaconStack, redis: Redis, events: list[dict[str, Any]], size: Size) -> None:
    for start in range(0, len(events), SEND_BATCH):
        await load.blast_http(stack.base_url, events[start : start + SEND_BATCH], batch=1000, concurrency=4)
    await _drain(redis, stack.partitions, len(events), size)


def _marks_bytes(raw: bytes) -> int:
    """Bytes of a stored record's segment marks (`m`) as msgpack packs them, less the record map's header."""
    if not raw:
        return 0
    marks = msgpack.unpackb(raw, raw=False, strict_map_key=False).get("m")
    return len(msgpack.packb({"m": marks}, use_bin_type=True)) - 1 if marks else 0


@dataclass(frozen=True, slots=True)
class MemoryMeasured:
    """One case: per-membership figures in bytes."""

    case: MemoryCase
    users: int
    memberships: int  # members summed over the case's segments (sizes), checked against users x segments
    timers_added: int
    per_membership: float  # used_memory delta minus streams / (users x segments)
    marks: float  # record growth per membership, less what the step added besides marks (packed)
    marks_packed: float  # the record's segment marks as packed, per membership
    set_entry: float  # member SETs' MEMORY USAGE per membership
    timer: float  # timer sets' MEMORY USAGE growth per membership
    sizes_hash: float  # the size HASHes' growth per membership
    other_record: float  # per user: record growth besides the marks (history, dedupe id), packed
    timer_member: str  # one timer member
    seconds: float

    @property
    def own(self) -> float:
        """The membership's own state: its marks in the record, its member SET entry, its timer."""
        return self.marks + self.set_entry + self.timer


async def _measure(stack: BeaconStack, redis: Redis, case: MemoryCase, size: Size) -> MemoryMeasured:
    """Users of the case become members of its segments; the memory that step added, per membership."""
    count, partitions, segments = size.segment_users, stack.partitions, len(case.segments)
    users = [f"{case.prefix}{index}" for index in range(count)]
    sample = users[:: max(1, count // SAMPLE_USERS)][:SAMPLE_USERS]
    records = [user_key_for(partitions, user, STATE) for user in sample]
    sets = [members_key(p, str(doc["id"])) for doc in case.segments for p in range(partitions)]
    size_hashes = [sizes_key(p) for p in range(partitions)]
    log.info("segment memory %s: %s users x %d segments", case.name, f"{count:,}", segments)

    if case.windowed:  # the history of the segments' shapes is kept from when they are stored
        await push_segments(stack, case.segments)
        logins = [{"user_id": u, "type": "login", "event_id": f"l-{u}", "attrs": {"channel": "app"}} for u in users]
        await _send(stack, redis, logins, size)
    else:  # the profile first, with no segment to enter
        profile = {"region": "SH", "level": "gold"}
        await _patch(redis, partitions, [ProfilePatch(user, dict(profile), ("vip", "member")) for user in users])
        await _drain(redis, partitions, count, size)
        await push_segments(stack, case.segments)

    baseline = await memory.state_bytes(redis, partitions)
    raw_before = await _raw_records(redis, records)
    records_before = sum(await memory.usages(redis, records))
    timers_before = await memory.timer_set_bytes(redis, partitions)
    pending_before = await cep_timers.pending_count(redis, partitions)
    sets_before = sum(await memory.usages(redis, sets))
    hashes_before = sum(await memory.usages(redis, size_hashes))

    started = time.monotonic()
    if case.windowed:
        pays = [
            {
                "user_id": user,
                "type": "pay",
                "event_id": f"p-{user}",
                "attrs": {"order_id": f"O-{user}", "sku": "K1", "amount": 99, "store": "S-01", "category": "apparel"},
            }
            for user in users
        ]
        await _send(stack, redis, pays, size)
    else:  # a patch with no change re-evaluates the segments that read the profile or tags
        await _patch(redis, partitions, [ProfilePatch(user, {}) for user in users])
        await _drain(redis, partitions, count, size)
    seconds = time.monotonic() - started

    after = await memory.state_bytes(redis, partitions)
    raw_after = await _raw_records(redis, records)
    records_after = sum(await memory.usages(redis, records))
    timers_after = await memory.timer_set_bytes(redis, partitions)
    timers_added = await cep_timers.pending_count(redis, partitions) - pending_before
    sets_after = sum(await memory.usages(redis, sets))
    hashes_after = sum(await memory.usages(redis, size_hashes))
    members = sum([await segment_size(redis, partitions, str(doc["id"])) for doc in case.segments])
    timer_member = ""
    if case.windowed:
        key = cep_timers.timers_key(partition_of(users[-1], partitions))
        async for member, _ in redis.zscan_iter(key, match=f"g\x1f{users[-1]}\x1f*", count=1_000):
            timer_member = member.decode() if isinstance(member, bytes) else str(member)
            break

    sampled = max(len(sample), 1)
    memberships = count * segments
    marks_packed = sum(_marks_bytes(raw) for raw in raw_after) / sampled
    # What the step added to the record besides the marks (the payment's history and dedupe id), packed.
    other = sum(len(b) - _marks_bytes(b) - len(a) for a, b in zip(raw_before, raw_after, strict=True)) / sampled
    return MemoryMeasured(
        case,
        count,
        members,
        timers_added,
        (after - baseline) / memberships,
        ((records_after - records_before) / sampled - other) / segments,
        marks_packed / segments,
        (sets_after - sets_before) / memberships,
        (timers_after - timers_before) / memberships,
        (hashes_after - hashes_before) / memberships,
        other,
        timer_member,
        seconds,
    )


def _memory_rows(found: MemoryMeasured) -> list[Row]:
    case = found.case
    segments = len(case.segments)
    expected = found.users * segments
    checked = "all members" if found.memberships == expected else f"only {found.memberships:,} of {expected:,} members"
    timer = (
        f", window timer {found.timer:.0f} ({found.timers_added:,} timers added; a member is "
        f"{len(found.timer_member)} B: {found.timer_member.replace(chr(0x1F), '|')})"
        if case.windowed
        else " (no window: no timer)"
    )
    other = (
        f"; the record also grew by {found.other_record:.0f} B packed per user for the payment's kept history "
        "(3 shapes) and its dedupe id, not counted as the membership's"
        if case.windowed
        else ""
    )
    breakdown = (
        f"per membership, MEMORY USAGE: record marks {found.marks:.0f} ({found.marks_packed:.0f} B packed), "
        f"member SET entry {found.set_entry:.0f}{timer}, size HASH {found.sizes_hash:.1f}"
    )
    extra = {
        "users": found.users,
        "segments": segments,
        "memberships": found.memberships,
        "timers_added": found.timers_added,
        "marks_bytes": found.marks,
        "marks_packed_bytes": found.marks_packed,
        "set_entry_bytes": found.set_entry,
        "timer_bytes": found.timer,
        "sizes_hash_bytes": found.sizes_hash,
        "other_record_bytes_per_user": found.other_record,
    }
    return [
        Row(
            f"segments.memory.{case.name}.per_membership",
            SECTION_MEMORY,
            f"bytes per (user, segment) membership, used_memory: {case.what}",
            found.per_membership,
            "bytes",
            f"trace off; used_memory delta minus streams over {found.users:,} users x {segments} segments "
            f"({found.seconds:.0f}s; {checked}); {breakdown}{other}",
            extra,
        ),
        Row(
            f"segments.memory.{case.name}.own",
            SECTION_MEMORY,
            f"bytes per membership, marks + SET entry{' + timer' if case.windowed else ''}: {case.name} segments",
            found.own,
            "bytes",
            f"{breakdown} ({min(found.users, SAMPLE_USERS):,} users' records sampled)",
            extra,
        ),
    ]


async def memory_rows(size: Size) -> list[Row]:
    """Both memory cases, one after the other on one stack with no ruleset and the trace off."""
    async with beacon_stack(with_ruleset=False, extra_env={"BEACON_TRACE_DEPTH": "0"}) as stack:
        redis = stack.client()
        try:
            measured = [await _measure(stack, redis, case, size) for case in MEMORY_CASES]
        finally:
            await redis.aclose()
    return [row for found in measured for row in _memory_rows(found)]


# -- estimate -----------------------------------------------------------------------------------------


def _offset_ms(rng: random.Random, boundaries: Sequence[int]) -> int:
    """How long ago an event was: up to 120 days, never within an hour of a window's edge (so that the
    server, evaluating a few seconds later, counts the same events as `truth`)."""
    while True:
        offset = rng.randrange(3_600_000, 120 * DAY_MS)
        if all(abs(offset - edge) > 3_600_000 for edge in boundaries):
            return offset


def population_state(rng: random.Random, user_id: str, now_ms: int, compiled: CompiledSegment) -> UserState:
    """One user's record: profile (90 %), tags, 0-6 payments kept in the definition's shapes, their dedupe ids."""
    state = UserState(last_seen=now_ms - rng.randrange(DAY_MS))
    if rng.random() < 0.9:
        state.profile = {"region": rng.choice(REGIONS), "level": rng.choice(LEVELS), "points": rng.randrange(5_000)}
    state.tags = {tag for tag, odds in (("vip", 0.3), ("member", 0.5)) if rng.random() < odds}
    payments = sorted(
        (now_ms - _offset_ms(rng, [30 * DAY_MS, 90 * DAY_MS]), rng.randrange(10, 1_500))
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 4, 6)))
    )
    for shape in compiled.shapes if payments else ():
        kept = [(ts, amount) for ts, amount in payments if ts >= now_ms - shape.window_ms]
        if not kept:
            continue
        items: list[Any] = [[ts, amount] for ts, amount in kept] if shape.sum_field else [ts for ts, _ in kept]
        watermark = kept[-1][0]
        state.patterns[shape.id] = PatternState(watermark, watermark + shape.window_ms, {"h": {"_": items}})
    for index, (ts, _) in enumerate(payments):
        state.seen[event_id_hash(f"{user_id}-p{index}")] = ts // 1000
    return state


async def load_population(
    redis: Redis, partitions: int, count: int, compiled: CompiledSegment, now_ms: int
) -> tuple[int, int]:
    """Write `count` records (`e<n>`) straight into Redis, pipelined; returns (members now, record bytes)."""
    rng = random.Random(23)
    members = stored = 0
    for start in range(0, count, WRITE_BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            for index in range(start, min(start + WRITE_BATCH, count)):
                user_id = f"e{index}"
                state = population_state(rng, user_id, now_ms, compiled)
                members += compiled.check(NO_ATTRS, state.profile, state.tags, history_of(state), now_ms)
                raw = encode_user_state(state)
                stored += len(raw)
                pipe.set(user_key(partition_of(user_id, partitions), user_id, STATE), raw)
            await pipe.execute()
    return members, stored


async def _timed_estimate(
    stack: BeaconStack, body: dict[str, Any], tries: int = 2
) -> tuple[float, list[float], dict[str, Any]]:
    """The best wall time (ms) of `tries` estimates, every wall time, and the last reply."""
    walls: list[float] = []
    reply: dict[str, Any] = {}
    for _ in range(tries):
        started = time.monotonic()
        reply = await _http(stack, "POST", "/v1/segments:estimate", body)
        walls.append((time.monotonic() - started) * 1000)
    return min(walls), walls, reply


def _estimate_row(
    row_id: str, label: str, timed: tuple[float, list[float], dict[str, Any]], truth: int, loaded: str
) -> Row:
    best, walls, reply = timed
    estimate, bound = int(reply["estimate"]), reply.get("error_bound")
    if reply["exact"]:
        how = (
            f"exact: {estimate:,} of {reply['population']:,} ({'= truth' if estimate == truth else f'truth {truth:,}'})"
        )
    else:
        inside = "inside" if bound is not None and abs(estimate - truth) <= int(bound) else "OUTSIDE"
        how = (
            f"sampled {reply['sampled']:,} of {reply['population']:,}: {estimate:,} ± {int(bound or 0):,} "
            f"(± {100 * int(bound or 0) / max(int(reply['population']), 1):.2f} % of the population); truth "
            f"{truth:,}, off by {estimate - truth:+,}: {inside} the bound"
        )
    walls_text = " / ".join(f"{wall:,.0f}" for wall in walls)
    return Row(
        row_id,
        SECTION_ESTIMATE,
        label,
        best,
        "ms",
        f"{how}; best of {len(walls)} calls ({walls_text} ms wall; server elapsed_ms {reply['elapsed_ms']:,} for "
        f"the last); {loaded}",
        {**reply, "truth": truth, "walls_ms": walls},
    )


async def estimate_rows(size: Size) -> list[Row]:
    """`POST /v1/segments:estimate` over `size.estimate_users` records: default limit, then a tenth."""
    count = size.estimate_users
    compiled = CompiledSegment.build(parse_segment({"id": "estimate", "where": ESTIMATE_WHERE}))
    limit = max(100, count // 10)
    async with beacon_stack(with_ruleset=False) as stack:
        redis = stack.client()
        try:
            log.info("segment estimate: loading %s records", f"{count:,}")
            started = time.monotonic()
            truth, stored = await load_population(redis, stack.partitions, count, compiled, int(time.time() * 1000))
            loaded_s = time.monotonic() - started
            body = {"where": ESTIMATE_WHERE}
            default = await _timed_estimate(stack, body)
            sampled = await _timed_estimate(stack, {**body, "exact_limit": limit})
        finally:
            await redis.aclose()
    loaded = (
        f"records written straight into Redis (encode_user_state, pipelined) in {loaded_s:.0f}s, "
        f"{stored / max(count, 1):.0f} B packed on average; {truth:,} members by the same condition evaluated here"
    )
    return [
        _estimate_row(
            "segments.estimate.default_limit",
            f"estimate over {count:,} records, default exact_limit",
            default,
            truth,
            loaded,
        ),
        _estimate_row(
            "segments.estimate.sampled",
            f"estimate over {count:,} records, exact_limit {limit:,}",
            sampled,
            truth,
            loaded,
        ),
    ]


# -- all ----------------------------------------------------------------------------------------------


async def segment_rows(size: Size) -> list[Row]:
    """Maintenance CPU, memory and estimate."""
    steps: list[Callable[[Size], Awaitable[list[Row]]]] = [stream_rows, memory_rows, estimate_rows]
    rows: list[Row] = []
    for step in steps:
        rows += await step(size)
    return rows
