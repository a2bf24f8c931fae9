"""One owned partition: read a batch (stream entries after the committed position, plus due timers),
evaluate it in Python against cached user state, commit its effects in one atomic call.

Identity merges run here too (`cep.merges`): a merge step is a stream item committed with its batch, and
what the batch hands to other partitions goes out through the partition's handoff stream, which the owner
relays after each commit that wrote to it (`cep.handoff`).

Redis is the source of truth and the owner a cache: a batch is evaluated on the cached states, and if
its commit fails for any reason the whole cache is dropped and the batch read again from the last
committed position — so the cache never holds anything Redis does not. A FENCED commit means another
process owns the partition now: the loop ends and the worker forgets the partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster

from beacon import metrics
from beacon.clock import Clock
from beacon.pause import pause
from beacon.redis_errors import describe, is_redis_trouble
from cep import archive_stream, handoff, merges, streams, timers
from cep.commit import CommitPlan, FencedError, StalePositionError, commit
from cep.evaluator import Effects, Evaluator, timer_user
from cep.events import Event, ProfilePatch
from cep.journeys import counter_field
from cep.links import link_key, link_record
from cep.merge_items import MergeIn, MergeOut
from cep.rule_index import RuleIndex
from cep.trace import encode_batch
from cep.user_record import UserState, decode_user_state, encode_user_state
from cep.user_state import load_states

log = logging.getLogger("beacon.worker")

TRIM_EVERY_S = 10.0
JOURNEY_OUTCOMES = ("entered", "exited", "converted", "completed")  # counted in metrics (waiting: stats)
NO_TIMERS = 2**63  # the next due time when the partition has no timer at all


@dataclass(frozen=True, slots=True)
class OwnerLimits:
    """Batch size, blocking read time, cache bound and retention, from settings."""

    batch_size: int  # events (and due timers) per batch
    block_ms: int
    cache_users: int
    dedupe_horizon_ms: int
    ledger_retention_ms: int
    trace_depth: int = 0  # trace entries kept per user (0: no trace)
    trace_ttl_ms: int = 3 * 86_400_000  # a user's trace expires this long after its last entry
    trace_matches: bool = False  # also trace each event's rule matches (see `Effects.trace_matches`)
    partitions: int = 0  # the partition count, to relay handoffs to other partitions (0: no relay)
    archive: bool = False  # append each batch's events and actions to the archive stream (cep.archive_stream)


class PartitionOwner:
    """Processes one partition while this process holds its lease under `epoch`."""

    def __init__(
        self,
        redis: Redis,
        partition: int,
        epoch: int,
        clock: Clock,
        limits: OwnerLimits,
        rule_index: Callable[[], Awaitable[RuleIndex]],
    ) -> None:
        self._redis = redis
        self.partition = partition
        self.epoch = epoch
        self._clock = clock
        self._limits = limits
        self._rule_index = rule_index
        self._cache: OrderedDict[str, UserState] = OrderedDict()
        self._position: bytes | None = None  # None: read it from Redis before the next batch
        self._items_per_entry = 1.0  # running estimate, to size reads in entries
        # The earliest due time of the partition's timers, None when unknown (at start, after any failure,
        # and after a batch that took due timers). Only this owner's commits add timers, so while it is
        # known the owner skips the timer query until it passes: one Redis call less per batch.
        self._next_due: int | None = None
        # Whether the handoff stream may hold entries to relay: at start and after any failure (a crash or a
        # failed relay may have left some), and after a commit that wrote some.
        self._relay_due = True
        self.processed = 0

    async def run(self, halt: asyncio.Event, stopping: asyncio.Event) -> None:
        """Process batches until halted, stopped or fenced, on a connection of its own."""
        shared = self._redis
        self._redis = _own_connection(shared)
        try:
            await self._run(halt, stopping)
        finally:
            if self._redis is not shared:
                await self._redis.aclose()
            self._redis = shared

    async def _run(self, halt: asyncio.Event, stopping: asyncio.Event) -> None:
        """Process batches until halted, stopped or fenced; Redis trouble is retried with backoff."""
        last_trim, backoff = time.monotonic(), 0.1
        while not (halt.is_set() or stopping.is_set()):
            try:
                if self._position is None:
                    # At start and after any failure: Redis' position, not ours (a commit whose reply was
                    # lost moved it; a Redis restart may have rolled it back).
                    self._position, _ = await streams.progress(self._redis, self.partition)
                if self._relay_due:
                    await self._relay()
                now = self._clock.now_ms()
                due = await self._due_timers(now)
                wait: int | None = None
                if not due:
                    wait = self._limits.block_ms
                    if self._next_due is not None and self._next_due != NO_TIMERS:
                        wait = max(min(wait, self._next_due - now), 1)
                entries = await streams.read_after(
                    self._redis, self.partition, self._position, self._entries_to_read(), wait
                )
                entries = self._within_batch(entries)
                if entries or due:
                    # The rules as of now, not as of before the blocking read: a ruleset stored while
                    # we waited applies to the events that arrived after it.
                    await self.process(await self._rule_index(), entries, due)
                elif time.monotonic() - last_trim > TRIM_EVERY_S:
                    last_trim = time.monotonic()
                    await streams.trim_committed(self._redis, self.partition)
                backoff = 0.1
            except FencedError:
                log.warning("partition %d: lease epoch %d was superseded; letting it go", self.partition, self.epoch)
                return
            except StalePositionError:
                log.warning("partition %d: stored position moved under us; re-reading it", self.partition)
                self._reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Redis trouble — OOM, MISCONF (disk full), connection loss, a cluster client resetting —
                # is one line; anything else is a bug outside evaluation (evaluation failures are isolated
                # and quarantined) and keeps its traceback. Either way nothing was committed: start over
                # from what Redis holds, after a pause that grows while the trouble lasts.
                if is_redis_trouble(exc):
                    log.warning("partition %d: %s; retrying in %.1fs", self.partition, describe(exc), backoff)
                    metrics.on_redis_error("worker")
                else:
                    log.exception("partition %d: batch failed; retrying from the committed position", self.partition)
                self._reset()
                await pause(stopping, backoff)
                backoff = min(backoff * 2, 5.0)

    async def _due_timers(self, now: int) -> list[tuple[str, int]]:
        if self._next_due is not None and now < self._next_due:
            return []
        due, next_due = await timers.due(self._redis, self.partition, now, self._limits.batch_size)
        self._next_due = None if due else NO_TIMERS if next_due is None else next_due
        return due

    def _entries_to_read(self) -> int:
        # An entry holds one request's events of this partition: read about a batch's worth of events.
        return max(1, min(self._limits.batch_size, round(self._limits.batch_size / self._items_per_entry)))

    def _within_batch(self, entries: list[streams.Entry]) -> list[streams.Entry]:
        """The longest prefix of whole entries holding at most `batch_size` items (at least one entry).

        A batch is bounded in events, not entries: one commit is one Redis call that blocks the
        server while it runs, and 200 entries of 125 events each made commits of a quarter second.
        What is cut off is read again next time, from the same position.
        """
        total, kept = 0, 0
        for _, fields in entries:
            count = streams.entry_count(fields)
            if kept and total + count > self._limits.batch_size:
                break
            total, kept = total + count, kept + 1
        if entries:
            self._items_per_entry = 0.8 * self._items_per_entry + 0.2 * (total / kept)
        return entries[:kept]

    def _reset(self) -> None:
        """Forget the cache and the position: the next iteration reads both from Redis."""
        self._cache.clear()
        self._position = None
        self._next_due = None
        self._relay_due = True

    async def _relay(self) -> None:
        """Hand the handoff stream's entries to their partitions (a failure leaves them for the next try)."""
        if not self._limits.partitions:
            self._relay_due = False
            return
        self._relay_due = True  # until the relay completes
        await handoff.relay(self._redis, self.partition, self._limits.partitions)
        self._relay_due = False

    async def process(self, index: RuleIndex, entries: list[streams.Entry], due: list[tuple[str, int]]) -> None:
        """Evaluate and commit one batch; an entry that fails evaluation alone is quarantined."""
        started = time.perf_counter()
        if self._position is None:
            self._position, _ = await streams.progress(self._redis, self.partition)
        read_after = self._position
        decoded: list[tuple[streams.Entry, list[streams.Item] | None]] = []
        for entry in entries:
            try:
                decoded.append((entry, streams.decode_entry(entry[1])))
            except Exception:
                log.exception("partition %d: unreadable stream entry %s", self.partition, entry[0])
                decoded.append((entry, None))
        users = {timer_user(member) for member, _ in due}
        users.update(item.user_id for _, items in decoded if items for item in items)
        await self._load(users)
        now = self._clock.now_ms()
        try:
            plan, effects = self._evaluate(index, decoded, due, now, isolate=False)
        except Exception:
            log.exception(
                "partition %d: batch of %d entries failed; isolating the culprit", self.partition, len(entries)
            )
            self._cache.clear()
            await self._load(users)
            plan, effects = self._evaluate(index, decoded, due, now, isolate=True)
        plan.read_after = read_after
        try:
            await commit(self._redis, plan, self.epoch)
        except BaseException:
            # The cache may hold state that was never committed, and whether the commit applied is
            # unknown when its reply was lost: both are read again from Redis.
            self._reset()
            raise
        if entries:
            self._position = entries[-1][0]
        if effects.handoffs:
            self._relay_due = True
            await self._relay()
        added = [due_ms for due_ms, _ in effects.timers_added]
        added += [due_ms for due_ms in effects.segment_timers.values() if due_ms]
        if self._next_due is not None and added:
            self._next_due = min(self._next_due, *added)
        self._trim_cache()
        self._report(effects, decoded, due, now, time.perf_counter() - started)

    async def _load(self, users: set[str]) -> None:
        missing = [user_id for user_id in users if user_id not in self._cache]
        for user_id, state in zip(missing, await load_states(self._redis, self.partition, missing), strict=True):
            self._cache[user_id] = state

    def _evaluate(
        self,
        index: RuleIndex,
        decoded: list[tuple[streams.Entry, list[streams.Item] | None]],
        due: list[tuple[str, int]],
        now: int,
        *,
        isolate: bool,
    ) -> tuple[CommitPlan, Effects]:
        evaluator = Evaluator(index)
        effects = Effects(trace=[] if self._limits.trace_depth else None, trace_matches=self._limits.trace_matches)
        if self._limits.archive:
            effects.processed = []
        touched: set[str] = set()
        plan = CommitPlan(self.partition, now, self._limits.ledger_retention_ms)
        for member, due_ms in due:
            user_id = timer_user(member)
            touched.add(user_id)
            metrics.on_timer_fired((now - due_ms) / 1000)

            def fire(into: Effects, member: str = member, due_ms: int = due_ms, user_id: str = user_id) -> None:
                evaluator.on_timer(self._cache[user_id], member, due_ms, now, into)

            # A timer that fails on its own is dropped (logged and counted), not retried for ever.
            if self._attempt(fire, [user_id], effects, isolate, f"timer {member!r}"):
                plan.timers_removed.append(member)
        for entry, items in decoded:
            if items is None:
                plan.quarantine(streams.quarantined_fields(entry, "unreadable entry"))
                continue

            def apply(into: Effects, items: list[streams.Item] = items, entry_id: bytes = entry[0]) -> None:
                self._apply(evaluator, items, now, into, touched, entry_id)

            error = self._attempt(apply, [item.user_id for item in items], effects, isolate, f"entry {entry[0]!r}")
            if error:
                plan.quarantine(streams.quarantined_fields(entry, error))
        horizon = self._limits.dedupe_horizon_ms
        for user_id in touched:
            state = self._cache[user_id]
            self._cache.move_to_end(user_id)
            ttl_ms = state.prune(now, horizon)
            if state.is_empty():
                plan.delete_state(user_id)
            else:
                plan.put_state(user_id, encode_user_state(state), ttl_ms)
        created = [(f.user_id, f.actions) for f in effects.firings]
        created += [(f.user_id, f.actions) for f in effects.journey_firings]
        for user_id, actions in created:
            for action in actions:
                plan.add_action(user_id, action.action_id, action.text, action.status, queue=action.status == "pending")
                for number, (token, url) in enumerate(action.links):
                    plan.put_link(link_key(self.partition, token), link_record(action.record, number, url))
        by_journey: dict[str, list[tuple[str, int]]] = {}
        for (journey_id, version, node, what), delta in effects.journey_counts.items():
            if delta:
                by_journey.setdefault(journey_id, []).append((counter_field(version, node, what), delta))
        for (scope, day, unit, what), delta in effects.measures.items():
            if delta:  # measurement counters (cep.attribution): the same hashes, by day
                by_journey.setdefault(scope, []).append((f"{day}|{unit}|{what}", delta))
        for journey_id, deltas in by_journey.items():
            plan.count(journey_id, deltas)
        if effects.trace:
            by_user: dict[str, list[dict[str, Any]]] = {}
            for user_id, found in effects.trace:
                by_user.setdefault(user_id, []).append(found)
            for user_id, entries in by_user.items():
                plan.trace(user_id, encode_batch(now, entries), self._limits.trace_depth, self._limits.trace_ttl_ms)
        for mark in effects.item_marks:
            plan.item_mark(mark)
        for change in effects.segment_changes:
            plan.segment_member(change.segment_id, change.user_id, added=change.added)
        rescheduled = set()
        for member, due_ms in effects.segment_timers.items():
            if due_ms:
                plan.timers_added.extend((due_ms, member))
                rescheduled.add(member)
            else:
                plan.timers_removed.append(member)
        for user_id, action_id, cancel in effects.releases:
            plan.release(user_id, action_id, cancel=cancel)
        for handed in effects.handoffs:
            plan.hand_off(handed)
        if effects.processed is not None and (effects.processed or plan.actions or plan.releases):
            plan.archive(
                archive_stream.encode_events(effects.processed),
                archive_stream.encode_actions(action for _, actions in created for action in actions)
                if plan.actions
                else b"",
            )
        for due_ms, member in effects.timers_added:
            plan.timers_added.extend((due_ms, member))
        # A segment timer that fired and was set again in this batch keeps its new due time (one member per
        # user and segment: the commit adds before it removes).
        plan.timers_removed.extend(member for member in effects.timers_removed if member not in rescheduled)
        if decoded:
            plan.last_id = decoded[-1][0][0]
            plan.entries = sum(streams.entry_count(entry[1]) for entry, _ in decoded)
        return plan, effects

    def _attempt(
        self, work: Callable[[Effects], None], users: list[str], effects: Effects, isolate: bool, what: str
    ) -> str:
        """Run one timer's or entry's evaluation; when isolating, on copies of its users' state, so a
        failure leaves nothing half-applied. Returns the failure ("" on success)."""
        if not isolate:
            work(effects)
            return ""
        saved = {user_id: _copy(self._cache[user_id]) for user_id in users}
        trial = Effects(trace=[] if effects.trace is not None else None, trace_matches=effects.trace_matches)
        if effects.processed is not None:
            trial.processed = []
        try:
            work(trial)
        except Exception as exc:
            log.exception("partition %d: %s fails on its own; setting it aside", self.partition, what)
            self._cache.update(saved)
            metrics.on_event_quarantined()
            return repr(exc)
        _merge(effects, trial)
        return ""

    def _apply(
        self,
        evaluator: Evaluator,
        items: list[streams.Item],
        now: int,
        effects: Effects,
        touched: set[str],
        entry_id: bytes,
    ) -> None:
        forwarded: dict[str, list[Event | ProfilePatch]] = {}
        for item in items:
            state = self._cache[item.user_id]
            touched.add(item.user_id)
            if isinstance(item, MergeOut):
                self._cache[item.user_id] = merges.on_merge_out(evaluator, state, item, now, effects)
            elif isinstance(item, MergeIn):
                merges.on_merge_in(evaluator, state, item, now, effects)
            elif state.merged_into:
                # A merged user's events and patches belong to the user it was merged into.
                forwarded.setdefault(state.merged_into, []).append(item)
            elif isinstance(item, ProfilePatch):
                # The patch's stream entry names it: processed again, its segment events dedupe.
                evaluator.on_patch(state, item, f"patch:{entry_id.decode()}", now, effects)
            else:
                evaluator.on_event(state, item, now, effects)
        for target, moving in forwarded.items():
            merges.forward(moving, target, effects)

    def _trim_cache(self) -> None:
        while len(self._cache) > self._limits.cache_users:
            self._cache.popitem(last=False)

    def _report(
        self,
        effects: Effects,
        decoded: list[tuple[streams.Entry, list[streams.Item] | None]],
        due: list[tuple[str, int]],
        now: int,
        seconds: float,
    ) -> None:
        by_origin: dict[str, int] = {}
        for _, items in decoded:
            for item in items or ():
                if isinstance(item, Event):
                    by_origin[item.origin] = by_origin.get(item.origin, 0) + 1
        for event in effects.chained:
            by_origin[event.origin] = by_origin.get(event.origin, 0) + 1
        # An event naming a merged user was only handed on here (beacon_identity_forwarded_total): it counts as
        # processed once, by the owner that evaluates it, however many merges it followed.
        for origin, count in effects.forwarded_events.items():
            by_origin[origin] = by_origin.get(origin, 0) - count
        for origin, count in by_origin.items():
            if count > 0:
                metrics.on_events_processed(origin, count)
                self.processed += count
        # Counted per label set, then added once: a labelled counter costs microseconds per call.
        fired: dict[tuple[str, str], int] = {}
        emitted: dict[str, int] = {}
        for firing in effects.firings:
            rule = (firing.entry.compiled.ruleset.id, firing.entry.rule.id)
            fired[rule] = fired.get(rule, 0) + 1
            for action in firing.actions:
                emitted[action.record["type"]] = emitted.get(action.record["type"], 0) + 1
                received = action.record.get("received_ms") or 0
                if received and action.status == "pending":
                    metrics.on_ingest_to_outbox((now - received) / 1000)
        for (ruleset_id, rule_id), count in fired.items():
            metrics.on_rule_fired(ruleset_id, rule_id, count)
        for journey_firing in effects.journey_firings:
            for action in journey_firing.actions:
                emitted[action.record["type"]] = emitted.get(action.record["type"], 0) + 1
        for action_type, count in emitted.items():
            metrics.on_actions_emitted(action_type, count)
        for (journey_id, _, node, what), delta in effects.journey_counts.items():
            if what in JOURNEY_OUTCOMES and delta > 0:
                metrics.on_journey(journey_id, node, what, delta)
        for (scope, _, unit, what), delta in effects.measures.items():
            # Clicks, and conversions once each: a rule's, or a journey's as a whole (not again per node and arm).
            converted = what.startswith("converted") and (scope.startswith("m:rs:") or unit == "")
            if delta > 0 and (what == "clicked" or converted):
                metrics.on_measured(scope, what, delta)
        for entry, _ in effects.late:
            metrics.on_late_event(entry.compiled.ruleset.id, entry.rule.id)
        for _ in range(effects.duplicates):
            metrics.on_duplicate_event()
        if effects.hop_limited:
            metrics.on_hop_limit(effects.hop_limited)
        for what, count in effects.identities.items():
            metrics.on_identity(what, count)
        metrics.on_batch(seconds, sum(len(items or ()) for _, items in decoded) + len(due))


def _own_connection(redis: Redis) -> Redis:
    """A client holding one connection of `redis`'s pool for this owner's calls, which are sequential.

    Each call on the shared pool paid for waiting on it (a condition, a timeout, a health check): about
    a quarter of the owner's CPU when batches are small. A cluster client keeps its per-node pools.
    """
    if isinstance(redis, RedisCluster):
        return redis
    return redis.client()


def _copy(state: UserState) -> UserState:
    return decode_user_state(encode_user_state(state))


def _merge(into: Effects, other: Effects) -> None:
    into.firings.extend(other.firings)
    into.timers_added.extend(other.timers_added)
    into.timers_removed.extend(other.timers_removed)
    into.releases.extend(other.releases)
    into.late.extend(other.late)
    into.duplicates += other.duplicates
    into.hop_limited += other.hop_limited
    into.chained.extend(other.chained)
    into.journey_firings.extend(other.journey_firings)
    into.segment_changes.extend(other.segment_changes)
    into.item_marks.extend(other.item_marks)
    into.segment_timers.update(other.segment_timers)
    into.handoffs.extend(other.handoffs)
    if into.processed is not None and other.processed:
        into.processed.extend(other.processed)
    for what, count in other.identities.items():
        into.identities[what] = into.identities.get(what, 0) + count
    for origin, count in other.forwarded_events.items():
        into.forwarded_events[origin] = into.forwarded_events.get(origin, 0) + count
    for name, delta in other.journey_counts.items():
        into.journey_counts[name] = into.journey_counts.get(name, 0) + delta
    for key, delta in other.measures.items():
        into.measures[key] = into.measures.get(key, 0) + delta
    if into.trace is not None and other.trace:
        into.trace.extend(other.trace)
