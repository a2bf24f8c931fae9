"""The active rulesets as the evaluator reads them: matchers by event type, rules by pattern state id.

Built once per registry revision, shared by live processing, dry-runs and backtests.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rules.compiled import CompiledRuleset
from rules.model import Rule
from rules.predicates import Check


def rule_key(ruleset_id: str, rule_id: str) -> str:
    """Re-entry is tracked per ruleset and rule, not per version: a replaced ruleset keeps its history."""
    return f"{ruleset_id}/{rule_id}"


def short_rule_key(key: str) -> str:
    """What users' records store for a rule key (re-entry, first-seen): 8 characters instead of ~30."""
    return base64.urlsafe_b64encode(hashlib.blake2b(key.encode(), digest_size=6).digest()).decode()


@dataclass(frozen=True, slots=True, eq=False)
class RuleEntry:
    """One live rule with what evaluation needs of it, derived once."""

    compiled: CompiledRuleset
    rule: Rule
    key: str  # rule key: "<ruleset id>/<rule id>"
    short_key: str  # the rule key as users' records store it
    state_id: str  # names the rule's pattern shape (see rules.compiled.pattern_state_id)
    condition: Check
    renderers: tuple[Callable[[Mapping[str, Any]], Any], ...]
    trigger_fields: frozenset[str]


@dataclass(frozen=True, slots=True)
class RoleEntry:
    """A matcher of one rule for one event type: the role it plays and its `where`."""

    entry: RuleEntry
    role: str
    where: Check


class RuleIndex:
    """Matchers by event type (by descending rule priority, then ruleset and rule order), rules by state id."""

    def __init__(self, rulesets: Sequence[CompiledRuleset]) -> None:
        self.rulesets = {compiled.ruleset.id: compiled for compiled in rulesets}
        self.by_state: dict[str, RuleEntry] = {}
        self.by_short_key: dict[str, RuleEntry] = {}
        ordered: list[tuple[int, int, RoleEntry, str]] = []
        for compiled in rulesets:
            entries = {
                rule.id: RuleEntry(
                    compiled,
                    rule,
                    rule_key(compiled.ruleset.id, rule.id),
                    short_rule_key(rule_key(compiled.ruleset.id, rule.id)),
                    compiled.state_ids[rule.id],
                    compiled.conditions[rule.id],
                    compiled.renderers[rule.id],
                    compiled.trigger_fields[rule.id],
                )
                for rule in compiled.ruleset.rules
            }
            self.by_state.update((entry.state_id, entry) for entry in entries.values())
            self.by_short_key.update((entry.short_key, entry) for entry in entries.values())
            for event_type, matches in compiled.matchers.items():
                for match in matches:
                    role = RoleEntry(entries[match.rule.id], match.role, match.where)
                    ordered.append((-match.rule.priority, len(ordered), role, event_type))
        ordered.sort(key=lambda item: (item[0], item[1]))
        by_type: dict[str, list[RoleEntry]] = {}
        for _, _, role, event_type in ordered:
            by_type.setdefault(event_type, []).append(role)
        self.by_type: dict[str, tuple[RoleEntry, ...]] = {key: tuple(value) for key, value in by_type.items()}
