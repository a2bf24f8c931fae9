"""Reports from the measurement counters (`cep.attribution`): funnels per ruleset, rule, journey, node and
split arm, by day, with lift against a holdout arm. Pure functions of the summed counter fields.

Definitions (docs/measurement.md, "Reports"):
- `triggered`: firings of a rule; `entered`: journey instances started (or, per arm, assigned to it);
- `acted`: actions created, tag actions excluded; `delivered`, `skipped`, `dead`: actions that reached
  that final status (failures by reason); `clicked`: tracked links clicked (a link's first click);
- `converted` per model (`acted`, `reach`, `click`): touches converted, each at most once per model;
  `revenue` per model: the sum of those conversions' goal values.
- Lift of an arm against the holdout arm of its split (acted model: conversion per instance assigned):
  `rate` = converted / entered; `lift` = rate - holdout rate, with a 95 % interval by Newcombe's hybrid
  score method (from Wilson intervals; sound for small counts), `relative_lift` = lift / holdout rate, and
  `p_value` of the two-sided two-proportion z-test (pooled).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from cep.attribution import DAY_MS, REVENUE_SCALE

MODELS = ("acted", "reach", "click")
Z95 = 1.959963984540054


def day_text(day: int) -> str:
    """A UTC day number as YYYY-MM-DD."""
    return datetime.fromtimestamp(day * DAY_MS / 1000, UTC).strftime("%Y-%m-%d")


def _empty() -> dict[str, Any]:
    return {
        "triggered": 0,
        "entered": 0,
        "acted": 0,
        "delivered": 0,
        "skipped": 0,
        "dead": 0,
        "clicked": 0,
        "converted": dict.fromkeys(MODELS, 0),
        "revenue": dict.fromkeys(MODELS, 0.0),
    }


def _add(funnel: dict[str, Any], what: str, count: int) -> tuple[str, str] | None:
    """Add one counter to a funnel; returns (status, reason) for a failure."""
    name, _, detail = what.partition(":")
    if name in ("converted", "revenue"):
        model = detail or "acted"
        if model in MODELS:
            funnel[name][model] += count / REVENUE_SCALE if name == "revenue" else count
    elif name in ("skipped", "dead"):
        funnel[name] += count
        return name, detail or "unknown"
    elif name in funnel and not detail:
        funnel[name] += count
    return None


def parse_fields(counts: Mapping[str, int]) -> Iterable[tuple[int, str, str, int]]:
    """(day, unit, what, count) of each measurement field `<day>|<unit>|<what>`."""
    for field, count in counts.items():
        day, _, rest = field.partition("|")
        unit, _, what = rest.partition("|")
        if day.lstrip("-").isdigit() and what:
            yield int(day), unit, what, count


class Counted:
    """A scope's counters over a day range: a funnel per unit, per day and unit, and failures per unit."""

    def __init__(self, counts: Mapping[str, int], first_day: int, last_day: int) -> None:
        self.units: dict[str, dict[str, Any]] = {}
        self.days: dict[int, dict[str, dict[str, Any]]] = {}
        self.failures: dict[str, dict[tuple[str, str], int]] = {}
        for day, unit, what, count in parse_fields(counts):
            if not first_day <= day <= last_day:
                continue
            failure = _add(self.units.setdefault(unit, _empty()), what, count)
            _add(self.days.setdefault(day, {}).setdefault(unit, _empty()), what, count)
            if failure is not None:
                found = self.failures.setdefault(unit, {})
                found[failure] = found.get(failure, 0) + count


def combine(funnels: Iterable[dict[str, Any]], only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The sum of funnels (or of their `only` entries)."""
    total = _empty()
    for funnel in funnels:
        for key, value in funnel.items():
            if only is not None and key not in only:
                continue
            if isinstance(value, dict):
                for model, amount in value.items():
                    total[key][model] += amount
            else:
                total[key] += value
    return total


def _wilson(successes: int, trials: int) -> tuple[float, float]:
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + Z95**2 / trials
    centre = (p + Z95**2 / (2 * trials)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / trials + Z95**2 / (4 * trials**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def lift(converted: int, entered: int, base_converted: int, base_entered: int) -> dict[str, Any]:
    """An arm's conversion rate against the holdout's: difference, its 95 % Newcombe interval, relative
    lift and the two-proportion z-test's two-sided p-value (None where a rate is undefined)."""
    rate = converted / entered if entered else None
    base = base_converted / base_entered if base_entered else None
    if rate is None or base is None:
        return {"rate": rate, "holdout_rate": base, "lift": None, "ci95": None, "relative_lift": None, "p_value": None}
    low_a, high_a = _wilson(converted, entered)
    low_b, high_b = _wilson(base_converted, base_entered)
    difference = rate - base
    low = difference - math.sqrt((rate - low_a) ** 2 + (high_b - base) ** 2)
    high = difference + math.sqrt((high_a - rate) ** 2 + (base - low_b) ** 2)
    pooled = (converted + base_converted) / (entered + base_entered)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / entered + 1 / base_entered))
    p_value = math.erfc(abs(difference) / spread / math.sqrt(2)) if spread > 0 else (1.0 if difference == 0 else 0.0)
    return {
        "rate": rate,
        "holdout_rate": base,
        "lift": difference,
        "ci95": [low, high],
        "relative_lift": difference / base if base else None,
        "p_value": p_value,
    }
