"""A cart-recovery event trace whose firings, late events, duplicates and timers are known by construction.

The rule (rules/library/cart-recovery.json): add_to_cart and no pay of the same sku within 30 min fires
once the deadline (30 min + 2 s lateness) passes, at most once a day per user. Users come in groups
of `per_group`, each group with one behaviour, starting at seeded random minutes from T0 (23:00 UTC,
so the trace crosses midnight); the events arrive in `ts` order except where a group says otherwise.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

T0 = 1_767_308_400_000  # 2026-01-01 23:00:00 UTC
MINUTE = 60_000
DAY = 86_400_000
DEADLINE = 30 * MINUTE + 2_000  # `within` plus the default lateness
RULE = "cart-recovery/cart-no-pay-30m"


@dataclass
class CartTrace:
    """The events (arrival order) and what the rule must do with them."""

    events: list[dict[str, Any]] = field(default_factory=list)
    firing_at: dict[str, int] = field(default_factory=dict)  # user -> when the rule fires for them
    users: set[str] = field(default_factory=set)
    duplicates: int = 0
    late: int = 0
    timers_fired: int = 0

    def events_by_day(self) -> dict[str, int]:
        """Events per UTC day of their ts, as ISO dates."""
        return _by_day(event["ts"] for event in self.events)

    def firings_by_day(self) -> dict[str, int]:
        """Firings per UTC day of their firing time, as ISO dates."""
        return _by_day(self.firing_at.values())


def _by_day(stamps: Iterable[int]) -> dict[str, int]:
    counts = Counter(datetime.fromtimestamp(ts // DAY * DAY / 1000, UTC).date().isoformat() for ts in stamps)
    return dict(sorted(counts.items()))


def cart_trace(per_group: int = 25, seed: int = 11) -> CartTrace:
    """Six groups of users: abandon, pay (with a re-sent cart), other sku, pay too late, twice, late pay."""
    rng = random.Random(seed)
    trace = CartTrace()
    arrivals: list[tuple[int, int, dict[str, Any]]] = []  # (arrival key, tie-breaker, event)

    def send(user: str, kind: str, ts: int, sku: str, number: int, arrival: int | None = None) -> dict[str, Any]:
        event = {"user_id": user, "type": kind, "ts": ts, "event_id": f"{user}-{number}", "attrs": {"sku": sku}}
        arrivals.append((ts if arrival is None else arrival, len(arrivals), event))
        trace.users.add(user)
        return event

    for index in range(per_group):
        start = T0 + rng.randrange(120) * MINUTE
        # Carted and never paid: fires at the deadline.
        send(f"abandon{index}", "add_to_cart", start, "S1", 1)
        trace.firing_at[f"abandon{index}"] = start + DEADLINE
        trace.timers_fired += 1
        # Paid in time: no firing; the cart is sent again a minute later, same id: one duplicate.
        start = T0 + rng.randrange(120) * MINUTE
        cart = send(f"paid{index}", "add_to_cart", start, "S1", 1)
        arrivals.append((start + MINUTE, len(arrivals), dict(cart)))
        send(f"paid{index}", "pay", start + rng.randrange(5, 29) * MINUTE, "S1", 2)
        trace.duplicates += 1
        # Paid for another sku: the cart of S1 is still abandoned.
        start = T0 + rng.randrange(120) * MINUTE
        send(f"other{index}", "add_to_cart", start, "S1", 1)
        send(f"other{index}", "pay", start + 5 * MINUTE, "S2", 2)
        trace.firing_at[f"other{index}"] = start + DEADLINE
        trace.timers_fired += 1
        # Paid after 40 minutes: too late, the reminder went at the deadline.
        start = T0 + rng.randrange(120) * MINUTE
        send(f"slow{index}", "add_to_cart", start, "S1", 1)
        send(f"slow{index}", "pay", start + 40 * MINUTE, "S1", 2)
        trace.firing_at[f"slow{index}"] = start + DEADLINE
        trace.timers_fired += 1
        # Two abandoned carts an hour apart: both deadlines pass, re-entry (once a day) lets one fire.
        start = T0 + rng.randrange(120) * MINUTE
        send(f"twice{index}", "add_to_cart", start, "S1", 1)
        send(f"twice{index}", "add_to_cart", start + 60 * MINUTE, "S2", 2)
        trace.firing_at[f"twice{index}"] = start + DEADLINE
        trace.timers_fired += 2
        # A pay stamped 50 minutes before the cart, arriving after it: late, ignored; the cart fires.
        start = T0 + rng.randrange(120) * MINUTE
        send(f"late{index}", "add_to_cart", start + 60 * MINUTE, "S1", 1)
        send(f"late{index}", "pay", start + 10 * MINUTE, "S1", 2, arrival=start + 60 * MINUTE + 1)
        trace.firing_at[f"late{index}"] = start + 60 * MINUTE + DEADLINE
        trace.timers_fired += 1
        trace.late += 1
    trace.events = [event for _, _, event in sorted(arrivals, key=lambda item: (item[0], item[1]))]
    return trace
