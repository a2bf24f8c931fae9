"""The mix ruleset on durable_rules alone (`durable.lang` sessions and timers, in-process, no durability).

Run as `python -m bench.durable_engine INPUT.json` in a child process, because durable_rules crashes
the interpreter past its limits; prints one JSON object. durable_rules matches each event (type and
`where`) as a fact asserted into the user's session (sid = user id) and retracted; the temporal
logic lives in Python actions over the session state (`c.s`); absences use durable's own timers.
Restrictions, all forced by durable_rules' limits, are listed in RESTRICTIONS. durable_rules is no
longer a runtime dependency: it comes with the `bench` extra (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from rules.durations import parse_duration

RESTRICTIONS = (
    "sequences, thresholds and first are Python actions over session state, not durable joins "
    "(multi-event joins read out of bounds and crash)",
    "at most 1,000 users: durable_rules caps live sessions at 1,024 per ruleset (error, then a segfault)",
    "one pending absence per rule and user (a timer name is fixed per rule); a second A while one is pending "
    "is ignored",
    "`if` (profile, tags) is checked in Python on completion; durable_rules has no profile store",
    "timers have 1 s resolution and are dispatched by durable's own threads",
    "events in arrival order only (no out-of-order completion, no lateness)",
)
MIX = "mix"
PROBE = "probe"


def condition(matcher: Mapping[str, Any]) -> Any:
    """A `durable.lang` expression for an event matcher: type and `where` (all / any / field ops)."""
    from durable.lang import m  # type: ignore[import-untyped]  # durable_rules ships no type hints

    expression = m.type == matcher["event"]
    if matcher.get("where") is not None:
        expression = expression & _predicate(matcher["where"])
    return expression


def _predicate(node: Mapping[str, Any]) -> Any:
    from durable.lang import m

    if "all" in node or "any" in node:
        parts = [_predicate(child) for child in node.get("all") or node.get("any") or ()]
        combined = parts[0]
        for part in parts[1:]:
            combined = (combined & part) if "all" in node else (combined | part)
        return combined
    attribute, op = getattr(m, node["field"]), node["op"]
    value: Any = node.get("value")
    if op == "in":
        combined = attribute == value[0]
        for item in value[1:]:
            combined = combined | (attribute == item)
        return combined
    if op == "prefix":
        return attribute.matches(re.escape(value) + ".*")
    if op == "exists":
        return +attribute
    compare: dict[str, Callable[[Any, Any], Any]] = {
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
    }
    return compare[op](attribute, value)


def holds(node: Mapping[str, Any] | None, attrs: Mapping[str, Any], profile: Mapping[str, Any]) -> bool:
    """The `if` predicate on the event's attrs and the user's profile (`attrs` and `tags`)."""
    if node is None:
        return True
    if "all" in node:
        return all(holds(child, attrs, profile) for child in node["all"])
    if "any" in node:
        return any(holds(child, attrs, profile) for child in node["any"])
    if "not" in node:
        return not holds(node["not"], attrs, profile)
    if "tag" in node:
        return node["tag"] in profile.get("tags", ())
    source = profile.get("attrs", {}) if "profile" in node else attrs
    found: Any = source.get(str(node.get("profile") or node.get("field")))
    value: Any = node.get("value")
    op = node["op"]
    if found is None:
        return False
    table: dict[str, Callable[[], bool]] = {
        "==": lambda: found == value,
        "!=": lambda: found != value,
        "in": lambda: found in value,
        "not_in": lambda: found not in value,
        ">": lambda: found > value,
        ">=": lambda: found >= value,
        "<": lambda: found < value,
        "<=": lambda: found <= value,
        "exists": lambda: True,
        "prefix": lambda: isinstance(found, str) and found.startswith(value),
    }
    return table[op]()


class MixOnDurable:
    """The mix's rules as durable_rules rules plus Python actions; counts firings per rule."""

    def __init__(self, document: Mapping[str, Any], profiles: dict[str, dict[str, Any]]) -> None:
        from durable import lang  # type: ignore[import-untyped]  # durable_rules ships no type hints

        self.profiles = profiles
        self.fired: dict[str, int] = {}
        self.chained: list[dict[str, Any]] = []
        with lang.ruleset(MIX):
            for rule in document["rules"]:
                when = rule["when"]
                kind = next(iter(when)) if set(when) & {"sequence", "absence", "threshold", "first"} else "single"
                roles = {"sequence": ("first", "then"), "absence": ("first", "missing")}.get(kind, ("match",))
                for role in roles:
                    matcher = when if kind == "single" else when[kind] if kind == "first" else when[kind][role]
                    lang.when_all(condition(matcher))(self._action(rule, kind, role))
                if kind == "absence":
                    lang.when_all(lang.timeout(f"abs-{rule['id']}"))(self._action(rule, kind, "due"))
        self.host = lang.get_host()

    def _fire(
        self, rule: Mapping[str, Any], state: dict[str, Any], ts: int, attrs: Mapping[str, Any], user: str
    ) -> None:
        profile = self.profiles.setdefault(user, {"attrs": {}, "tags": []})
        if not holds(rule.get("if"), attrs, profile):
            return
        reentry = rule.get("reentry") or {}
        policy = reentry.get("policy", "always" if "event" in rule["when"] else "once_per")
        last = state.setdefault("fired", {}).get(rule["id"])
        period = parse_duration(reentry["period"]) if "period" in reentry else _window_ms(rule)
        if last is not None and (policy == "once" or (policy == "once_per" and ts < last + period)):
            return
        state["fired"][rule["id"]] = ts
        self.fired[rule["id"]] = self.fired.get(rule["id"], 0) + 1
        for action in rule["then"]:
            if action["action"] == "tag":
                for tag in action.get("add", ()):
                    if tag not in profile["tags"]:
                        profile["tags"].append(tag)
                        self.chained.append({"user_id": user, "type": "tag_added", "attrs": {"tag": tag}, "ts": ts})
                for tag in action.get("remove", ()):
                    if tag in profile["tags"]:
                        profile["tags"].remove(tag)

    def _action(self, rule: Mapping[str, Any], kind: str, role: str) -> Callable[[Any], None]:
        rule_id = rule["id"]
        spec = rule["when"].get(kind, {})
        correlate = spec.get("correlate", ())

        def act(c: Any) -> None:
            state: dict[str, Any] = c.s._d
            if role == "due":
                pending = state.setdefault("pending", {}).pop(rule_id, None)
                if pending is not None:
                    self._fire(rule, state, pending["ts"] + _window_ms(rule), pending["attrs"], state["sid"])
                return
            fact = dict(c.m._d)
            ts, user = fact.pop("ts"), fact.pop("sid")
            attrs = {key: value for key, value in fact.items() if key not in ("id", "type")}
            corr = [attrs.get(name) for name in correlate]
            if kind in ("single", "first"):
                if kind == "first" and state.setdefault("first", {}).setdefault(rule_id, ts) != ts:
                    return
                self._fire(rule, state, ts, attrs, user)
            elif kind == "threshold":
                window = [item for item in state.get(rule_id, []) if item[0] >= ts - _window_ms(rule)]
                window.append([ts, attrs.get(spec.get("sum"), 1) if spec.get("sum") else 1])
                state[rule_id] = window
                if sum(item[1] for item in window) >= spec.get("count", spec.get("at_least", 0)):
                    self._fire(rule, state, ts, attrs, user)
            elif kind == "sequence":
                key = f"{rule_id}|{json.dumps(corr)}"
                if role == "first":
                    recent = [t for t in state.get(key, []) if t >= ts - _window_ms(rule)]
                    state[key] = [*recent[-7:], ts]
                elif any(ts - _window_ms(rule) <= t <= ts for t in state.get(key, [])):
                    self._fire(rule, state, ts, attrs, user)
            elif role == "first":
                pending = state.setdefault("pending", {})
                if rule_id not in pending:
                    pending[rule_id] = {"ts": ts, "corr": corr, "attrs": attrs}
                    c.start_timer(f"abs-{rule_id}", max(1, _window_ms(rule) // 1000))
            else:
                pending = state.setdefault("pending", {}).get(rule_id)
                if pending and pending["corr"] == corr and pending["ts"] <= ts <= pending["ts"] + _window_ms(rule):
                    del state["pending"][rule_id]
                    c.cancel_timer(f"abs-{rule_id}")

        return act

    def process(self, event: Mapping[str, Any]) -> None:
        """Assert the event as a fact into the user's session (firing every matching rule), retract it."""
        from durable.engine import MessageNotHandledException  # type: ignore[import-untyped]  # no hints

        queue = [event]
        while queue:
            item = queue.pop()
            fact = {
                "sid": item["user_id"],
                "id": item.get("event_id", "chained"),
                "type": item["type"],
                "ts": item["ts"],
                **item.get("attrs", {}),
            }
            for call in (self.host.assert_fact, self.host.retract_fact):
                with contextlib.suppress(MessageNotHandledException):  # no rule matched: not an error
                    call(MIX, fact)
            queue.extend(self.chained)
            self.chained.clear()


def _window_ms(rule: Mapping[str, Any]) -> int:
    spec = next(iter(rule["when"].values()))
    for name in ("within", "window"):
        if isinstance(spec, dict) and name in spec:
            return parse_duration(spec[name])
    return 0


def timer_lateness(count: int, after_s: int) -> list[float]:
    """Start `count` durable timers (one session each) due in `after_s`; ms from due to firing each."""
    from durable import lang

    started: dict[str, float] = {}
    lateness: list[float] = []
    done = threading.Event()

    def fired(c: Any) -> None:
        lateness.append((time.time() - started[c.s.sid] - after_s) * 1000)
        if len(lateness) >= count:
            done.set()

    with lang.ruleset(PROBE):
        lang.when_all(lang.m.type == "start")(lambda c: c.start_timer("due", after_s))
        lang.when_all(lang.timeout("due"))(fired)
    host = lang.get_host()
    for index in range(count):
        started[f"p{index}"] = time.time()
        host.post(PROBE, {"sid": f"p{index}", "type": "start"})
    done.wait(after_s + 5 + count)  # durable fires about 5 timers per second
    return lateness


def main(path: str) -> None:
    """Read {document, profiles, events, timers, timer_after_s}; print the measurements as JSON."""
    with open(path) as handle:
        spec = json.load(handle)
    engine = MixOnDurable(spec["document"], spec["profiles"])
    events = spec["events"]
    started, cpu_started = time.perf_counter(), time.process_time()
    for event in events:
        engine.process(event)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started  # every thread of this process: durable's too
    lateness = timer_lateness(spec["timers"], spec["timer_after_s"])
    print(
        json.dumps(
            {
                "events": len(events),
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "fired": engine.fired,
                "timer_lateness_ms": lateness,
                "timers": spec["timers"],
                "restrictions": RESTRICTIONS,
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
