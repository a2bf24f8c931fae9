"""Validate a journey document (decoded JSON) into `rules.journey_model` dataclasses, naming every problem.

The journey parser is the ruleset parser (`rules.schema._Parser`) plus the journey's own fields: matchers,
predicates, actions and durations are checked exactly as in a ruleset, and the errors read the same
(`nodes.wait-click.timeout: "1x" is not a duration`). One pass reports every problem it can find.

Branch conditions (`"if"`) are the rule predicate language (`field` leaves read the entry event's
attributes; `profile`, `tag`) plus behaviour conditions (`did`, `did_not`, `sum`), combined by `all` /
`any` / `not`. Representation: a condition with no behaviour condition anywhere inside is a plain
`rules.model` predicate (`AllOf` / `AnyOf` / `Not`, as a rule's `if` parses), so the rule predicate
evaluator runs it unchanged; a combinator with a behaviour condition somewhere inside becomes
`BranchAll` / `BranchAny` / `BranchNot`, whose items may again be plain predicates. Hence every
`Predicate` subtree is behaviour-free, and every `Branch*` node holds at least one `Behaviour` below it.

Graph checks (references to missing nodes, nodes not reachable from `start`, cycles with no wait) name
the node; reachability and cycles are judged only when every node and `start` validated, since a graph
with a broken node would report misleading follow-on errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from beacon.errors import ValidationError
from rules import journey_model as jm
from rules import model
from rules.schema import (
    MAX_ACTIONS,
    MAX_CORRELATE,
    MAX_COUNT,
    MAX_DEPTH,
    PREDICATE_KINDS,
    Parse,
    RulesetInvalid,
    _is_int,
    _key,
    _number_problem,
    _one_of,
    _Parser,
    _quote,
)

JourneyInvalid = RulesetInvalid
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.?-]{0,63}")  # "vip?" reads well on a canvas
TIME_OF_DAY = re.compile(r"(\d{1,2}):(\d{2})")
MAX_NODES = 200
MAX_KEY = 8  # each key value becomes part of the instance's state key
MAX_EXITS = 20
MAX_ARMS = 20
MAX_ENTRIES = 10_000
BEHAVIOUR_KINDS = ("did", "did_not", "sum")
CONDITION_KINDS = (*PREDICATE_KINDS, *BEHAVIOUR_KINDS)
NUMERIC_OPS = ("==", "!=", ">", ">=", "<", "<=")
WAIT_NODES = (jm.Wait, jm.WaitFor)
PLAIN = (model.Compare, model.HasTag, model.AllOf, model.AnyOf, model.Not)
HOST_ZONES = ("localtime", "posixrules")  # name the server's own zone, not a place


def parse_journey(doc: object, *, journey_id: str | None = None, default_lateness_ms: int = 2000) -> jm.Journey:
    """The validated journey in `doc`; raises RulesetInvalid (alias JourneyInvalid) listing every problem."""
    parser = _JourneyParser(default_lateness_ms)
    journey = parser.journey(doc, journey_id)
    if parser.errors or journey is None:
        raise RulesetInvalid(parser.errors or [ValidationError("invalid journey")])
    return journey


def _is_zone(value: object) -> bool:
    if not isinstance(value, str) or value in HOST_ZONES:
        return False
    try:
        ZoneInfo(value)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True


def _plain(items: tuple[jm.Condition, ...]) -> tuple[model.Predicate, ...] | None:
    plain = tuple(item for item in items if isinstance(item, PLAIN))
    return plain if len(plain) == len(items) else None


class _JourneyParser(_Parser):
    """The ruleset parser's building blocks plus journeys, nodes, branch conditions and the graph."""

    def __init__(self, default_lateness_ms: int) -> None:
        super().__init__(default_lateness_ms)
        self.node_ids: set[str] = set()  # the document's node keys, known before any node is parsed
        self.journey_tz = "UTC"
        self.numeric_op = self.choice(NUMERIC_OPS, "an operator")

    # -- the document ------------------------------------------------------------------------------

    def journey(self, doc: object, journey_id: str | None) -> jm.Journey | None:
        if journey_id is not None:
            self.identifier(journey_id, "id")
        if isinstance(doc, dict):
            nodes, tz = doc.get("nodes"), doc.get("tz", "UTC")
            self.node_ids = {key for key in nodes if isinstance(key, str)} if isinstance(nodes, dict) else set()
            self.journey_tz = tz if _is_zone(tz) else "UTC"  # a bad `tz` is reported at its field
        spec: dict[str, Parse] = {
            "id": self.identifier,
            "description": self.string,
            "entry": self.entry,
            "key": lambda item, where: self.names(item, where, MAX_KEY),
            "reentry": self.journey_reentry,
            "exit": lambda item, where: self.listed(item, where, self.journey_exit, "matchers", MAX_EXITS),
            "goal": self.goal,
            "tz": self.time_zone,
            "lateness": self.duration,
            "fatigue": self.fatigue,
            "start": self.ref,
            "nodes": self.nodes,
        }
        # Required fields are checked here rather than by `fields`, so that the graph is judged even
        # when another required field (say a refused segment entry) failed.
        parsed = self.fields(doc, "", spec)
        if parsed is None or not isinstance(doc, dict):
            return None
        required = ("entry", "start", "nodes") if journey_id is not None else ("id", "entry", "start", "nodes")
        for key in required:
            if key not in doc:
                self.reject(key, "is required")
        doc_id, nodes, start = parsed.get("id"), parsed.get("nodes"), parsed.get("start")
        if journey_id is not None and doc_id is not None and doc_id != journey_id:
            self.reject("id", f"{_quote(doc_id)} does not match the id in the URL {_quote(journey_id)}")
        if nodes is not None and start is not None:
            self.graph(nodes, start)
        if self.errors or nodes is None or start is None:
            return None
        lateness = parsed.get("lateness")
        return jm.Journey(
            id=doc_id or journey_id or "",
            start=start,
            nodes=nodes,
            entry=parsed["entry"],
            reentry=parsed.get("reentry") or jm.JourneyReentry("always"),
            key=tuple(parsed.get("key") or ()),
            exits=parsed.get("exit") or (),
            goal=parsed.get("goal"),
            tz=parsed.get("tz") or "UTC",
            lateness_ms=lateness if lateness is not None else self.default_lateness_ms,
            fatigue=parsed.get("fatigue"),
            description=parsed.get("description") or "",
        )

    def entry(self, value: Any, path: str) -> model.Matcher | None:
        if isinstance(value, dict) and "segment" in value:
            # Entering a segment is the event `segment_entered` with `segment` = its id (cep.segments).
            parsed = self.fields(value, path, {"segment": self.identifier}, ("segment",))
            if parsed is None:
                return None
            return model.Matcher("segment_entered", model.Compare("field", "segment", "==", parsed["segment"]))
        return self.matcher(value, path)

    def journey_reentry(self, value: Any, path: str) -> jm.JourneyReentry | None:
        if isinstance(value, dict) and "max" in value:
            spec: dict[str, Parse] = {"max": self.bounded_int(1, MAX_ENTRIES), "per": self.positive_duration}
            parsed = self.fields(value, path, spec, ("max",))
            if parsed is None:
                return None
            if "per" in value:  # at most N entries per window
                per = parsed.get("per")
                return jm.JourneyReentry("max_per", per, parsed["max"]) if per is not None else None
            return jm.JourneyReentry("max", max_entries=parsed["max"])
        reentry = self.reentry(value, path)  # a rule's: once | once_per {period} | always
        return jm.JourneyReentry(reentry.policy, reentry.period_ms) if reentry is not None else None

    def time_zone(self, value: Any, path: str) -> str | None:
        if _is_zone(value):
            return value  # type: ignore[no-any-return]
        return self.reject(path, f'{_quote(value)} is not a time zone (an IANA name like "Asia/Shanghai")')

    def ref(self, value: Any, path: str) -> str | None:
        """A node id named by `start`, `next`, `on_timeout` or `else`: it must be one of the nodes."""
        if isinstance(value, str) and value in self.node_ids:
            return value
        return self.reject(path, f"{_quote(value)} is not a node")

    def bounded_int(self, low: int, high: int) -> Parse:
        return self.typed(
            lambda value: _is_int(value) and low <= value <= high, f"must be an integer from {low} to {high}"
        )

    # -- nodes -------------------------------------------------------------------------------------

    def nodes(self, value: Any, path: str) -> dict[str, jm.Node] | None:
        """Every node by id, in document order; None when any node (or a reference in one) is invalid."""
        if not isinstance(value, dict):
            return self.reject(path, "must be an object")
        if not value:
            return self.reject(path, "must have at least one node")
        if len(value) > MAX_NODES:
            return self.reject(path, f"must have at most {MAX_NODES} nodes")
        before = len(self.errors)
        nodes: dict[str, jm.Node] = {}
        for node_id, item in value.items():
            where = _key(path, node_id)
            if not (isinstance(node_id, str) and NODE_ID_PATTERN.fullmatch(node_id)):
                detail = '1-64 letters, digits, "_", ".", "-" or "?"; starts with a letter or digit'
                self.reject(where, f"{_quote(node_id)} is not a valid node id ({detail})")
            node = self.node(item, where)
            if node is not None:
                nodes[node_id] = node
        return nodes if len(self.errors) == before else None

    def node(self, value: Any, path: str) -> jm.Node | None:
        if not isinstance(value, dict):
            return self.reject(path, "must be an object")
        found = [key for key in value if key in jm.NODE_KINDS]
        if len(found) != 1:
            listing = f" (found: {_one_of(found)})" if found else ""
            return self.reject(path, f"takes exactly one of: {_one_of(jm.NODE_KINDS)}{listing}")
        kind = found[0]
        tz: dict[str, Parse] = {"tz": self.time_zone}
        kinds: dict[str, tuple[dict[str, Parse], tuple[str, ...]]] = {
            "do": ({"do": self.actions, "next": self.ref}, ()),
            "wait": ({"wait": self.positive_duration, "next": self.ref}, ()),
            "until": ({"until": self.time_of_day, **tz, "next": self.ref}, ()),
            "until_profile": ({"until_profile": self.name, **tz, "next": self.ref}, ()),
            "wait_for": (
                {"wait_for": self.wait_arms, "timeout": self.positive_duration, "on_timeout": self.ref},
                ("timeout",),
            ),
            "branch": ({"branch": self.branch_arms, "else": self.ref}, ()),
            "split": ({"split": self.split_arms, "salt": self.string}, ()),
            "exit": ({"exit": self.typed(lambda item: item is True, "must be true")}, ()),
        }
        spec, required = kinds[kind]
        parsed = self.fields(value, path, {**spec, "label": self.string}, (kind, *required))
        if parsed is None:
            return None
        if kind == "do":
            return jm.Do(parsed["do"], parsed.get("next"))
        if kind == "wait":
            return jm.Wait(duration_ms=parsed["wait"], next=parsed.get("next"))
        if kind in ("until", "until_profile"):
            at: dict[str, Any] = {kind: parsed[kind]}
            return jm.Wait(**at, tz=parsed.get("tz") or self.journey_tz, next=parsed.get("next"))
        if kind == "wait_for":
            return jm.WaitFor(parsed["wait_for"], parsed["timeout"], parsed.get("on_timeout"))
        if kind == "branch":
            return jm.Branch(parsed["branch"], parsed.get("else"))
        if kind == "split":
            return self.split(parsed["split"], parsed.get("salt") or "", _key(path, "split"))
        return jm.Exit()

    def actions(self, value: Any, path: str) -> tuple[model.Action, ...] | None:
        return self.listed(value, path, self.action, "actions", MAX_ACTIONS)

    def time_of_day(self, value: Any, path: str) -> tuple[int, int] | None:
        found = TIME_OF_DAY.fullmatch(value) if isinstance(value, str) else None
        if found is not None and int(found[1]) < 24 and int(found[2]) < 60:
            return int(found[1]), int(found[2])
        return self.reject(path, f'{_quote(value)} is not a time of day (24-hour "HH:MM", like "10:00")')

    def journey_exit(self, value: Any, path: str) -> jm.JourneyExit | None:
        extra: dict[str, Parse] = {"correlate": lambda item, where: self.names(item, where, MAX_CORRELATE)}
        found = self.matcher_with(value, path, extra)
        return None if found is None else jm.JourneyExit(found[0], tuple(found[1].get("correlate") or ()))

    def wait_arms(self, value: Any, path: str) -> tuple[jm.WaitArm, ...] | None:
        extra: dict[str, Parse] = {
            "correlate": lambda item, where: self.names(item, where, MAX_CORRELATE),
            "next": self.ref,
        }

        def arm(item: Any, where: str) -> jm.WaitArm | None:
            found = self.matcher_with(item, where, extra)
            if found is None:
                return None
            return jm.WaitArm(found[0], found[1].get("next"), tuple(found[1].get("correlate") or ()))

        return self.listed(value, path, arm, "events", MAX_ARMS)

    def branch_arms(self, value: Any, path: str) -> tuple[jm.BranchArm, ...] | None:
        spec: dict[str, Parse] = {"if": lambda item, where: self.condition(item, where, 1), "next": self.ref}

        def arm(item: Any, where: str) -> jm.BranchArm | None:
            parsed = self.fields(item, where, spec, ("if",))
            return jm.BranchArm(parsed["if"], parsed.get("next")) if parsed is not None else None

        return self.listed(value, path, arm, "arms", MAX_ARMS)

    def split_arms(self, value: Any, path: str) -> tuple[jm.SplitArm, ...] | None:
        spec: dict[str, Parse] = {"weight": self.weight, "next": self.ref, "holdout": self.boolean}
        holdouts: list[str] = []

        def arm(item: Any, where: str) -> jm.SplitArm | None:
            parsed = self.fields(item, where, spec, ("weight",))
            if parsed is None:
                return None
            if parsed.get("holdout") and "next" in item:
                return self.reject(_key(where, "next"), "a holdout arm acts on nobody: it takes no next")
            if parsed.get("holdout") and holdouts:
                return self.reject(_key(where, "holdout"), f"only one arm may be the holdout (already {holdouts[0]})")
            if parsed.get("holdout"):
                holdouts.append(where)
            return jm.SplitArm(parsed["weight"], parsed.get("next"), bool(parsed.get("holdout")))

        return self.listed(value, path, arm, "arms", MAX_ARMS)

    def weight(self, value: Any, path: str) -> float | None:
        if _number_problem(value) is None and value > 0:
            return value  # type: ignore[no-any-return]
        return self.reject(path, "must be a number > 0")

    def split(self, arms: tuple[jm.SplitArm, ...], salt: str, path: str) -> jm.Split | None:
        total = sum(arm.weight for arm in arms)
        if not math.isclose(total, 100, rel_tol=0, abs_tol=1e-6):
            return self.reject(path, f"weights add up to {total:g}, not 100")
        return jm.Split(arms, salt)

    # -- branch conditions -------------------------------------------------------------------------

    def condition(self, value: Any, path: str, depth: int) -> jm.Condition | None:
        """A rule predicate, a behaviour condition, or all / any / not over conditions (see the module doc)."""
        if depth > MAX_DEPTH:
            return self.reject(path, f"nests deeper than {MAX_DEPTH} levels")
        if not isinstance(value, dict):
            return self.reject(path, "must be an object")
        found = [key for key in value if key in CONDITION_KINDS]
        if len(found) != 1:
            listing = f" (found: {_one_of(found)})" if found else ""
            return self.reject(path, f"takes exactly one of: {_one_of(CONDITION_KINDS)}{listing}")
        kind = found[0]
        if kind in ("field", "profile", "tag"):
            return self.predicate(value, path, depth, in_matcher=False)
        if kind in BEHAVIOUR_KINDS:
            return self.behaviour(value, path, kind)

        def inner(item: Any, where: str) -> jm.Condition | None:
            return self.condition(item, where, depth + 1)

        def items(listed: Any, where: str) -> tuple[jm.Condition, ...] | None:
            if not isinstance(listed, list):
                return self.reject(where, "must be a list")
            parsed = [inner(item, f"{where}[{index}]") for index, item in enumerate(listed)]
            return None if None in parsed else tuple(parsed)  # type: ignore[arg-type]

        parsed = self.fields(value, path, {kind: inner if kind == "not" else items}, (kind,))
        if parsed is None:
            return None
        if kind == "not":
            item: jm.Condition = parsed["not"]
            return model.Not(item) if isinstance(item, PLAIN) else jm.BranchNot(item)
        listed: tuple[jm.Condition, ...] = parsed[kind]
        plain = _plain(listed)
        if kind == "all":
            return model.AllOf(plain) if plain is not None else jm.BranchAll(listed)
        return model.AnyOf(plain) if plain is not None else jm.BranchAny(listed)

    def behaviour(self, value: dict[str, Any], path: str, kind: str) -> jm.Behaviour | None:
        """`did` (with an optional `count`), `did_not`, or `sum` of a field, over a window."""
        within: dict[str, Parse] = {"within": self.positive_duration}
        if kind == "did":
            spec: dict[str, Parse] = {"did": self.matcher, **within, "count": self.count_condition}
            parsed = self.fields(value, path, spec, ("did", "within"))
            if parsed is None:
                return None
            count: tuple[model.CompareOp, int] = parsed.get("count") or (">=", 1)
            return jm.Behaviour("did", parsed["did"], parsed["within"], *count)
        if kind == "did_not":
            parsed = self.fields(value, path, {"did_not": self.matcher, **within}, ("did_not", "within"))
            return jm.Behaviour("did_not", parsed["did_not"], parsed["within"]) if parsed is not None else None
        spec = {"sum": self.name, "of": self.matcher, **within, "op": self.numeric_op, "value": self.number}
        parsed = self.fields(value, path, spec, ("sum", "of", "within", "op", "value"))
        if parsed is None:
            return None
        return jm.Behaviour("sum", parsed["of"], parsed["within"], parsed["op"], parsed["value"], parsed["sum"])

    def count_condition(self, value: Any, path: str) -> tuple[model.CompareOp, int] | None:
        spec: dict[str, Parse] = {"op": self.numeric_op, "value": self.bounded_int(0, MAX_COUNT)}
        parsed = self.fields(value, path, spec, ("op", "value"))
        return (parsed["op"], parsed["value"]) if parsed is not None else None

    # -- the graph ---------------------------------------------------------------------------------

    def graph(self, nodes: dict[str, jm.Node], start: str) -> None:
        """Every node reachable from `start`, and no cycle made only of nodes that do not wait."""
        reached = {start, *self.parents_from(nodes, start)}
        for node_id in nodes:
            if node_id not in reached:
                self.reject(_key("nodes", node_id), 'is not reachable from "start"')
        instant = {node_id: node for node_id, node in nodes.items() if not isinstance(node, WAIT_NODES)}
        done: set[str] = set()
        for node_id in instant:
            parents = self.parents_from(instant, node_id)
            if node_id in done or node_id not in parents:
                continue
            cycle = [node_id]
            while len(cycle) == 1 or cycle[-1] != node_id:
                cycle.append(parents[cycle[-1]])
            cycle.reverse()
            # The rest of its strongly connected component would only repeat the same loop.
            done |= {other for other in parents if node_id in self.parents_from(instant, other)}
            self.reject(_key("nodes", node_id), f"is on a cycle with no wait: {' -> '.join(cycle)}")

    @staticmethod
    def parents_from(nodes: Mapping[str, jm.Node], origin: str) -> dict[str, str]:
        """Breadth-first from `origin` in one step or more: each reached node's parent on a shortest path."""
        parents: dict[str, str] = {}
        queue = [origin]
        for current in queue:
            for target in jm.successors(nodes[current]):
                if target is not None and target in nodes and target not in parents:
                    parents[target] = current
                    queue.append(target)
        return parents
