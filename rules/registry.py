"""The per-process view of active rulesets: parsed and compiled, refreshed when storage changes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from beacon import metrics
from beacon.errors import ValidationError

# Re-exported: cep.evaluate and cep.dryrun import the compiled form from here.
from rules.compiled import CompiledRuleset as CompiledRuleset
from rules.model import Ruleset
from rules.schema import parse_ruleset
from rules.store import RulesetStore

log = logging.getLogger("beacon.rules")


def compile_ruleset(document: object, *, ruleset_id: str | None, lateness_ms: int, version: int = 0) -> Ruleset:
    """Validate a document fully (422s from `rules.schema`); every valid ruleset compiles."""
    return replace(parse_ruleset(document, ruleset_id=ruleset_id, default_lateness_ms=lateness_ms), version=version)


class RulesetRegistry:
    """Compiled active rulesets; `refresh()` is cheap when nothing changed (one GET)."""

    def __init__(self, store: RulesetStore, default_lateness_ms: int) -> None:
        self._store = store
        self._lateness = default_lateness_ms
        self._revision = -1
        self._compiled: dict[str, CompiledRuleset] = {}
        self._lock = asyncio.Lock()
        self._reading: asyncio.Task[int] | None = None  # a revision read not sent yet, shared by its callers

    def current(self) -> list[CompiledRuleset]:
        """The compiled rulesets as of the last refresh."""
        return list(self._compiled.values())

    def get(self, ruleset_id: str) -> CompiledRuleset | None:
        """One compiled ruleset by id, if active."""
        return self._compiled.get(ruleset_id)

    async def refresh(self) -> list[CompiledRuleset]:
        """Recompile what changed since the last call; returns the current rulesets."""
        if await self._stored_revision() == self._revision:
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
            self._compiled, self._revision = fresh, revision
            metrics.set_active_rulesets(len(fresh))
            return self.current()

    async def _stored_revision(self) -> int:
        """The stored revision, read by one GET that every caller asking before it is sent shares.

        Each caller needs a read made after its call: a ruleset stored before an event was read applies
        to that event. A read still queued (its task has not started) is such a read for every caller
        that finds it. A process's partition owners tend to wake together (one ingest request appends
        to every partition), so they share one GET per wake-up instead of making one each per batch.
        """
        reading = self._reading
        if reading is None:
            reading = self._reading = asyncio.ensure_future(self._read_revision())
            reading.add_done_callback(_retrieved)
        return await asyncio.shield(reading)

    async def _read_revision(self) -> int:
        self._reading = None  # from here on the GET is sent: later callers need a later read
        return await self._store.revision()

    def close(self) -> None:
        """Forget every compiled ruleset (the next refresh compiles afresh)."""
        self._compiled.clear()
        self._revision = -1


def _retrieved(task: asyncio.Task[int]) -> None:
    # Every caller may have been cancelled: the failure is theirs to see, not the event loop's to log.
    if not task.cancelled():
        task.exception()
