"""Validate a ruleset document (decoded JSON) into `rules.model` dataclasses, naming every problem's path.

Predicate operators, the values they take, and what they mean (`rules/predicates.py` implements them):

- `==`, `!=`: a scalar (string, finite number or boolean; never null). Equality of JSON values with no
  coercion: `"5" == 5` is false, `true == 1` is false, `1 == 1.0` is true.
- `>`, `>=`, `<`, `<=`: a finite number; an attribute that is not a number (booleans included) fails.
- `in`, `not_in`: a non-empty list (at most 1000) of scalars; the attribute equals one of / none of them.
- `contains`: a scalar; the attribute is a string holding it as a substring, or a list holding it.
- `prefix`: a non-empty string; the attribute is a string starting with it.
- `exists`: no `value` (or `value: true`); the attribute is present and not null.

A comparison on a missing or wrongly typed attribute is false, for every operator `!=` and `not_in`
included (as SQL's NULL never compares); `{"not": P}` inverts the whole of P, so `{"not": {"field": "x",
"op": "==", "value": 1}}` holds when `x` is missing while `{"field": "x", "op": "!=", "value": 1}` does
not. In a matcher's `where` only `field` leaves are allowed (the event matcher sees the event alone);
`if` may test the event that completed the pattern, the profile and tags.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from beacon.errors import ValidationError
from rules import model
from rules.durations import format_duration, parse_duration
from rules.templates import find_template_errors, has_link, is_whole_template

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
EVENT_TYPE_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")  # what the event API accepts as `type`
MAX_RULES = 500
MAX_ACTIONS = 20
MAX_CORRELATE = 8  # each correlation value becomes part of a per-user state key
MAX_IN_VALUES = 1000
MAX_DEPTH = 16  # predicates and action params are walked recursively
MAX_COUNT = 10_000  # a count threshold keeps that many timestamps per user
MAX_FATIGUE = 1_000  # messages per user a fatigue cap may allow (the connectors keep one entry per send)
# A year and some: longer is a pending timer or a window nobody remembers. Every duration is bounded:
# an unbounded one (`"99999999999999999999999d"`) validated, then failed every encode of its state.
MAX_DURATION_MS = 400 * 86_400_000
MAX_DELAY_MS = MAX_DURATION_MS
# An action's own fields, which are not among the params the connectors send.
ACTION_OWN_FIELDS = ("action", "delay", "max_staleness")
# A staleness bound under a second would skip an action that merely waited for its batch.
MIN_STALENESS_MS = 1_000
PATTERNS = ("sequence", "absence", "threshold", "first")
PREDICATE_KINDS = ("field", "profile", "tag", "all", "any", "not")
REENTRY_POLICIES = ("once", "once_per", "always")

Parse = Callable[[Any, str], Any]  # (value, path) -> the parsed value, or None after recording errors


class RulesetInvalid(ValidationError):
    """All problems found in one document; message/path are the first one's."""

    def __init__(self, errors: list[ValidationError]) -> None:
        super().__init__(errors[0].message, path=errors[0].path)
        self.errors = errors

    def to_json(self) -> dict[str, object]:
        """The wire shape, with every problem listed under `errors`."""
        listed = [{"path": error.path, "message": error.message} for error in self.errors]
        return {"error": {"code": self.code, "message": self.message, "path": self.path, "errors": listed}}

    def __str__(self) -> str:
        more = len(self.errors) - 1
        return f"{super().__str__()} (and {more} more)" if more else super().__str__()


def parse_ruleset(doc: object, *, ruleset_id: str | None = None, default_lateness_ms: int = 2000) -> model.Ruleset:
    """The validated ruleset in `doc`; raises RulesetInvalid listing every problem."""
    parser = _Parser(default_lateness_ms)
    ruleset = parser.ruleset(doc, ruleset_id)
    if parser.errors or ruleset is None:
        raise RulesetInvalid(parser.errors or [ValidationError("invalid ruleset")])
    return ruleset


def default_reentry(when: model.When) -> model.Reentry:
    """Re-entry for a rule that names none: once per window for windowed patterns, by nature for the rest."""
    if isinstance(when, (model.Sequence, model.Absence)):
        return model.Reentry("once_per", when.within_ms)
    if isinstance(when, model.Threshold):
        return model.Reentry("once_per", when.window_ms)
    if isinstance(when, model.First):
        return model.Reentry("once")
    return model.Reentry("always")


def _key(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _quote(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _one_of(values: Iterable[object]) -> str:
    return ", ".join(str(value) for value in values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number"
    return None if math.isfinite(value) else "must be a finite number"


def _scalar_problem(value: object) -> str | None:
    if isinstance(value, (str, bool)):
        return None
    problem = _number_problem(value)
    return "must be a string, number or boolean" if problem == "must be a number" else problem


class _Parser:
    """One validation pass: each method checks one node, records its errors, returns the node or None."""

    def __init__(self, default_lateness_ms: int) -> None:
        self.errors: list[ValidationError] = []
        self.default_lateness_ms = default_lateness_ms
        self.string = self.typed(lambda value: isinstance(value, str), "must be a string")
        self.name = self.typed(lambda value: isinstance(value, str) and value != "", "must be a non-empty string")
        self.object = self.typed(lambda value: isinstance(value, dict), "must be an object")
        self.boolean = self.typed(lambda value: isinstance(value, bool), "must be a boolean")
        self.integer = self.typed(_is_int, "must be an integer")
        self.positive_int = self.typed(lambda value: _is_int(value) and value >= 1, "must be an integer >= 1")
        self.http_url = self.typed(
            lambda value: isinstance(value, str) and re.match(r"https?://[^\s/]", value, re.I) is not None,
            "must be an http:// or https:// URL",
        )
        self.channel = self.choice(model.MESSAGE_CHANNELS, "a channel")
        self.operator = self.choice(model.COMPARE_OPS, "an operator")
        self.policy = self.choice(REENTRY_POLICIES, "a policy")
        params = {"params": self.object}
        self.action_fields: dict[str, tuple[dict[str, Parse], tuple[str, ...]]] = {
            "coupon": ({"coupon_id": self.name, "quantity": self.positive_int, **params}, ("coupon_id",)),
            "points": ({"amount": self.points_amount, "reason": self.string}, ("amount",)),
            "tag": ({"add": self.names, "remove": self.names}, ()),
            "message": (
                {
                    "channel": self.channel,
                    "template": self.name,
                    **params,
                    "url": self.string,
                    "page": self.string,
                    "miniprogram": self.object,
                    # Exempt from the cross-channel `marketing` frequency cap (connectors.caps).
                    "transactional": self.boolean,
                },
                ("channel", "template"),
            ),
            "webhook": ({"url": self.http_url, "body": self.object, "headers": self.headers}, ("url",)),
            "notify_staff": ({"template": self.name, **params, "notify_superior": self.boolean}, ("template",)),
        }

    # -- building blocks ---------------------------------------------------------------------------

    def reject(self, path: str, message: str) -> None:
        """Record an error; returns None so parsers can `return self.reject(...)`."""
        self.errors.append(ValidationError(message, path=path or None))

    def typed(self, accepts: Callable[[Any], bool], message: str) -> Parse:
        return lambda value, path: value if accepts(value) else self.reject(path, message)

    def choice(self, options: tuple[str, ...], what: str) -> Parse:
        message = f"is not {what} (expected one of: {_one_of(options)})"
        return lambda value, path: value if value in options else self.reject(path, f"{_quote(value)} {message}")

    def fields(
        self, value: object, path: str, spec: Mapping[str, Parse], required: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        """The known fields parsed in document order (None for a rejected one); unknown and missing reported."""
        if not isinstance(value, dict):
            return self.reject(path, "must be an object")
        parsed: dict[str, Any] = {}
        for key, item in value.items():
            if key in spec:
                parsed[key] = spec[key](item, _key(path, key))
            else:
                self.reject(_key(path, key), f"unknown field {_quote(key)} (expected one of: {_one_of(spec)})")
        for key in required:
            if key not in value:
                self.reject(_key(path, key), "is required")
        # Every parser rejects JSON null, so None here always means "rejected or missing".
        return parsed if all(parsed.get(key) is not None for key in required) else None

    def identifier(self, value: Any, path: str) -> str | None:
        if isinstance(value, str) and ID_PATTERN.fullmatch(value):
            return value
        detail = '1-64 letters, digits, "_", "." or "-"; starts with a letter or digit'
        return self.reject(path, f"{_quote(value)} is not a valid id ({detail})")

    def duration(self, value: Any, path: str, minimum_ms: int = 0, maximum_ms: int = MAX_DURATION_MS) -> int | None:
        if not isinstance(value, str):
            return self.reject(path, 'must be a duration string like "30m"')
        try:
            ms = parse_duration(value)
        except ValueError:
            return self.reject(path, f"{_quote(value)} is not a duration")
        if ms < minimum_ms:
            return self.reject(
                path, "must be longer than 0" if minimum_ms <= 1 else f"must be at least {format_duration(minimum_ms)}"
            )
        if ms > maximum_ms:
            return self.reject(path, f"must be at most {format_duration(maximum_ms)}")
        return ms

    def number(self, value: Any, path: str) -> float | None:
        problem = _number_problem(value)
        return self.reject(path, problem) if problem else value

    def positive_duration(self, value: Any, path: str) -> int | None:
        return self.duration(value, path, minimum_ms=1)

    def names(self, value: Any, path: str, maximum: int | None = None) -> list[str] | None:
        """A list of non-empty strings; duplicates are errors."""
        if not isinstance(value, list):
            return self.reject(path, "must be a list")
        if maximum is not None and len(value) > maximum:
            return self.reject(path, f"must have at most {maximum} items")
        items = [self.name(item, f"{path}[{index}]") for index, item in enumerate(value)]
        for index, item in enumerate(items):
            if item is not None and item in items[:index]:
                self.reject(f"{path}[{index}]", f"duplicate {_quote(item)}")
        return items if len(set(items)) == len(items) and None not in items else None

    def listed(self, value: Any, path: str, parse: Parse, what: str, maximum: int) -> tuple[Any, ...] | None:
        """A non-empty list of at most `maximum` items, each parsed."""
        if not isinstance(value, list) or not value:
            return self.reject(path, "must be a non-empty list")
        if len(value) > maximum:
            return self.reject(path, f"must have at most {maximum} {what}")
        items = [parse(item, f"{path}[{index}]") for index, item in enumerate(value)]
        return None if None in items else tuple(items)

    # -- ruleset and rules -------------------------------------------------------------------------

    def ruleset(self, doc: object, ruleset_id: str | None) -> model.Ruleset | None:
        if ruleset_id is not None:
            self.identifier(ruleset_id, "id")
        spec: dict[str, Parse] = {
            "id": self.identifier,
            "description": self.string,
            "rules": self.rules,
            "fatigue": self.fatigue,
        }
        parsed = self.fields(doc, "", spec, ("rules",) if ruleset_id is not None else ("id", "rules"))
        if parsed is None:
            return None
        doc_id = parsed.get("id")
        if ruleset_id is not None and doc_id is not None and doc_id != ruleset_id:
            self.reject("id", f"{_quote(doc_id)} does not match the id in the URL {_quote(ruleset_id)}")
        return model.Ruleset(
            doc_id or ruleset_id or "", parsed["rules"], parsed.get("description") or "", fatigue=parsed.get("fatigue")
        )

    def fatigue(self, value: Any, path: str) -> model.Fatigue | None:
        """`{"max": N, "per": duration}`: a per-user cap on the marketing messages of a ruleset or journey."""
        spec: dict[str, Parse] = {"max": self.bounded_count, "per": self.positive_duration}
        parsed = self.fields(value, path, spec, ("max", "per"))
        return model.Fatigue(parsed["max"], parsed["per"]) if parsed is not None else None

    def bounded_count(self, value: Any, path: str) -> int | None:
        if _is_int(value) and 1 <= value <= MAX_FATIGUE:
            return value  # type: ignore[no-any-return]
        return self.reject(path, f"must be an integer from 1 to {MAX_FATIGUE}")

    def rules(self, value: Any, path: str) -> tuple[model.Rule, ...] | None:
        seen: set[str] = set()

        def rule(item: Any, where: str) -> model.Rule | None:
            # Reported before the rule's own errors, so the duplicate reads first at its id.
            rule_id = item.get("id") if isinstance(item, dict) else None
            if isinstance(rule_id, str) and rule_id in seen:
                self.reject(_key(where, "id"), f"duplicate rule id {_quote(rule_id)}")
            seen.add(rule_id if isinstance(rule_id, str) else "")
            return self.rule(item, where)

        return self.listed(value, path, rule, "rules", MAX_RULES)

    def rule(self, value: Any, path: str) -> model.Rule | None:
        spec: dict[str, Parse] = {
            "id": self.identifier,
            "description": self.string,
            "when": self.when,
            "if": lambda item, where: self.predicate(item, where, 1, in_matcher=False),
            "then": lambda item, where: self.listed(item, where, self.action, "actions", MAX_ACTIONS),
            "reentry": self.reentry,
            "priority": self.integer,
            "lateness": self.duration,
            "goal": self.goal,
        }
        parsed = self.fields(value, path, spec, ("id", "when", "then"))
        if parsed is None:
            return None
        lateness, priority = parsed.get("lateness"), parsed.get("priority")
        return model.Rule(
            id=parsed["id"],
            when=parsed["when"],
            actions=parsed["then"],
            reentry=parsed.get("reentry") or default_reentry(parsed["when"]),
            condition=parsed.get("if"),
            priority=priority if priority is not None else 0,
            lateness_ms=lateness if lateness is not None else self.default_lateness_ms,
            description=parsed.get("description") or "",
            goal=parsed.get("goal"),
        )

    def matcher_with(
        self, value: Any, path: str, extra: dict[str, Parse], required: tuple[str, ...] = ()
    ) -> tuple[model.Matcher, dict[str, Any]] | None:
        """An event matcher `{"event", "where"?}` sharing its object with `extra` fields; both parsed."""
        spec: dict[str, Parse] = {
            "event": self.event_type,
            "where": lambda item, where: self.predicate(item, where, 1, in_matcher=True),
            **extra,
        }
        parsed = self.fields(value, path, spec, ("event", *required))
        return None if parsed is None else (model.Matcher(parsed["event"], parsed.get("where")), parsed)

    def goal(self, value: Any, path: str) -> model.Goal | None:
        """`{"event", "where"?, "within", "value"?}`: a conversion, and the field holding its revenue."""
        extra: dict[str, Parse] = {"within": self.positive_duration, "value": self.name}
        found = self.matcher_with(value, path, extra, ("within",))
        return model.Goal(found[0], found[1]["within"], found[1].get("value")) if found is not None else None

    def reentry(self, value: Any, path: str) -> model.Reentry | None:
        spec: dict[str, Parse] = {"policy": self.policy, "period": self.positive_duration}
        parsed = self.fields(value, path, spec, ("policy",))
        if parsed is None:
            return None
        policy, period = parsed["policy"], parsed.get("period")
        if policy == "once_per" and "period" not in value:
            return self.reject(_key(path, "period"), 'is required with "once_per"')
        if policy != "once_per" and "period" in value:
            return self.reject(_key(path, "period"), f"not allowed with {_quote(policy)}")
        return model.Reentry(policy, period or 0)

    # -- patterns ----------------------------------------------------------------------------------

    def when(self, value: Any, path: str) -> model.When | None:
        if not isinstance(value, dict):
            return self.reject(path, "must be an object")
        found = [key for key in value if key in PATTERNS]
        if len(found) > 1:
            return self.reject(path, f"takes exactly one of: {_one_of(PATTERNS)} (found: {_one_of(found)})")
        if not found and "event" not in value:
            return self.reject(path, f'must be an event matcher {{"event": ...}} or one of: {_one_of(PATTERNS)}')
        if not found:
            matcher = self.matcher(value, path)
            return model.Single(matcher) if matcher is not None else None
        kinds: dict[str, Parse] = {
            "sequence": lambda item, where: self.pair(item, where, "then", model.Sequence),
            "absence": lambda item, where: self.pair(item, where, "missing", model.Absence),
            "threshold": self.threshold,
            "first": self.first,
        }
        parsed = self.fields(value, path, {found[0]: kinds[found[0]]}, (found[0],))
        return parsed[found[0]] if parsed is not None else None

    def matcher(self, value: Any, path: str) -> model.Matcher | None:
        spec: dict[str, Parse] = {
            "event": self.event_type,
            "where": lambda item, where: self.predicate(item, where, 1, in_matcher=True),
        }
        parsed = self.fields(value, path, spec, ("event",))
        return None if parsed is None else model.Matcher(parsed["event"], parsed.get("where"))

    def event_type(self, value: Any, path: str) -> str | None:
        if isinstance(value, str) and EVENT_TYPE_PATTERN.fullmatch(value):
            return value
        return self.reject(path, f'{_quote(value)} is not an event type (1-64 letters, digits, "_", ".", ":" or "-")')

    def pair(
        self, value: Any, path: str, second: str, build: type[model.Sequence] | type[model.Absence]
    ) -> model.Sequence | model.Absence | None:
        """`sequence` and `absence`: two matchers, a window and optional correlation attributes."""
        spec: dict[str, Parse] = {
            "first": self.matcher,
            second: self.matcher,
            "within": self.positive_duration,
            "correlate": lambda item, where: self.names(item, where, MAX_CORRELATE),
        }
        parsed = self.fields(value, path, spec, ("first", second, "within"))
        if parsed is None:
            return None
        return build(parsed["first"], parsed[second], parsed["within"], tuple(parsed.get("correlate") or ()))

    def threshold(self, value: Any, path: str) -> model.Threshold | None:
        spec: dict[str, Parse] = {
            "match": self.matcher,
            "count": self.count,
            "sum": self.name,
            "at_least": self.number,
            "window": self.positive_duration,
            "correlate": lambda item, where: self.names(item, where, MAX_CORRELATE),
        }
        parsed = self.fields(value, path, spec, ("match", "window"))
        if not isinstance(value, dict):
            return None
        if "count" in value and "sum" in value:
            return self.reject(path, 'takes "count" or "sum", not both')
        if "count" not in value and "sum" not in value:
            return self.reject(path, 'needs "count" or "sum"')
        if "count" in value and "at_least" in value:
            return self.reject(_key(path, "at_least"), 'not allowed with "count" (the count is the threshold)')
        if "sum" in value and "at_least" not in value:
            return self.reject(_key(path, "at_least"), 'is required with "sum"')
        if parsed is None or None in parsed.values():
            return None
        correlate = tuple(parsed.get("correlate") or ())
        if "count" in parsed:
            return model.Threshold(parsed["match"], parsed["window"], at_least=parsed["count"], correlate=correlate)
        return model.Threshold(
            parsed["match"], parsed["window"], at_least=parsed["at_least"], sum_field=parsed["sum"], correlate=correlate
        )

    def count(self, value: Any, path: str) -> int | None:
        if _is_int(value) and value > MAX_COUNT:
            return self.reject(path, f"must be at most {MAX_COUNT}")
        return self.positive_int(value, path)  # type: ignore[no-any-return]

    def first(self, value: Any, path: str) -> model.First | None:
        matcher = self.matcher(value, path)
        return model.First(matcher) if matcher is not None else None

    # -- predicates --------------------------------------------------------------------------------

    def predicate(self, value: Any, path: str, depth: int, *, in_matcher: bool) -> model.Predicate | None:
        if depth > MAX_DEPTH:
            return self.reject(path, f"nests deeper than {MAX_DEPTH} levels")
        if not isinstance(value, dict):
            return self.reject(path, "must be an object")
        found = [key for key in value if key in PREDICATE_KINDS]
        if len(found) != 1:
            listing = f" (found: {_one_of(found)})" if found else ""
            return self.reject(path, f"takes exactly one of: {_one_of(PREDICATE_KINDS)}{listing}")
        kind = found[0]
        if in_matcher and kind in ("profile", "tag"):
            return self.reject(path, f'{kind} conditions belong in the rule\'s "if"')
        if kind in ("field", "profile"):
            return self.compare(value, path, kind)
        if kind == "tag":
            parsed = self.fields(value, path, {"tag": self.name}, ("tag",))
            return model.HasTag(parsed["tag"]) if parsed is not None else None

        def inner(item: Any, where: str) -> model.Predicate | None:
            return self.predicate(item, where, depth + 1, in_matcher=in_matcher)

        def items(listed: Any, where: str) -> tuple[model.Predicate, ...] | None:
            if not isinstance(listed, list):
                return self.reject(where, "must be a list")
            parsed = [inner(item, f"{where}[{index}]") for index, item in enumerate(listed)]
            return None if None in parsed else tuple(parsed)  # type: ignore[arg-type]

        parsed = self.fields(value, path, {kind: inner if kind == "not" else items}, (kind,))
        if parsed is None:
            return None
        combine: type[model.Not | model.AllOf | model.AnyOf] = {
            "not": model.Not,
            "all": model.AllOf,
            "any": model.AnyOf,
        }[kind]
        return combine(parsed[kind])

    def compare(self, value: dict[str, Any], path: str, source: str) -> model.Compare | None:
        spec: dict[str, Parse] = {source: self.name, "op": self.operator, "value": lambda item, where: item}
        parsed = self.fields(value, path, spec, (source, "op"))
        if parsed is None:
            return None
        op, where, operand = parsed["op"], _key(path, "value"), value.get("value")
        if op == "exists":
            if "value" in value and operand is not True:
                return self.reject(where, '"exists" takes no value (or true)')
            return model.Compare(source, parsed[source], op, None)  # type: ignore[arg-type]
        if "value" not in value:
            return self.reject(where, "is required")
        problem: str | None = None
        if op in ("==", "!=", "contains"):
            problem = _scalar_problem(operand)
        elif op in (">", ">=", "<", "<="):
            problem = _number_problem(operand)
        elif op == "prefix":
            problem = None if isinstance(operand, str) and operand else "must be a non-empty string"
        elif not isinstance(operand, list) or not operand:
            problem = "must be a non-empty list"
        elif len(operand) > MAX_IN_VALUES:
            problem = f"must have at most {MAX_IN_VALUES} items"
        else:
            item_problems = [(index, _scalar_problem(item)) for index, item in enumerate(operand)]
            for index, item_problem in item_problems:
                if item_problem is not None:
                    self.reject(f"{where}[{index}]", item_problem)
            if any(item_problem for _, item_problem in item_problems):
                return None
            operand = tuple(operand)
        if problem is not None:
            return self.reject(where, problem)
        return model.Compare(source, parsed[source], op, operand)  # type: ignore[arg-type]

    # -- actions -----------------------------------------------------------------------------------

    def action(self, value: Any, path: str) -> model.Action | None:
        if not isinstance(value, dict):
            return self.reject(path, "must be an object")
        if "action" not in value:
            return self.reject(_key(path, "action"), "is required")
        kind = self.choice(model.ACTION_TYPES, "an action")(value["action"], _key(path, "action"))
        if kind is None:
            return None  # without a known type the other fields cannot be judged
        own, required = self.action_fields[kind]
        spec: dict[str, Parse] = {"action": lambda item, where: item}
        spec |= {key: self.templated(parse) for key, parse in own.items()}
        spec["delay"] = lambda item, where: self.duration(item, where, 0, MAX_DELAY_MS)
        spec["max_staleness"] = lambda item, where: self.duration(item, where, MIN_STALENESS_MS, MAX_DURATION_MS)
        parsed = self.fields(value, path, spec, required)
        if parsed is None:
            return None
        if kind == "tag" and not (parsed.get("add") or parsed.get("remove")) and None not in parsed.values():
            return self.reject(path, 'needs a non-empty "add" or "remove"')
        # Deep copies: the document stays the caller's; the frozen Action must not change under it.
        params = {key: copy.deepcopy(item) for key, item in value.items() if key not in ACTION_OWN_FIELDS}
        delay, staleness = parsed.get("delay") or 0, parsed.get("max_staleness")
        return model.Action(kind, params, delay, tracked=has_link(params), max_staleness_ms=staleness)

    def templated(self, parse: Parse) -> Parse:
        """`parse`, then every string inside an accepted value checked for template errors."""

        def parse_and_check(value: Any, path: str) -> Any:
            parsed = parse(value, path)
            if parsed is not None:
                self.check_values(value, path)
            return parsed

        return parse_and_check

    def check_values(self, value: Any, path: str, depth: int = 0) -> None:
        """Templates in strings render, and the rest is JSON the action record can carry."""
        if isinstance(value, (dict, list)) and depth >= MAX_DEPTH:
            self.reject(path, f"nests deeper than {MAX_DEPTH} levels")
        elif isinstance(value, str):
            for message in find_template_errors(value):
                self.reject(path, message)
        elif isinstance(value, dict):
            for key, item in value.items():
                self.check_values(item, _key(path, key), depth + 1)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.check_values(item, f"{path}[{index}]", depth + 1)
        elif isinstance(value, float) and not math.isfinite(value):
            self.reject(path, "must be a finite number")
        elif value is not None and not isinstance(value, (bool, int, float)):
            self.reject(path, "must be a JSON value")  # e.g. a date from a YAML document

    def points_amount(self, value: Any, path: str) -> int | str | None:
        # One whole template (`"{{event.points}}"`) renders to the raw number when the action fires.
        if (_is_int(value) and value != 0) or (isinstance(value, str) and is_whole_template(value)):
            return value  # type: ignore[no-any-return]
        return self.reject(path, 'must be a non-zero integer or one template like "{{event.points}}"')

    def headers(self, value: Any, path: str) -> dict[str, str] | None:
        if not isinstance(value, dict):
            return self.reject(path, "must be an object")
        accepted = [self.string(item, _key(path, key)) is not None for key, item in value.items()]
        return value if all(accepted) else None
