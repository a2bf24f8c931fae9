"""The live server and its dry-run agree with a brute-force reference of docs/semantics.md on random traces."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from beacon import metrics
from cep import streams, timers
from tests.harness import Beacon, eventually
from tests.scenarios import reference
from tests.scenarios.conftest import Live
from tests.scenarios.reference import Firing, Outcome

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
PARTITIONS = 2
LEDGER_LIMIT = 1000  # the most GET /v1/actions returns in one page
EXAMPLE_IDS = itertools.count()


# -- the server under test ---------------------------------------------------------------------------


async def idle(redis: aioredis.Redis) -> None:
    """Wait until the workers have acknowledged every stream entry."""
    lag = await eventually(lambda: streams.backlog(redis, PARTITIONS), lambda lag: lag == 0, timeout_s=15)
    assert lag == 0, f"{lag} stream entries still unprocessed"


async def timers_swept(redis: aioredis.Redis) -> None:
    """Wait until every timer set is empty (claimed into the streams), then until those entries are processed."""

    async def waiting() -> int:
        return sum([await redis.zcard(timers.timers_key(partition)) for partition in range(PARTITIONS)])

    left = await eventually(waiting, lambda count: count == 0, timeout_s=15)
    assert left == 0, f"{left} timers never swept"
    await idle(redis)


def trigger_of(trigger_id: str) -> str:
    """The reference's trigger for a server trigger id: `due:<state>:<A id>` becomes the A event's id."""
    return trigger_id.split(":", 2)[2] if trigger_id.startswith("due:") else trigger_id


async def live_outcome(
    live: Live, document: dict[str, Any], events: list[dict[str, Any]]
) -> tuple[frozenset[Firing], dict[str, int]]:
    """PUT the ruleset, POST the events in one batch, pass every deadline; returns the firings in the ledger
    and the late events per rule counted by `beacon_events_late_total` (late events are not listed live)."""
    beacon, redis = live.beacon, live.redis
    await beacon.put_ruleset(document)
    status, body = await beacon.post_events(events)
    assert status == 200 and body["errors"] == [], body
    await idle(redis)
    live.clock.set(max(event["ts"] for event in events) + 10 * MINUTE)  # past ts_A + 3m + 20s for every A
    await timers_swept(redis)

    firings: set[Firing] = set()
    for user_id in sorted({event["user_id"] for event in events}):
        status, body = await beacon.call("GET", "/v1/actions", params={"user_id": user_id, "limit": LEDGER_LIMIT})
        assert status == 200, body
        assert len(body["actions"]) < LEDGER_LIMIT, "ledger page full: the comparison would miss firings"
        firings |= {
            (action["rule_id"], action["user_id"], trigger_of(action["trigger_id"]))
            for action in body["actions"]
            if action["ruleset_id"] == document["id"]
        }
    late_counts = {}
    for rule in document["rules"]:
        labels = {"ruleset": document["id"], "rule": rule["id"]}
        count = int(metrics.REGISTRY.get_sample_value("beacon_events_late_total", labels) or 0)
        if count:
            late_counts[rule["id"]] = count
    return frozenset(firings), late_counts


async def dry_run_outcome(beacon: Beacon, ruleset_id: str, events: list[dict[str, Any]]) -> Outcome:
    """The stored ruleset dry-run on the same events."""
    status, body = await beacon.call("POST", f"/v1/rulesets/{ruleset_id}:dry-run", json={"events": events})
    assert status == 200, body
    assert body["pending_timers"] == [], body["pending_timers"]
    firings = {(f["rule_id"], f["user_id"], trigger_of(f["trigger_event_id"])) for f in body["firings"]}
    late = {(item["rule_id"], item["event_id"]) for item in body["late"]}
    return Outcome(frozenset(firings), frozenset(late))


def counted(late: frozenset[tuple[str, str]]) -> dict[str, int]:
    """Late events per rule."""
    counts: dict[str, int] = {}
    for rule_id, _ in late:
        counts[rule_id] = counts.get(rule_id, 0) + 1
    return counts


def difference(what: str, expected: frozenset[Any], actual: frozenset[Any]) -> str:
    """A readable set difference for assertion messages."""
    return f"{what}: missing {sorted(expected - actual)}, unexpected {sorted(actual - expected)}"


async def check_against_reference(live: Live, document: dict[str, Any], events: list[dict[str, Any]]) -> Outcome:
    """Run one trace live and as a dry-run; both must equal the reference. Returns the live reference."""
    frozen = reference.evaluate(document, events, clock="frozen")
    following = reference.evaluate(document, events, clock="event_time")
    trace = " trace: " + json.dumps({"ruleset": document, "events": events})
    try:
        firings, late_counts = await live_outcome(live, document, events)
        assert firings == frozen.firings, difference("live firings", frozen.firings, firings) + trace
        assert late_counts == counted(frozen.late), f"live late counts {late_counts} != {counted(frozen.late)}{trace}"
        dry = await dry_run_outcome(live.beacon, document["id"], events)
        assert dry.firings == following.firings, difference("dry-run firings", following.firings, dry.firings) + trace
        assert dry.late == following.late, difference("dry-run late", following.late, dry.late) + trace
    finally:
        await live.beacon.call("DELETE", f"/v1/rulesets/{document['id']}")
    return frozen


# -- generated rulesets ------------------------------------------------------------------------------

LONG_LIST = [f"x{n}" for n in range(20)]
WHERE_CLAUSES: list[dict[str, Any] | None] = [
    None,
    None,
    None,
    {"field": "sku", "op": "==", "value": "A"},
    {"field": "sku", "op": "!=", "value": "A"},
    {"field": "sku", "op": "in", "value": ["A", 3]},
    {"field": "sku", "op": "not_in", "value": ["B"]},
    {"field": "sku", "op": "contains", "value": "A"},
    {"field": "sku", "op": "prefix", "value": "3"},
    {"field": "sku", "op": "exists"},
    {"field": "amount", "op": ">=", "value": 2},
    {"field": "amount", "op": "<", "value": 2.5},
    {"field": "amount", "op": "==", "value": 1},
    {"field": "amount", "op": "!=", "value": "2"},
    {"not": {"field": "sku", "op": "==", "value": "B"}},
    {"any": [{"field": "amount", "op": ">", "value": 2}, {"field": "sku", "op": "==", "value": 3}]},
    {"all": [{"field": "amount", "op": "exists"}, {"not": {"field": "amount", "op": "<=", "value": 0.5}}]},
    {"not": {"field": "sku", "op": "in", "value": ["A", 3]}},
    {"not": {"field": "amount", "op": "not_in", "value": [1, "2"]}},
    {"not": {"any": [{"field": "sku", "op": "==", "value": "A"}, {"field": "amount", "op": "<", "value": 1}]}},
    {"field": "sku", "op": "in", "value": [*LONG_LIST, "B"]},  # long lists take another code path
    {"field": "sku", "op": "not_in", "value": [*LONG_LIST, 3]},
    {"field": "labels", "op": "contains", "value": "A"},
    {"field": "labels", "op": "contains", "value": 3},
]
CONDITIONS: list[dict[str, Any] | None] = [
    None,
    None,
    None,
    {"field": "amount", "op": ">=", "value": 1},
    {"not": {"profile": "region", "op": "==", "value": "SH"}},  # empty profile: holds
    {"profile": "region", "op": "!=", "value": "SH"},  # missing attribute: never holds
    {"any": [{"tag": "vip"}, {"field": "sku", "op": "exists"}]},
]
WITHINS = ["30s", "45s", "1m", "2m", "3m"]
LATENESSES = [None, "5s", "20s"]  # None: the server default, 2 s
PERIODS = ["20s", "1m", "5m"]
POLICIES = ["default", "always", "once", "once_per"]
TYPES = ["a", "b", "c"]
ACTION_LISTS = [
    [{"action": "points", "amount": 1}],
    [{"action": "points", "amount": 1}, {"action": "coupon", "coupon_id": "C-1"}],  # one firing, two records
]


@st.composite
def matchers(draw: st.DrawFn, event_type: str | None = None) -> dict[str, Any]:
    """An event matcher on `event_type` (or a drawn type) with an optional `where`."""
    matcher: dict[str, Any] = {"event": event_type or draw(st.sampled_from(TYPES))}
    where = draw(st.sampled_from(WHERE_CLAUSES))
    if where is not None:
        matcher["where"] = where
    return matcher


@st.composite
def patterns(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A `when` of one kind with drawn windows and matchers."""
    within = draw(st.sampled_from(WITHINS))
    if kind == "single":
        return draw(matchers())
    if kind == "first":
        return {"first": draw(matchers())}
    if kind == "sequence-bare":  # no `where`: out-of-order completions are frequent
        return {"sequence": {"first": {"event": "a"}, "then": {"event": "b"}, "within": within}}
    if kind == "count-bare":
        return {"threshold": {"match": {"event": "c"}, "count": draw(st.integers(2, 3)), "window": within}}
    if kind in ("sequence", "sequence-sku"):
        body = {"first": draw(matchers("a")), "then": draw(matchers("b")), "within": within}
        return {"sequence": body | ({"correlate": ["sku"]} if kind == "sequence-sku" else {})}
    if kind == "sequence-self":  # one event may be both A and B: a != e must hold
        first = {"event": "a", "where": {"field": "amount", "op": ">=", "value": 2}}
        return {"sequence": {"first": first, "then": draw(matchers("a")), "within": within}}
    if kind in ("absence", "absence-sku"):
        body = {"first": draw(matchers("a")), "missing": draw(matchers("b")), "within": within}
        return {"absence": body | ({"correlate": ["sku"]} if kind == "absence-sku" else {})}
    if kind == "count":
        count = draw(st.integers(2, 3))
        return {
            "threshold": {"match": draw(matchers(draw(st.sampled_from(["a", "c"])))), "count": count, "window": within}
        }
    assert kind == "sum"
    at_least = draw(st.sampled_from([2, 3, 4.5]))
    return {
        "threshold": {
            "match": draw(matchers(draw(st.sampled_from(["a", "c"])))),
            "sum": "amount",
            "at_least": at_least,
            "window": within,
        }
    }


KINDS = [
    "single",
    "first",
    "sequence",
    "sequence-bare",
    "sequence-sku",
    "sequence-self",
    "absence",
    "absence-sku",
    "count",
    "count-bare",
    "sum",
]


@st.composite
def rulesets(draw: st.DrawFn) -> dict[str, Any]:
    """Every pattern kind under every re-entry policy (and the default), with drawn parameters."""
    rules = []
    for kind in KINDS:
        for policy in POLICIES:
            rule: dict[str, Any] = {
                "id": f"{kind}-{policy}",
                "when": draw(patterns(kind)),
                "then": draw(st.sampled_from(ACTION_LISTS)),
            }
            if policy == "once_per":
                rule["reentry"] = {"policy": policy, "period": draw(st.sampled_from(PERIODS))}
            elif policy != "default":
                rule["reentry"] = {"policy": policy}
            lateness = draw(st.sampled_from(LATENESSES))
            if lateness is not None:
                rule["lateness"] = lateness
            condition = draw(st.sampled_from(CONDITIONS))
            if condition is not None:
                rule["if"] = condition
            rules.append(rule)
    return {"rules": rules}


# -- generated traces --------------------------------------------------------------------------------

MISSING = object()
SKUS = [MISSING, "A", "A", "B", "B", "3", 3, 3.0]
AMOUNTS = [MISSING, 0, 1, 2, 3, 1.0, 0.5, 2.5, "2", True, None]
LABELS = [MISSING, MISSING, ["A", "B"], [3.0, "x"], "A", []]


@dataclass(frozen=True)
class TraceEvent:
    """One arrival relative to the example: user number, type, seconds after the base, attributes."""

    user: int
    type: str
    offset_s: int
    sku: Any
    amount: Any
    labels: Any
    event_number: int


@st.composite
def traces(draw: st.DrawFn) -> list[TraceEvent]:
    """Arrivals whose ts drifts forward with random jitter and swapped neighbours (so some arrive out of order,
    some late), on a grid of 1, 5 or 10 s (coarse grids hit window and period boundaries exactly), with unique
    ts per user and a few re-sent duplicates."""
    users = draw(st.integers(1, 3))
    count = draw(st.integers(1, 24))
    drift = draw(st.sampled_from([0, 3, 10]))  # seconds of ts per arrival
    jitter = draw(st.sampled_from([0, 5, 20, 40]))  # seconds either side: 0 is in order, 40 is mostly late
    grid = draw(st.sampled_from([1, 5, 10]))
    taken: set[tuple[int, int]] = set()
    arrivals: list[TraceEvent] = []
    for number in range(count):
        user = draw(st.integers(0, users - 1))
        offset = max(0, number * drift + draw(st.integers(-jitter, jitter))) // grid * grid
        while (user, offset) in taken:  # equal ts would make the order of equal deadlines matter
            offset += grid
        taken.add((user, offset))
        arrivals.append(
            TraceEvent(
                user,
                draw(st.sampled_from(TYPES)),
                offset,
                draw(st.sampled_from(SKUS)),
                draw(st.sampled_from(AMOUNTS)),
                draw(st.sampled_from(LABELS)),
                number,
            )
        )
    if count > 1:
        for swap in draw(st.lists(st.integers(0, count - 2), max_size=count // 2)):
            arrivals[swap], arrivals[swap + 1] = arrivals[swap + 1], arrivals[swap]  # a little, on-time disorder
    for source, position in draw(st.lists(st.tuples(st.integers(0, count - 1), st.integers(0, count)), max_size=3)):
        original = next(event for event in arrivals if event.event_number == source)
        later = max(position, arrivals.index(original) + 1)
        arrivals.insert(later, original)  # the same event_id re-sent
    return arrivals


def wire_events(trace: list[TraceEvent], prefix: str, base_ms: int) -> list[dict[str, Any]]:
    """The trace as API events for fresh users `<prefix>-u<n>`."""
    events = []
    for item in trace:
        named = (("sku", item.sku), ("amount", item.amount), ("labels", item.labels))
        attrs = {name: value for name, value in named if value is not MISSING}
        events.append(
            {
                "user_id": f"{prefix}-u{item.user}",
                "type": item.type,
                "ts": base_ms + item.offset_s * SECOND,
                "event_id": f"e{item.event_number}",
                "attrs": attrs,
            }
        )
    return events


@settings(
    max_examples=25,
    deadline=None,
    # No shrinking: a 44-rule ruleset shrinks for minutes, past the per-test timeout, which would hide the
    # failure; the assertion message carries the differing firings and the whole trace instead.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(document=rulesets(), trace=traces())
async def test_server_and_dry_run_match_the_reference(
    live: Live, document: dict[str, Any], trace: list[TraceEvent]
) -> None:
    """Random traces over every pattern kind and re-entry policy: ledger, late counts and dry-run as the reference."""
    example = next(EXAMPLE_IDS)
    document = {"id": f"ref-{example}", **document}
    base = live.clock.now_ms() + HOUR  # every deadline of this example lies ahead of the server clock
    await check_against_reference(live, document, wire_events(trace, f"p{example}", base))


# -- the trickiest semantics, by example -------------------------------------------------------------


def one_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A ruleset holding one rule (points action), with a fresh id."""
    return {"id": f"ex-{next(EXAMPLE_IDS)}", "rules": [{"then": [{"action": "points", "amount": 1}], **rule}]}


def at(live: Live, user: str, event_id: str, kind: str, seconds: float, **attrs: Any) -> dict[str, Any]:
    """An event `seconds` after a base one hour ahead of the server clock."""
    base = (live.clock.now_ms() // HOUR + 2) * HOUR
    return {"user_id": user, "type": kind, "ts": base + int(seconds * SECOND), "event_id": event_id, "attrs": attrs}


async def expect(
    live: Live,
    rule: dict[str, Any],
    events: list[dict[str, Any]],
    firings: set[Firing],
    late: set[tuple[str, str]] | None = None,
) -> None:
    """The hand-worked answer, the reference, the live server and the dry-run all agree."""
    document = one_rule(rule)
    expected = reference.evaluate(document, events)
    assert expected.firings == firings, "the reference disagrees with the hand-worked answer"
    if late is not None:
        assert expected.late == late, "the reference disagrees with the hand-worked late events"
    await check_against_reference(live, document, events)


async def test_b_before_a_out_of_order_completes_a_sequence(live: Live) -> None:
    """B (ts 20s) arrives before A (ts 10s): A completes the sequence on arrival, trigger A."""
    rule = {
        "id": "seq",
        "when": {"sequence": {"first": {"event": "a"}, "then": {"event": "b"}, "within": "1m"}},
        "lateness": "20s",
    }
    events = [at(live, "oo-1", "b1", "b", 20), at(live, "oo-1", "a1", "a", 10)]
    await expect(live, rule, events, {("seq", "oo-1", "a1")}, late=set())


async def test_b_within_lateness_after_the_window_cancels_an_absence(live: Live) -> None:
    """A2 (70s) moves the watermark past A1's window (0s..60s); B at 55s is still on time and cancels A1."""
    rule = {
        "id": "abs",
        "when": {"absence": {"first": {"event": "a"}, "missing": {"event": "b"}, "within": "1m"}},
        "lateness": "20s",
        "reentry": {"policy": "always"},
    }
    events = [at(live, "ab-1", "a1", "a", 0), at(live, "ab-1", "a2", "a", 70), at(live, "ab-1", "b1", "b", 55)]
    await expect(live, rule, events, {("abs", "ab-1", "a2")}, late=set())


async def test_an_event_older_than_watermark_minus_lateness_is_late_and_changes_nothing(live: Live) -> None:
    """B at 30s after the watermark reached 100s (lateness 5s) is late: it would have completed A at 0s."""
    rule = {
        "id": "seq",
        "when": {"sequence": {"first": {"event": "a"}, "then": {"event": "b"}, "within": "1m"}},
        "lateness": "5s",
    }
    events = [at(live, "late-1", "a1", "a", 0), at(live, "late-1", "b1", "b", 100), at(live, "late-1", "b2", "b", 30)]
    await expect(live, rule, events, set(), late={("seq", "b2")})


async def test_threshold_out_of_order_within_lateness_fires_on_the_late_arrival(live: Live) -> None:
    """Counts at 0s and 50s, then 40s (on time, lateness 20s): the window [-10s, 50s] holds 3, trigger 40s."""
    rule = {
        "id": "thr",
        "when": {"threshold": {"match": {"event": "c"}, "count": 3, "window": "1m"}},
        "lateness": "20s",
    }
    events = [at(live, "thr-1", "c1", "c", 0), at(live, "thr-1", "c2", "c", 50), at(live, "thr-1", "c3", "c", 40)]
    await expect(live, rule, events, {("thr", "thr-1", "c3")}, late=set())


async def test_once_per_blocks_inside_the_period_and_admits_after(live: Live) -> None:
    """once_per 1m: 0s fires, 30s is blocked, 60s (exactly last + period) fires again."""
    rule = {"id": "one", "when": {"event": "a"}, "reentry": {"policy": "once_per", "period": "1m"}}
    events = [at(live, "op-1", "a1", "a", 0), at(live, "op-1", "a2", "a", 30), at(live, "op-1", "a3", "a", 60)]
    await expect(live, rule, events, {("one", "op-1", "a1"), ("one", "op-1", "a3")}, late=set())


async def test_the_dry_run_clock_follows_event_time_so_a_later_b_comes_too_late(live: Live) -> None:
    """Another user's event at 200s passes A's deadline (80s) in the dry-run, not on the frozen live clock."""
    rule = {
        "id": "abs",
        "when": {"absence": {"first": {"event": "a"}, "missing": {"event": "b"}, "within": "1m"}},
        "lateness": "20s",
    }
    events = [at(live, "ck-1", "a1", "a", 0), at(live, "ck-2", "x1", "c", 200), at(live, "ck-1", "b1", "b", 30)]
    document = one_rule(rule)
    assert reference.evaluate(document, events, clock="frozen").firings == set()  # b1 cancels a1 live
    assert reference.evaluate(document, events, clock="event_time").firings == {("abs", "ck-1", "a1")}
    await check_against_reference(live, document, events)
