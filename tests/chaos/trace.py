"""The chaos test's trace and what it must produce: the ruleset, a seeded event trace, and the expected
outcome from the reference evaluator (tests/scenarios/reference.py), which shares no code with the engine."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from rules.schema import parse_ruleset
from tests.scenarios.reference import Event as ReferenceEvent
from tests.scenarios.reference import Firing, Reference

USERS = 300
EPISODES_PER_USER = 25  # about 13k events in all
SEED = 20261130
EVENTS_PER_S = 1_000  # the producer's pace: the trace spans as much event time as it takes to send
SECOND = 1_000
HOUR = 3_600 * SECOND

RULESET: dict[str, Any] = {
    "id": "chaos",
    "rules": [
        {
            "id": "big-pay",
            "when": {"event": "pay", "where": {"field": "amount", "op": ">=", "value": 500}},
            "then": [{"action": "coupon", "coupon_id": "C-BIG", "params": {"amount": "{{event.amount}}"}}],
        },
        {
            # A tag (applied by the owner, no delivery) and a delayed action (through the timer set, in event time).
            "id": "vip",
            "when": {"event": "pay", "where": {"field": "amount", "op": ">=", "value": 900}},
            "then": [{"action": "tag", "add": ["vip"]}, {"action": "points", "amount": 10, "delay": "3s"}],
        },
        {"id": "member-on-signup", "when": {"event": "signup"}, "then": [{"action": "tag", "add": ["member"]}]},
        {
            # Chained: fires on the tag_added event the tag action emits, i.e. on a user's first signup only.
            "id": "member-welcome",
            "when": {"event": "tag_added", "where": {"field": "tag", "op": "==", "value": "member"}},
            "then": [{"action": "coupon", "coupon_id": "C-WELCOME", "params": {"cause": "{{event.cause_event_id}}"}}],
        },
        {"id": "first-visit", "when": {"first": {"event": "visit"}}, "then": [{"action": "points", "amount": 1}]},
        {
            "id": "funnel",
            "when": {
                "sequence": {
                    "first": {"event": "view"},
                    "then": {"event": "add_to_cart"},
                    "within": "3s",
                    "correlate": ["sku"],
                }
            },
            "then": [{"action": "coupon", "coupon_id": "C-FUNNEL", "params": {"sku": "{{event.sku}}"}}],
            "reentry": {"policy": "always"},
            "lateness": "5s",
        },
        {
            "id": "three-visits",
            "when": {"threshold": {"match": {"event": "visit"}, "count": 3, "window": "2s"}},
            "then": [{"action": "points", "amount": 5, "reason": "{{event.burst}}"}],
            "reentry": {"policy": "always"},
            "lateness": "5s",
        },
        {
            # Fires from the timer set ~7 s after each unpaid cart: mid-stream, while processes die.
            "id": "cart-left",
            "when": {
                "absence": {
                    "first": {"event": "open_cart"},
                    "missing": {"event": "checkout"},
                    "within": "2s",
                    "correlate": ["cart"],
                }
            },
            "then": [{"action": "coupon", "coupon_id": "C-CART", "params": {"cart": "{{event.cart}}"}}],
            "reentry": {"policy": "always"},
            "lateness": "5s",
        },
        {
            # Deadlines a day away: never fires here; its pending timers are compared instead.
            "id": "trial-unpaid",
            "when": {
                "absence": {
                    "first": {"event": "start_trial"},
                    "missing": {"event": "subscribe"},
                    "within": "10s",
                    "correlate": ["plan"],
                }
            },
            "then": [{"action": "coupon", "coupon_id": "C-TRIAL", "params": {"plan": "{{event.plan}}"}}],
            "reentry": {"policy": "always"},
            "lateness": "1d",
        },
    ],
}
EPISODES = ["funnel", "visits", "pay", "cart", "trial", "signup", "late", "noise"]
EPISODE_WEIGHTS = [4, 3, 4, 2, 2, 1, 1, 1]
# Actions per firing that go to the provider (a tag is applied by the owner itself).
POSTED_PER_RULE = {rule["id"]: sum(action["action"] != "tag" for action in rule["then"]) for rule in RULESET["rules"]}
CHAINED_RULE = "member-welcome"  # outside the reference (it models no tag events): expected by hand
TRIAL_RULE = "trial-unpaid"


def generate_events(t0: int, seed: int = SEED) -> list[dict[str, Any]]:
    """A deterministic trace over ~14 s of event time from `t0`, in the order the producer sends it.

    Each event has a send time and a `ts` (ms after `t0`, so the trace is the same whatever `t0`); they differ
    only where the trace wants an event sent before an older one (a checkout covering its cart, a cart added
    before its view, late views). Episodes of one user overlap in time, so windows mix events of several
    episodes: the reference decides what fires.
    """
    rng = random.Random(seed)
    span = USERS * EPISODES_PER_USER * 1.9 / EVENTS_PER_S * SECOND
    timed: list[tuple[float, float, dict[str, Any]]] = []  # (send at, tie-break, event without id)
    for u in range(USERS):
        user = f"u{u}"

        def add(kind: str, send_at: float, ts: float | None = None, user: str = user, **attrs: Any) -> None:
            ts_ms = t0 + math.floor(send_at if ts is None else ts)
            timed.append((send_at, rng.random(), {"user_id": user, "type": kind, "ts": ts_ms, "attrs": attrs}))

        for k in range(EPISODES_PER_USER):
            at = rng.uniform(0, span)
            episode = rng.choices(EPISODES, weights=EPISODE_WEIGHTS)[0]
            if episode == "funnel":
                sku, gap = f"{user}-f{k}", rng.uniform(100, 4_500)  # within 3 s, or not
                if rng.random() < 0.2:  # the cart first, its older view after it: out-of-order completion
                    add("add_to_cart", at, at + gap, sku=sku)
                    add("view", at + 50, at, sku=sku)
                else:
                    add("view", at, sku=sku)
                    add("add_to_cart", at + gap, sku=sku)
            elif episode == "visits":
                for _ in range(3):
                    add("visit", at + rng.uniform(0, 3_000), burst=f"{user}-v{k}")
            elif episode == "pay":
                add("pay", at, amount=rng.randrange(1, 1000))
            elif episode == "cart":
                cart, ending = f"{user}-c{k}", rng.choice(["abandoned", "covered", "paid-too-late"])
                # No checkout is ever sent after its cart within the window: whether a cart fires does not
                # depend on when the server's clock passes its deadline.
                if ending == "covered":
                    add("checkout", at - 50, at + rng.uniform(0, 2_000), cart=cart)
                add("open_cart", at, cart=cart)
                if ending == "paid-too-late":
                    add("checkout", at + rng.uniform(2_300, 5_000), cart=cart)
            elif episode == "trial":
                plan, ending = f"{user}-t{k}", rng.choice(["cancelled", "covered", "unpaid", "paid-late"])
                if ending == "covered":
                    add("subscribe", at - 50, at + rng.uniform(0, 10_000), plan=plan)
                add("start_trial", at, plan=plan)
                if ending == "cancelled":
                    add("subscribe", at + rng.uniform(200, 9_800), plan=plan)
                elif ending == "paid-late":
                    add("subscribe", at + rng.uniform(10_300, 14_000), plan=plan)
            elif episode == "signup":
                add("signup", at)
            elif episode == "late":
                # Older than the funnel's lateness allows once the user's watermark has moved on.
                add("view", at, at - 20_000, sku=f"{user}-l{k}")
                add("add_to_cart", at + 10, at - 19_000, sku=f"{user}-l{k}")
            else:
                add(rng.choice(["other", "checkout", "subscribe"]), at, sku="nothing")
    timed.sort(key=lambda item: (item[0], item[1]))
    events = []
    for index, (_, _, event) in enumerate(timed):
        events.append({"event_id": f"e{index}", **event})
    return events


@dataclass
class Expected:
    """What the trace must leave: firings as (rule, user, trigger), tags per user, pending trial deadlines."""

    firings: frozenset[Firing]
    tags: dict[str, set[str]]
    trial_pending: frozenset[tuple[str, str]]  # (user, start_trial event id)
    actions_per_rule: dict[str, int]
    late: frozenset[tuple[str, str]]  # (rule, event id): not counted, by the reference's reading


def reference_run(events: list[dict[str, Any]], t0: int, *, eager_clock: bool) -> Reference:
    """The reference over the trace in send order, then every deadline before `t0 + 1 h` passed.

    `eager_clock`: before each event, every such deadline passes (a server clock far ahead of processing,
    the opposite extreme of the reference's "frozen" model, where none passes until the end).
    """
    document = {**RULESET, "rules": [rule for rule in RULESET["rules"] if rule["id"] != CHAINED_RULE]}
    reference = Reference(parse_ruleset(document), clock="frozen")
    for event in events:
        if eager_clock:
            reference.fire_timers(up_to=t0 + HOUR)
        reference.arrive(ReferenceEvent.from_wire(event))
    return reference


def expected_outcome(events: list[dict[str, Any]], t0: int) -> Expected:
    """The reference evaluator over the trace in send order (= each user's stream order), and the chained rule."""
    reference = reference_run(events, t0, eager_clock=False)
    trial_pending = frozenset(
        (user, a_id)
        for (rule_id, user), history in reference.histories.items()
        if rule_id == TRIAL_RULE
        for a_id in history.pending
    )
    # The servers' clocks pass every cart deadline (ts + 7 s) during the test and no trial deadline (a day).
    reference.fire_timers(up_to=t0 + HOUR)
    eager = reference_run(events, t0, eager_clock=True)
    eager.fire_timers(up_to=t0 + HOUR)
    # The design's premise, checked: a live server passes deadlines whenever its clock says, between these
    # two extremes, and the trace must not let that choose the outcome (no cart is followed by its checkout).
    assert reference.firings == eager.firings, "the trace's outcome depends on when deadlines pass"
    firings = set(reference.firings)
    tags: dict[str, set[str]] = defaultdict(set)
    for event in events:
        user = event["user_id"]
        if event["type"] == "signup" and "member" not in tags[user]:
            # The first signup adds the tag; its tag_added event (deterministic id) fires the welcome.
            tags[user].add("member")
            firings.add((CHAINED_RULE, user, f"tag_added:member:{event['event_id']}"))
        if event["type"] == "pay" and event["attrs"]["amount"] >= 900:
            tags[user].add("vip")
    return Expected(
        frozenset(firings),
        {user: tags.get(user, set()) for user in {event["user_id"] for event in events}},
        trial_pending,
        {rule["id"]: len(rule["then"]) for rule in RULESET["rules"]},
        frozenset(reference.late),
    )
