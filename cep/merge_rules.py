"""How one user's state is merged into another's (an identity merge, `cep.merges`): pure functions of the two
states, the rule index and `now`, writing timers, counters and trace entries to the evaluator's `Effects`.

The rules (docs/audiences.md, "Identities"):
- profile: the target's values win; the source fills the attributes the target lacks (up to MAX_PROFILE_ATTRS);
- tags: the union (up to MAX_TAGS: the target's are always kept);
- dedupe ids: the union, so an event either user processed is a duplicate for the merged user;
- behaviour: every pattern's lists (sequence, absence, threshold windows, behaviour history) are merged by
  time; the watermark is the later one. A source's pending absence that an event of the target covers (or
  the reverse) is cancelled; the others keep their deadline, under the target's name;
- re-entry marks: the most restrictive (the later last firing, the later expiry, `once` wins); first-seen:
  the earlier; journey entry counts: added up;
- journey instances: the target's win per journey and key; a source instance whose key the target lacks
  moves over (its wait keeps its due time), the others are cancelled with the trace reason `merged`;
- segment memberships: the source's are dropped in its own partition; the merged state is evaluated
  against every active segment at `now` (by `cep.merges`).
Merging fires no rule by itself: a pattern that only the two histories together complete is seen by the
merged user's next event (a threshold then counts both users' events).
"""

from __future__ import annotations

from bisect import insort
from typing import Any

from cep.evaluator import Effects, absence_timer
from cep.journeys import journey_timer
from cep.rule_index import RuleIndex
from cep.segments import SegmentChange, segment_timer
from cep.user_record import NEVER, JourneyMarks, PatternState, UserState
from rules.model import Absence

MAX_PROFILE_ATTRS = 256  # as PATCH /v1/users/{id} bounds a profile
MAX_TAGS = 256
MAX_MERGED_FROM = 32  # merged users remembered per user (their traces are shown with its own)


def merge_state(
    target: UserState, source: UserState, source_id: str, index: RuleIndex, user_id: str, effects: Effects
) -> dict[str, Any]:
    """Merge `source` (the user `source_id`) into `target` (the user `user_id`) in place; returns what the
    trace says about it."""
    for name, value in source.profile.items():
        if name not in target.profile and len(target.profile) < MAX_PROFILE_ATTRS:
            target.profile[name] = value
    for tag in sorted(source.tags - target.tags):
        if len(target.tags) >= MAX_TAGS:
            break
        target.tags.add(tag)
    if source.seen:
        target.seen = dict(sorted({**source.seen, **target.seen}.items(), key=_second))
        target.seen_packed = None
    target.last_seen = max(target.last_seen, source.last_seen)
    for key, (ts, expires) in source.fired.items():
        mine = target.fired.get(key)
        target.fired[key] = [ts, expires] if mine is None else [max(ts, mine[0]), _later(expires, mine[1])]
    for key, ts in source.first.items():
        target.first[key] = min(ts, target.first.get(key, ts))
    _merge_patterns(target, source, index, user_id, effects)
    moved, cancelled = _merge_journeys(target, source, index, user_id, effects)
    merged_from = [*target.merged_from, *source.merged_from, source_id]
    target.merged_from = list(dict.fromkeys(merged_from))[-MAX_MERGED_FROM:]
    return {"moved_instances": moved, "cancelled_instances": cancelled}


def release_source(state: UserState, index: RuleIndex, user_id: str, effects: Effects) -> None:
    """What a merged-away user leaves in its own partition: its absence, journey and segment timers are
    removed, its segment memberships ended and its waiting instances no longer counted there (the target
    counts those it takes over). Delayed actions stay: they are in the user's ledger and go out as planned."""
    for state_id, pattern in state.patterns.items():
        for correlation, pending in pattern.parts.get("p", {}).items():
            for item in pending:
                effects.timers_removed.append(absence_timer(user_id, state_id, correlation, item[1]))
    for short, marks in state.journeys.items():
        entry = index.journey_by_short.get(short)
        if entry is None:
            continue  # a deleted journey: its timers do nothing when they fire
        for inst in marks.instances.values():
            compiled = entry.versions.get(inst.version)
            if inst.due:
                effects.timers_removed.append(journey_timer(user_id, entry.id, inst))
                if compiled is not None and inst.node >= 0:
                    _count(effects, entry.id, inst.version, compiled.node_ids[inst.node], "waiting", -1)
    for short, (mark, due, _) in state.segments.items():
        segment = index.segment_by_short.get(short)
        if segment is None:
            continue
        if mark > 0:
            effects.segment_changes.append(SegmentChange(segment.id, user_id, False))
        if due:
            effects.segment_timers[segment_timer(user_id, segment.id)] = 0


def _merge_patterns(target: UserState, source: UserState, index: RuleIndex, user_id: str, effects: Effects) -> None:
    for state_id, theirs in source.patterns.items():
        mine = target.patterns.get(state_id)
        from_source: set[str] = {item[1] for lists in theirs.parts.get("p", {}).values() for item in lists}
        if mine is None:
            mine = target.patterns[state_id] = PatternState(theirs.watermark, theirs.expires_ms, theirs.parts)
        else:
            mine.watermark = max(mine.watermark, theirs.watermark)
            mine.expires_ms = max(mine.expires_ms, theirs.expires_ms)
            mine.floor_a = mine.floor_b = None  # unknown: the next prune visits the lists
            for role, lists in theirs.parts.items():
                into = mine.parts.setdefault(role, {})
                for correlation, items in lists.items():
                    have = into.get(correlation)
                    if have is None:
                        into[correlation] = items
                    elif role == "p":
                        ids = {item[1] for item in have}
                        for item in items:
                            if item[1] not in ids:
                                insort(have, item, key=_first)
                    else:
                        have[:] = sorted(have + items, key=_stamp)
        mine.packed = None
        entry = index.by_state.get(state_id)
        if entry is not None and isinstance(entry.rule.when, Absence):
            _settle_absences(mine, entry.rule.when, entry.rule.lateness_ms, state_id, from_source, user_id, effects)


def _settle_absences(
    pattern: PatternState,
    when: Absence,
    lateness_ms: int,
    state_id: str,
    from_source: set[str],
    user_id: str,
    effects: Effects,
) -> None:
    """Pending As of the merged lists: cancelled when a B of the other user falls in their window; the
    source's that stay pending get their deadline under the target's name."""
    pending_lists = pattern.parts.get("p", {})
    for correlation in list(pending_lists):
        stamps = pattern.parts.get("b", {}).get(correlation, [])
        kept = []
        for item in pending_lists[correlation]:
            a_ts, a_id = item[0], item[1]
            covered = any(a_ts <= ts <= a_ts + when.within_ms for ts in stamps)
            if covered:
                if a_id not in from_source:
                    effects.timers_removed.append(absence_timer(user_id, state_id, correlation, a_id))
                continue
            kept.append(item)
            if a_id in from_source:
                due = a_ts + when.within_ms + lateness_ms
                effects.timers_added.append((due, absence_timer(user_id, state_id, correlation, a_id)))
        if kept:
            pending_lists[correlation] = kept
        else:
            del pending_lists[correlation]
    if "p" in pattern.parts and not pattern.parts["p"]:
        del pattern.parts["p"]


def _merge_journeys(
    target: UserState, source: UserState, index: RuleIndex, user_id: str, effects: Effects
) -> tuple[list[str], list[str]]:
    moved: list[str] = []
    cancelled: list[str] = []
    for short, theirs in source.journeys.items():
        entry = index.journey_by_short.get(short)
        if entry is None:
            continue  # a deleted journey: its marks and instances are gone for everyone
        mine = target.journeys.setdefault(short, JourneyMarks())
        for key, (entries, last, expires) in theirs.entered.items():
            have = mine.entered.get(key)
            mine.entered[key] = (
                [entries, last, expires]
                if have is None
                else [have[0] + entries, max(have[1], last), _later(have[2], expires)]
            )
        for key, inst in theirs.instances.items():
            name = f"{entry.id}[{key}]" if key else entry.id
            compiled = entry.versions.get(inst.version)
            if key in mine.instances or compiled is None:
                cancelled.append(name)
                _count(effects, entry.id, inst.version, "", "cancelled:merged", 1)
                if effects.trace is not None:
                    effects.trace.append(
                        (
                            user_id,
                            {
                                "kind": "journey",
                                "ts": inst.step_ts,
                                "journey": entry.id,
                                "version": inst.version,
                                "what": "cancelled",
                                "reason": "merged",
                                "key": key,
                            },
                        )
                    )
                continue
            mine.instances[key] = inst
            moved.append(name)
            if inst.due and inst.node >= 0:
                effects.timers_added.append((inst.due, journey_timer(user_id, entry.id, inst)))
                _count(effects, entry.id, inst.version, compiled.node_ids[inst.node], "waiting", 1)
        if not mine.entered and not mine.instances:
            del target.journeys[short]
    return moved, cancelled


def _count(effects: Effects, journey_id: str, version: int, node: str, what: str, delta: int) -> None:
    name = (journey_id, version, node, what)
    effects.journey_counts[name] = effects.journey_counts.get(name, 0) + delta


def _later(left: int, right: int) -> int:
    """The later of two expiries, where NEVER (kept for ever) is the latest."""
    return NEVER if NEVER in (left, right) else max(left, right)


def _second(item: tuple[int, int]) -> int:
    return item[1]


def _first(item: list[Any]) -> Any:
    return item[0]


def _stamp(item: Any) -> Any:
    return item[0] if isinstance(item, list) else item
