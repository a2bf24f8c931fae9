"""The per-process view of active rulesets and journeys: parsed and compiled, refreshed when storage changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from beacon import metrics
from beacon.errors import ValidationError

# Re-exported: cep.evaluate and cep.dryrun import the compiled form from here.
from rules.compiled import CompiledRuleset as CompiledRuleset
from rules.item_indexes import ItemIndex, parse_item_index
from rules.journey_compiled import CompiledJourney, JourneyVersions
from rules.journey_model import Journey
from rules.journey_schema import parse_journey
from rules.model import Ruleset
from rules.plans import Plan, parse_plan, plan_journey, plan_journey_id
from rules.schema import parse_ruleset
from rules.segments import CompiledSegment, load_segment
from rules.store import ITEM_INDEXES, JOURNEYS, PLANS, SEGMENTS, RulesetStore, StoredRuleset

log = logging.getLogger("beacon.rules")


def compile_ruleset(document: object, *, ruleset_id: str | None, lateness_ms: int, version: int = 0) -> Ruleset:
    """Validate a document fully (422s from `rules.schema`); every valid ruleset compiles."""
    return replace(parse_ruleset(document, ruleset_id=ruleset_id, default_lateness_ms=lateness_ms), version=version)


def load_journey(document: object, *, journey_id: str | None, lateness_ms: int, version: int = 0) -> Journey:
    """Validate a journey document fully (422s from `rules.journey_schema`)."""
    return replace(parse_journey(document, journey_id=journey_id, default_lateness_ms=lateness_ms), version=version)


class RulesetRegistry:
    """Compiled active rulesets and journeys (every kept version of each journey); `refresh()` is cheap
    when nothing changed (one GET of the shared revision counter)."""

    def __init__(self, store: RulesetStore, default_lateness_ms: int) -> None:
        self._store = store
        self._journey_store = RulesetStore(store.redis, JOURNEYS)
        self._lateness = default_lateness_ms
        self._revision = -1
        self._compiled: dict[str, CompiledRuleset] = {}
        # journey id -> its kept versions, oldest first, the active one last
        self._journeys: dict[str, JourneyVersions] = {}
        self._journey_versions: dict[tuple[str, int], CompiledJourney] = {}
        self._segment_store = RulesetStore(store.redis, SEGMENTS)
        self._segments: dict[str, CompiledSegment] = {}
        self._item_store = RulesetStore(store.redis, ITEM_INDEXES)
        self._item_indexes: dict[str, ItemIndex] = {}
        self._plan_store = RulesetStore(store.redis, PLANS)
        self._plans: dict[str, Plan] = {}  # active version of each plan
        self._plan_journeys: dict[str, JourneyVersions] = {}  # by journey id `plan:<id>`
        self._plan_versions: dict[tuple[str, int], CompiledJourney] = {}
        self._lock = asyncio.Lock()
        self._reading: asyncio.Task[int] | None = None  # a revision read not sent yet, shared by its callers

    def current(self) -> list[CompiledRuleset]:
        """The compiled rulesets as of the last refresh."""
        return list(self._compiled.values())

    def journeys(self) -> list[JourneyVersions]:
        """Per active journey, its kept versions with the active one last, as of the last refresh; plans'
        journeys (`rules.plans.plan_journey`) included."""
        return [*self._journeys.values(), *self._plan_journeys.values()]

    def plans(self) -> list[Plan]:
        """The active version of every plan, as of the last refresh."""
        return list(self._plans.values())

    def item_indexes(self) -> list[ItemIndex]:
        """The declared item indexes as of the last refresh."""
        return list(self._item_indexes.values())

    def segments(self) -> list[CompiledSegment]:
        """The active segments as of the last refresh."""
        return list(self._segments.values())

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
                    # In a thread: a large ruleset takes a few hundred ms to parse and compile, which on the
                    # event loop stalled every request and partition of the process (issue 15).
                    ruleset, fresh[item.id] = await asyncio.to_thread(self._compile_ruleset, item)
                except ValidationError as exc:
                    log.error("stored ruleset %s v%s no longer validates: %s", item.id, item.version, exc)
                    continue
                log.info("compiled ruleset %s v%s (%d rules)", item.id, item.version, len(ruleset.rules))
            self._journeys, self._journey_versions = await self._refresh_versions(
                self._journey_store, self._journeys, self._journey_versions, self._load_journey
            )
            self._plans, self._plan_journeys, self._plan_versions = await self._refresh_plans()
            self._segments = await self._refresh_segments()
            self._item_indexes = await self._refresh_item_indexes()
            self._compiled, self._revision = fresh, revision
            metrics.set_active_rulesets(len(fresh))
            return self.current()

    def _compile_ruleset(self, item: StoredRuleset) -> tuple[Ruleset, CompiledRuleset]:
        ruleset = parse_ruleset(item.document, ruleset_id=item.id, default_lateness_ms=self._lateness)
        return ruleset, CompiledRuleset.build(replace(ruleset, version=item.version))

    def _load_journey(self, item_id: str, version: int, document: dict[str, Any]) -> CompiledJourney | None:
        journey = load_journey(document, journey_id=item_id, lateness_ms=self._lateness, version=version)
        log.info("compiled journey %s v%s (%d nodes)", item_id, version, len(journey.nodes))
        return CompiledJourney.build(journey)

    def _load_plan_journey(self, item_id: str, version: int, document: dict[str, Any]) -> CompiledJourney | None:
        journey = plan_journey(replace(parse_plan(document, plan_id=item_id), version=version))
        return CompiledJourney.build(journey) if journey is not None else None

    async def _refresh_versions(
        self,
        store: RulesetStore,
        previous: dict[str, JourneyVersions],
        compiled_before: dict[tuple[str, int], CompiledJourney],
        load: Callable[[str, int, dict[str, Any]], CompiledJourney | None],
        stored: list[StoredRuleset] | None = None,
    ) -> tuple[dict[str, JourneyVersions], dict[tuple[str, int], CompiledJourney]]:
        """Every active document's kept versions as journeys (versions compiled before are reused), keyed by
        journey id; returns them and every compiled version by (document id, version)."""
        if stored is None:
            _, stored = await store.active()
        fresh: dict[str, JourneyVersions] = {}
        known: dict[tuple[str, int], CompiledJourney] = {}
        for item in stored:
            existing = previous.get(item.id)
            if existing is not None and existing.active.journey.version == item.version:
                fresh[item.id] = existing
                known.update(((item.id, c.journey.version), c) for c in existing.versions)
                continue
            documents = await store.kept(item.id)
            documents[item.version] = item.document
            versions = []
            for version in sorted(documents):
                compiled = compiled_before.get((item.id, version))
                if compiled is None:
                    try:
                        compiled = load(item.id, version, documents[version])
                    except ValidationError as exc:
                        log.error("stored %s %s v%s no longer validates: %s", store.what, item.id, version, exc)
                        continue
                    if compiled is None:
                        continue
                known[(item.id, version)] = compiled
                if item.born <= version <= item.version:
                    versions.append(compiled)
            if versions and versions[-1].journey.version == item.version:
                fresh[item.id] = JourneyVersions(item.born, tuple(versions))
        return fresh, known

    async def _refresh_plans(
        self,
    ) -> tuple[dict[str, Plan], dict[str, JourneyVersions], dict[tuple[str, int], CompiledJourney]]:
        """Every active plan (parsed) and the journeys they run as, keyed by journey id `plan:<id>`."""
        _, stored = await self._plan_store.active()
        plans: dict[str, Plan] = {}
        for item in stored:
            known = self._plans.get(item.id)
            if known is not None and known.version == item.version:
                plans[item.id] = known
                continue
            try:
                plan = parse_plan(item.document, plan_id=item.id)
                plans[item.id] = replace(plan, version=item.version, stored_ms=item.updated_ms)
            except ValidationError as exc:
                log.error("stored plan %s v%s no longer validates: %s", item.id, item.version, exc)
        previous = {plan_id.removeprefix("plan:"): kept for plan_id, kept in self._plan_journeys.items()}
        by_plan, compiled = await self._refresh_versions(
            self._plan_store, previous, self._plan_versions, self._load_plan_journey, stored
        )
        return plans, {plan_journey_id(plan_id): kept for plan_id, kept in by_plan.items()}, compiled

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

    async def _refresh_segments(self) -> dict[str, CompiledSegment]:
        """Every active segment, compiled; unchanged versions are reused."""
        _, stored = await self._segment_store.active()
        fresh: dict[str, CompiledSegment] = {}
        for item in stored:
            existing = self._segments.get(item.id)
            if existing is not None and (existing.segment.version, existing.born) == (item.version, item.born):
                fresh[item.id] = existing
                continue
            try:
                segment = load_segment(
                    item.document, segment_id=item.id, lateness_ms=self._lateness, version=item.version
                )
            except ValidationError as exc:
                log.error("stored segment %s v%s no longer validates: %s", item.id, item.version, exc)
                continue
            fresh[item.id] = CompiledSegment.build(segment, self._lateness, item.born)
            log.info("compiled segment %s v%s", item.id, item.version)
        return fresh

    async def _refresh_item_indexes(self) -> dict[str, ItemIndex]:
        """Every declared item index (small documents: parsed afresh)."""
        _, stored = await self._item_store.active()
        fresh: dict[str, ItemIndex] = {}
        for item in stored:
            try:
                fresh[item.id] = parse_item_index(item.document, attr=item.id, version=item.version)
            except ValidationError as exc:
                log.error("stored item index %s v%s no longer validates: %s", item.id, item.version, exc)
        return fresh

    def close(self) -> None:
        """Forget every compiled ruleset and journey (the next refresh compiles afresh)."""
        self._compiled.clear()
        self._journeys.clear()
        self._journey_versions.clear()
        self._segments.clear()
        self._item_indexes.clear()
        self._plans.clear()
        self._plan_journeys.clear()
        self._plan_versions.clear()
        self._revision = -1


def _retrieved(task: asyncio.Task[int]) -> None:
    # Every caller may have been cancelled: the failure is theirs to see, not the event loop's to log.
    if not task.cancelled():
        task.exception()
