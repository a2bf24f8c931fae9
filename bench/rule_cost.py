"""`python -m bench.rule_cost`: CPU per event as a function of how many rules match it, end to end.

For each count N, a fresh Valkey and `beacon serve` get a ruleset of N single-predicate rules that
all match every `pay` event (each with one `points` action rendering `{{event.amount}}`), plus rules
that match none, so every ruleset has the same size; a burst of `pay` events is sent flat out over
HTTP and the CPU of `beacon serve` and Redis is counted until the backlog is empty (bench/cpu.py).
The slope of total CPU per event over N is the cost of one matching rule (predicate, firing, action
record, ledger and outbox writes); the intercept is the cost of an event that matches nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from typing import Any

from bench import cpu, load
from bench.harness import beacon_stack

RULES = 41  # rules per ruleset: N match every event, the rest match no event
WARM_UP = 1_000


def ruleset(matching: int) -> dict[str, Any]:
    """N rules matching every `pay`, RULES - N matching nothing (same event type, a failing `where`)."""
    rules = []
    for index in range(RULES):
        where = {"field": "amount", "op": ">=", "value": 0 if index < matching else 10**9}
        action = {"action": "points", "amount": "{{event.amount}}", "reason": f"r{index}"}
        rules.append({"id": f"r{index}", "when": {"event": "pay", "where": where}, "then": [action]})
    return {"id": "rule-cost", "rules": rules}


def pay_events(count: int, users: int, prefix: str, seed: int) -> list[dict[str, Any]]:
    """`count` pay events spread over `users` users."""
    rng = random.Random(seed)
    return [
        {
            "user_id": f"{prefix}{rng.randrange(users)}",
            "type": "pay",
            "event_id": f"{prefix}e{index}",
            "attrs": {"amount": rng.randrange(10, 600), "sku": f"K{rng.randrange(300)}"},
        }
        for index in range(count)
    ]


async def measure(matching: int, events: int, users: int, worker_batch: int) -> dict[str, float]:
    """CPU µs per event (serve, redis, total) with `matching` rules matching every event."""
    env = {"BEACON_WORKER_BATCH": str(worker_batch)}
    async with beacon_stack(ruleset=ruleset(matching), extra_env=env) as stack:
        redis = stack.client()
        try:
            await load.blast_http(stack.base_url, pay_events(WARM_UP, users, "w", 1))
            await load.wait_drained(redis, stack.partitions, 120)
            roles = stack.pids_by_role()
            before = await cpu.sample(redis, roles)
            result = await load.blast_http(stack.base_url, pay_events(events, users, "m", 2))
            if await load.wait_drained(redis, stack.partitions, 600) is None:
                raise RuntimeError("backlog not drained")
            return cpu.per_event_us(before, await cpu.sample(redis, roles), result.accepted)
        finally:
            await redis.aclose()


def slope(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    rise = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return rise, mean_y - rise * mean_x


async def run(counts: list[int], events: int, users: int, worker_batch: int) -> None:
    """Measure each count and print the rows and the fitted cost per matching rule."""
    results = {}
    for count in counts:
        results[count] = await measure(count, events, users, worker_batch)
        print(f"{count} matching: {results[count]['total']:.1f} µs/event", file=sys.stderr, flush=True)
    print(f"{events:,} pay events of {users:,} users flat out over HTTP; rulesets of {RULES} rules; ", end="")
    print(f"BEACON_WORKER_BATCH={worker_batch}")
    print(f"{'matching':>8}  {'serve':>8}  {'redis':>8}  {'total':>8}   (CPU µs per event)")
    for count, cost in results.items():
        print(f"{count:>8}  {cost['serve']:8.1f}  {cost['redis']:8.1f}  {cost['total']:8.1f}")
    for role in ("serve", "redis", "total"):
        per_rule, base = slope([(float(count), cost[role]) for count, cost in results.items()])
        print(f"{role}: {per_rule:.2f} µs per matching rule per event, {base:.1f} µs for an event matching none")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.rule_cost", description=__doc__)
    parser.add_argument("--counts", default="0,10,20,40", help="matching-rule counts, comma separated")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=20_000)
    # A batch is bounded in stream entries, not events or actions: with the default 200 entries, a
    # backlog of many-rule events makes commits so large they block Redis past the client's timeout.
    parser.add_argument("--worker-batch", type=int, default=2, help="BEACON_WORKER_BATCH (stream entries)")
    args = parser.parse_args(argv)
    counts = [int(count) for count in args.counts.split(",")]
    asyncio.run(run(counts, args.events, args.users, args.worker_batch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
