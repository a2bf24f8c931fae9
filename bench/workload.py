"""Synthetic behaviour events and profiles for the benchmark mix (seeded, so every run sends the same)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

# (event type, weight): browsing dominates, purchases are rarer, as in a storefront's event log.
EVENT_MIX: tuple[tuple[str, int], ...] = (
    ("view", 40),
    ("add_to_cart", 14),
    ("pay", 9),
    ("search", 10),
    ("login", 10),
    ("share", 3),
    ("follow", 3),
    ("refund", 2),
    ("coupon_issued", 5),
    ("coupon_used", 4),
)
SKUS = 300
COUPONS = 50
ORDERS = 2_000
REGIONS = ("SH", "BJ", "GZ", "SZ", "CD")
LEVELS = ("silver", "gold", "platinum")


@dataclass
class Workload:
    """Generates events for `users` users named `<prefix><n>`, with unique event ids."""

    users: int
    prefix: str = "u"
    seed: int = 7
    _rng: random.Random = field(init=False, repr=False)
    _types: list[str] = field(init=False, repr=False)
    _weights: list[int] = field(init=False, repr=False)
    _count: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._types = [name for name, _ in EVENT_MIX]
        self._weights = [weight for _, weight in EVENT_MIX]

    def user(self, index: int) -> str:
        """The id of user number `index`."""
        return f"{self.prefix}{index}"

    def attrs(self, event_type: str) -> dict[str, Any]:
        """Attributes of an event of `event_type`, drawn from the workload's distributions."""
        rng = self._rng
        sku = f"K{rng.randrange(SKUS)}"
        if event_type in ("view", "add_to_cart"):
            price = rng.choice((29, 59, 99, 199, 399, 599, 1299, 2599))
            return {"sku": sku, "price": price, "category": rng.choice(("consumable", "apparel", "digital"))}
        if event_type == "pay":
            big = rng.random() < 0.15
            return {
                "sku": sku,
                "amount": rng.randrange(1000, 4000) if big else rng.randrange(10, 600),
                "store": rng.choice(("S-NEW-01", "S-NEW-02")) if rng.random() < 0.2 else f"S-{rng.randrange(40):02d}",
                "category": "consumable" if rng.random() < 0.3 else "apparel",
                "order_id": f"O{rng.randrange(ORDERS)}",
            }
        if event_type == "refund":
            return {"order_id": f"O{rng.randrange(ORDERS)}"}
        if event_type == "search":
            return {"query": rng.choice(("coupon today", "coupons", "shoes", "rice cooker", "tea"))}
        if event_type == "login":
            return {"channel": rng.choice(("app", "app", "miniprogram", "web"))}
        if event_type == "share":
            return {"sku": sku}
        if event_type in ("coupon_issued", "coupon_used"):
            return {"coupon_id": f"C{rng.randrange(COUPONS)}"}
        return {}

    def event(self, ts: int | None = None) -> dict[str, Any]:
        """One wire event (no `ts` means arrival time)."""
        self._count += 1
        event_type = self._rng.choices(self._types, self._weights)[0]
        event: dict[str, Any] = {
            "user_id": self.user(self._rng.randrange(self.users)),
            "type": event_type,
            "event_id": f"{self.prefix}e{self.seed}-{self._count}",
            "attrs": self.attrs(event_type),
        }
        if ts is not None:
            event["ts"] = ts
        return event

    def events(self, count: int) -> list[dict[str, Any]]:
        """`count` wire events at arrival time."""
        return [self.event() for _ in range(count)]

    def timed_log(self, count: int, start_ms: int, mean_gap_ms: float) -> list[dict[str, Any]]:
        """A recorded log: `count` events with increasing `ts` (exponential gaps) from `start_ms`."""
        ts = float(start_ms)
        log = []
        for _ in range(count):
            ts += self._rng.expovariate(1 / mean_gap_ms)
            log.append(self.event(int(ts)))
        return log

    def profiles(self, share: float = 0.2) -> dict[str, dict[str, Any]]:
        """Profiles (`attrs`, `tags`) for a `share` of the users; the rest have none."""
        rng = random.Random(self.seed + 1)
        profiles: dict[str, dict[str, Any]] = {}
        for index in range(self.users):
            if rng.random() >= share:
                continue
            tags = [tag for tag, odds in (("vip", 0.3), ("member", 0.5)) if rng.random() < odds]
            attrs = {"region": rng.choice(REGIONS), "level": rng.choice(LEVELS)}
            profiles[self.user(index)] = {"attrs": attrs, "tags": tags}
        return profiles


def coupon_events(prefix: str, start: int, count: int, ts_ms: int | list[int], seed: int = 0) -> list[dict[str, Any]]:
    """`coupon_issued` events for fresh users `<prefix><start..>`: each opens one pending absence."""
    events = []
    for offset in range(count):
        index = start + offset
        ts = ts_ms if isinstance(ts_ms, int) else ts_ms[offset]
        events.append(
            {
                "user_id": f"{prefix}{index}",
                "type": "coupon_issued",
                "event_id": f"{prefix}c{seed}-{index}",
                "ts": ts,
                "attrs": {"coupon_id": f"C{index % COUPONS}"},
            }
        )
    return events


# Stories of the journey stream: (name, weight). Each is a user's short flow through one library journey
# (rules/library/journeys); its later steps come after many other users' events (see JourneyWorkload).
STORIES: tuple[tuple[str, int], ...] = (("fan", 25), ("cart", 30), ("order", 30), ("store", 15))


@dataclass
class JourneyWorkload:
    """A seeded stream that enters users into the library journeys and moves them on, among mix events.

    A `background` share of events is the storefront mix (`Workload`, same users: its add-to-carts and
    payments enter journeys too). The rest are steps of per-user stories, `active` of them in progress at
    once, so a story's next step arrives after about `active` other events (other batches), not at once:
    - fan: `follow` (new-fan); then `menu_click` (60 %, then a `pay` 30 %) or `unfollow` (15 %), else waits;
    - cart: `add_to_cart` (cart-recovery, keyed on sku); a `pay` of that sku 40 %, else it waits;
    - order: `pay` (post-purchase, keyed on a fresh order id); `delivered` 90 % and then `signed` 80 %;
      `refund` 5 %;
    - store: `store_visit` (store-visit); a `pay` within the wait 40 %.
    Every `pay` also enters post-purchase. Events carry no `ts` (arrival time): no wait falls due.
    """

    users: int
    prefix: str = "j"
    seed: int = 13
    background: float = 0.3
    active: int = 2_000
    _rng: random.Random = field(init=False, repr=False)
    _mix: Workload = field(init=False, repr=False)
    _stories: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = field(init=False, repr=False, default_factory=list)
    _count: int = field(default=0, init=False)
    _orders: int = field(default=0, init=False)
    counts: dict[str, int] = field(init=False, default_factory=dict)  # events sent by type

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._mix = Workload(self.users, prefix=self.prefix, seed=self.seed + 1)

    def profiles(self, share: float = 0.2) -> dict[str, dict[str, Any]]:
        """The mix's profiles for the same users."""
        return self._mix.profiles(share)

    def _pay(self, sku: str | None = None) -> tuple[str, dict[str, Any]]:
        attrs = self._mix.attrs("pay")
        self._orders += 1
        attrs["order_id"] = f"J{self.seed}-{self._orders}"
        if sku is not None:
            attrs["sku"] = sku
        return ("pay", attrs)

    def _story(self) -> list[tuple[str, dict[str, Any]]]:
        """A new story's steps, first step first."""
        rng = self._rng
        kind = rng.choices([name for name, _ in STORIES], [weight for _, weight in STORIES])[0]
        if kind == "fan":
            steps: list[tuple[str, dict[str, Any]]] = [("follow", {"channel": "wechat"})]
            draw = rng.random()
            if draw < 0.6:
                steps.append(("menu_click", {"menu": rng.choice(("coupon", "shop", "member"))}))
                if rng.random() < 0.3:
                    steps.append(self._pay())
            elif draw < 0.75:
                steps.append(("unfollow", {}))
            return steps
        if kind == "cart":
            attrs = self._mix.attrs("add_to_cart")
            steps = [("add_to_cart", attrs)]
            if rng.random() < 0.4:
                steps.append(self._pay(attrs["sku"]))
            return steps
        if kind == "order":
            pay = self._pay()
            order = {"order_id": pay[1]["order_id"]}
            steps = [pay]
            if rng.random() < 0.05:
                steps.append(("refund", dict(order)))
            elif rng.random() < 0.9:
                steps.append(("delivered", dict(order)))
                if rng.random() < 0.8:
                    steps.append(("signed", dict(order)))
            return steps
        steps = [("store_visit", {"store": f"S-{rng.randrange(40):02d}"})]
        if rng.random() < 0.4:
            steps.append(self._pay())
        return steps

    def event(self) -> dict[str, Any]:
        """One wire event at arrival time."""
        rng = self._rng
        if rng.random() < self.background:
            event = self._mix.event()
        else:
            self._count += 1
            if len(self._stories) < self.active:
                user, steps = self._mix.user(rng.randrange(self.users)), self._story()
                event_type, attrs = steps.pop(0)
                if steps:
                    self._stories.append((user, steps))
            else:
                index = rng.randrange(len(self._stories))
                user, steps = self._stories[index]
                event_type, attrs = steps.pop(0)
                if not steps:  # the story is over: swap-remove it
                    self._stories[index] = self._stories[-1]
                    self._stories.pop()
            event = {
                "user_id": user,
                "type": event_type,
                "event_id": f"{self.prefix}j{self.seed}-{self._count}",
                "attrs": attrs,
            }
        self.counts[event["type"]] = self.counts.get(event["type"], 0) + 1
        return event

    def events(self, count: int) -> list[dict[str, Any]]:
        """`count` wire events at arrival time."""
        return [self.event() for _ in range(count)]
