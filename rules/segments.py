"""Segments: a named condition over a user's profile, tags and behaviour, with live membership.

`{"id": "big-spenders", "description"?: "...", "where": <condition>}` where the condition is a journey
branch condition (`rules.journey_schema`: `profile`, `tag`, `did` / `did_not` / `sum` in a window, and
`all` / `any` / `not`) without `field` leaves: a segment has no event of its own to read. Membership is
kept by the partition owner (`cep.segments`); this module validates and compiles definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from beacon.errors import ValidationError
from rules import model
from rules.journey_compiled import (
    BranchCheck,
    HistoryShape,
    behaviours_of,
    compile_condition,
    events_needed,
    history_id,
)
from rules.journey_model import BranchAll, BranchAny, BranchNot, Condition
from rules.journey_schema import _JourneyParser
from rules.schema import Parse, RulesetInvalid

SEGMENT_EVENTS = ("segment_entered", "segment_exited")


@dataclass(frozen=True, slots=True)
class Segment:
    """A validated segment. `version` is 0 until storage assigns one."""

    id: str
    where: Condition
    description: str = ""
    version: int = 0


def parse_segment(doc: object, *, segment_id: str | None = None, lateness_ms: int = 2000) -> Segment:
    """The validated segment in `doc`; raises RulesetInvalid listing every problem, each by its JSON path."""
    parser = _JourneyParser(lateness_ms)
    if segment_id is not None:
        parser.identifier(segment_id, "id")
    spec: dict[str, Parse] = {
        "id": parser.identifier,
        "description": parser.string,
        "where": lambda item, where: parser.condition(item, where, 1),
    }
    parsed = parser.fields(doc, "", spec, ("where",) if segment_id is not None else ("id", "where"))
    if parsed is not None:
        doc_id = parsed.get("id")
        if segment_id is not None and doc_id is not None and doc_id != segment_id:
            parser.reject("id", f"{doc_id!r} does not match the id in the URL {segment_id!r}")
        for path in _field_leaves(doc.get("where") if isinstance(doc, dict) else None, "where"):
            parser.reject(path, "a segment has no event of its own: use profile, tag or behaviour conditions")
    if parser.errors or parsed is None:
        raise RulesetInvalid(parser.errors or [ValidationError("invalid segment")])
    return Segment(parsed.get("id") or segment_id or "", parsed["where"], parsed.get("description") or "")


def load_segment(document: object, *, segment_id: str | None, lateness_ms: int, version: int = 0) -> Segment:
    """Validate a segment document fully (422s), with the version storage gave it."""
    return replace(parse_segment(document, segment_id=segment_id, lateness_ms=lateness_ms), version=version)


def _field_leaves(value: Any, path: str) -> list[str]:
    """Paths of `field` comparisons in a condition document (behaviour matchers' own `where` excepted)."""
    if not isinstance(value, dict):
        return []
    if "field" in value:
        return [path]
    found = []
    for kind in ("all", "any"):
        if isinstance(value.get(kind), list):
            for index, item in enumerate(value[kind]):
                found += _field_leaves(item, f"{path}.{kind}[{index}]")
    if "not" in value:
        found += _field_leaves(value["not"], f"{path}.not")
    return found


@dataclass(frozen=True, slots=True)
class Window:
    """One behaviour condition's window over a shape's kept events: membership may change when an event
    leaves it (at `ts + within_ms + 1`)."""

    shape: str
    within_ms: int


# eq=False: identity equality and hashing, as the other compiled forms.
@dataclass(frozen=True, slots=True, eq=False)
class CompiledSegment:
    """A segment ready to evaluate: its condition as a closure, the behaviour shapes it reads (kept per
    user like journeys' histories), its windows, and what can change it."""

    segment: Segment
    check: BranchCheck
    shapes: tuple[HistoryShape, ...]
    windows: tuple[Window, ...]
    reads_profile: bool
    reads_tags: bool
    # The version that created the segment (after its last delete): users' memberships are kept under
    # (id, born), so a segment re-created under a deleted id starts with no member.
    born: int = 1

    @classmethod
    def build(cls, segment: Segment, lateness_ms: int = 2000, born: int = 1) -> CompiledSegment:
        """Compile a validated segment."""
        behaviours = behaviours_of(segment.where)
        shapes: dict[str, HistoryShape] = {}
        for behaviour in behaviours:
            shape_id = history_id(behaviour.match, behaviour.sum_field)
            known = shapes.get(shape_id)
            # The newest count + 1 events decide both the comparison and when it next changes.
            keep = events_needed(behaviour)
            shapes[shape_id] = HistoryShape(
                shape_id,
                behaviour.match,
                behaviour.sum_field,
                max(behaviour.within_ms, known.window_ms if known else 0),
                max(keep, known.keep if known else 0),
                lateness_ms,
            )
        leaves = _leaves(segment.where)
        return cls(
            segment=segment,
            check=compile_condition(segment.where),
            shapes=tuple(shapes.values()),
            windows=tuple(
                Window(history_id(behaviour.match, behaviour.sum_field), behaviour.within_ms)
                for behaviour in behaviours
            ),
            reads_profile=any(isinstance(leaf, model.Compare) for leaf in leaves),
            reads_tags=any(isinstance(leaf, model.HasTag) for leaf in leaves),
            born=born,
        )


def _leaves(condition: Condition) -> list[Condition]:
    found: list[Condition] = []
    pending = [condition]
    while pending:
        item = pending.pop()
        if isinstance(item, BranchAll | BranchAny | model.AllOf | model.AnyOf):
            pending.extend(item.items)
        elif isinstance(item, BranchNot | model.Not):
            pending.append(item.item)
        else:
            found.append(item)
    return found
