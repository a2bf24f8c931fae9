"""The per-process view of active rulesets: parsed and compiled, refreshed when storage changes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from beacon import metrics
from beacon.errors import ValidationError
from rules.engine import ConditionEngine
from rules.model import Rule, Ruleset
from rules.schema import parse_ruleset
from rules.store import RulesetStore

log = logging.getLogger("beacon.rules")


def pattern_state_id(ruleset_id: str, rule: Rule) -> str:
    """Names a rule's pattern state; changes when the pattern changes, so a new version starts afresh
    on a changed pattern but keeps its state when only conditions or actions were edited."""
    shape = json.dumps([ruleset_id, rule.id, repr(rule.when), rule.lateness_ms], sort_keys=True)
    return hashlib.sha256(shape.encode()).hexdigest()[:12]


def reads_profile(rule: Rule) -> bool:
    """Whether firing the rule reads the profile (a condition, or a profile template in its actions)."""
    return rule.condition is not None or "profile." in repr([action.params for action in rule.actions])


@dataclass(slots=True)
class CompiledRuleset:
    """One ruleset version with its condition engine (one durable_rules ruleset per version)."""

    ruleset: Ruleset
    engine: ConditionEngine
    rules: dict[str, Rule] = field(default_factory=dict)
    # Per-rule facts the worker needs for every event, derived once here rather than per event.
    state_ids: dict[str, str] = field(default_factory=dict)
    profile_rules: frozenset[str] = frozenset()
    # Batches in flight that use the engine: a replaced version is freed only once this is 0,
    # because a batch awaits Redis between its two engine stages.
    users: int = 0
    retired: bool = False

    @classmethod
    def build(cls, ruleset: Ruleset) -> CompiledRuleset:
        """Compile a validated ruleset."""
        return cls(
            ruleset=ruleset,
            engine=ConditionEngine(ruleset),
            rules={rule.id: rule for rule in ruleset.rules},
            state_ids={rule.id: pattern_state_id(ruleset.id, rule) for rule in ruleset.rules},
            profile_rules=frozenset(rule.id for rule in ruleset.rules if reads_profile(rule)),
        )

    def close(self) -> None:
        """Free the engine's ruleset."""
        self.engine.close()

    def release(self) -> None:
        """A batch is done with this version; frees it if it was retired meanwhile."""
        self.users -= 1
        if self.retired and self.users == 0:
            self.close()

    def retire(self) -> None:
        """This version is no longer active: free it now or when its last batch releases it."""
        self.retired = True
        if self.users == 0:
            self.close()


def compile_ruleset(document: object, *, ruleset_id: str | None, lateness_ms: int, version: int = 0) -> Ruleset:
    """Validate a document fully: the schema, then the condition engine's own limits (both 422s)."""
    ruleset = replace(parse_ruleset(document, ruleset_id=ruleset_id, default_lateness_ms=lateness_ms), version=version)
    ConditionEngine(ruleset).close()
    return ruleset


class RulesetRegistry:
    """Compiled active rulesets; `refresh()` is cheap when nothing changed (one GET)."""

    def __init__(self, store: RulesetStore, default_lateness_ms: int) -> None:
        self._store = store
        self._lateness = default_lateness_ms
        self._revision = -1
        self._compiled: dict[str, CompiledRuleset] = {}
        self._lock = asyncio.Lock()

    def current(self) -> list[CompiledRuleset]:
        """The compiled rulesets as of the last refresh."""
        return list(self._compiled.values())

    @contextmanager
    def borrow(self) -> Iterator[list[CompiledRuleset]]:
        """The current rulesets, kept alive until the block ends even if replaced meanwhile."""
        borrowed = self.current()
        for compiled in borrowed:
            compiled.users += 1
        try:
            yield borrowed
        finally:
            for compiled in borrowed:
                compiled.release()

    def get(self, ruleset_id: str) -> CompiledRuleset | None:
        """One compiled ruleset by id, if active."""
        return self._compiled.get(ruleset_id)

    async def refresh(self) -> list[CompiledRuleset]:
        """Recompile what changed since the last call; returns the current rulesets."""
        if await self._store.revision() == self._revision:
            return self.current()
        async with self._lock:
            revision, stored = await self._store.active()
            if revision == self._revision:
                return self.current()
            fresh: dict[str, CompiledRuleset] = {}
            for item in stored:
                existing = self._compiled.get(item.id)
                if existing is not None and existing.ruleset.version == item.version:
                    fresh[item.id] = existing
                    continue
                try:
                    ruleset = parse_ruleset(item.document, ruleset_id=item.id, default_lateness_ms=self._lateness)
                    fresh[item.id] = CompiledRuleset.build(replace(ruleset, version=item.version))
                except ValidationError as exc:
                    log.error("stored ruleset %s v%s no longer validates: %s", item.id, item.version, exc)
                    continue
                log.info("compiled ruleset %s v%s (%d rules)", item.id, item.version, len(ruleset.rules))
            for ruleset_id, old in self._compiled.items():
                if fresh.get(ruleset_id) is not old:
                    old.retire()
            self._compiled, self._revision = fresh, revision
            metrics.set_active_rulesets(len(fresh))
            return self.current()

    def close(self) -> None:
        """Free every engine."""
        for compiled in self._compiled.values():
            compiled.retire()
        self._compiled.clear()
        self._revision = -1
