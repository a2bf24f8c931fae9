"""One delivery attempt: claim the action, apply the policies (48 h window, quiet hours, caps, rate limit),
call its connector, and record the outcome in the ledger, the wake-up set, dead letters and metrics."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from beacon import metrics
from beacon.clock import Clock
from beacon.errors import ConnectorError
from beacon.redis_errors import is_redis_error, is_redis_trouble
from cep.events import partition_of
from cep.interactions import last_interaction
from cep.profiles import get_profile
from connectors import delivery_ledger as ledger
from connectors.base import Connector, clip_reply, storable
from connectors.caps import MARKETING, is_marketing, quiet_until, release_cap, source_cap, take_cap
from connectors.dead_letters import add_dead_letter
from connectors.policy import SKIP_REASONS, connector_error, is_stale
from connectors.ratelimit import take_token
from connectors.redis_trouble import REDIS_BACKOFF, log_retried
from connectors.settings import ConnectorSettings

log = logging.getLogger("beacon.connectors")
DEFERRED = "deferred"  # metrics outcome of quiet-hours and rate-limit postponements
SEND = "send"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the checks before a send decided: SEND (with the recipient's profile), ledger.SKIPPED or DEFERRED."""

    outcome: str
    reason: str = ""  # why it is skipped or deferred
    at: int = 0  # DEFERRED: when it is looked at again (ms)
    booked_at: int | None = None  # DEFERRED by the rate limit: the send slot it booked
    profile: Mapping[str, Any] = field(default_factory=dict)  # SEND: what `connector.send` reads


def connector_name(record: Mapping[str, Any]) -> str:
    """The connector an action goes through: its message channel, else its type."""
    if record.get("type") == "message":
        return str((record.get("params") or {}).get("channel") or "message")
    return str(record.get("type"))


class Deliverer:
    """Runs delivery attempts; any number may run at once, in any number of processes."""

    def __init__(
        self,
        redis: Redis,
        settings: ConnectorSettings,
        clock: Clock,
        connectors: Mapping[str, Connector],
        partitions: int,
        rng: random.Random | None = None,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._clock = clock
        self._connectors = connectors
        self._partitions = partitions
        self._rng = rng or random.Random()

    async def deliver(self, user_id: str, action_id: str, *, owns_hint: bool = False) -> str:
        """Try to move one action forward; returns what happened (a status, or why nothing did).

        `owns_hint` says the caller took this action's wake-up from the due set, so it may postpone it.
        """
        partition = partition_of(user_id, self._partitions)
        stored = await ledger.read_action(self._redis, self._partitions, user_id, action_id)
        now = self._clock.now_ms()
        if stored is None:
            log.warning("action %s of user %s is not in the ledger (expired?); not delivered", action_id, user_id)
            await ledger.drop_hint(self._redis, partition, user_id, action_id)
            return "missing"
        state, wake_at = ledger.claim_state(stored.status, now)
        if state == "done":
            await ledger.forget_wake_up(self._redis, self._partitions, stored)
            return str(stored.status.get("status"))
        if state != "claim":
            await ledger.set_hint(self._redis, partition, user_id, action_id, wake_at, earlier_only=not owns_hint)
            return state
        name = connector_name(stored.record)
        lease = now + self._settings.lease_ms
        # On the loop's clock (the injected one may be a test's): the provider calls end by then.
        deadline = asyncio.get_running_loop().time() + self._settings.attempt_budget_ms / 1000
        # The claim wakes the action at its lease's end, in the same step: if this consumer dies, hangs or
        # never hears the reply (a dropped connection; redis-py then resends the claim, which finds its own
        # "delivering" and reports "raced"), the action is still looked at again once the lease lapses.
        # Before, only the outbox entry stood for it, and "raced" acknowledged that entry: stuck for good.
        claimed = await ledger.swap_status(
            self._redis,
            self._partitions,
            stored,
            ledger.transition(
                stored.status,
                now,
                ledger.DELIVERING,
                lease_until=lease,
                connector=name,
                # When a consumer first took it, kept by every later claim: staleness is judged from it.
                first_taken_at=stored.status.get("first_taken_at") or now,
            ),
            wake_at=lease,
        )
        if claimed is None:
            # Another consumer, a replay, or our own claim whose reply was lost changed it first; whichever
            # it was set the action's wake-up with its status, so nothing is left to do here.
            return "raced"
        try:
            return await self._attempt(claimed, name, deadline)
        except Exception as exc:
            # Redis trouble mid-attempt (the checks and the send count every other failure as an attempt), or a
            # failure to record an outcome: the lease lapses and the claim's wake-up retries it then.
            log_retried(log, exc, "delivery of action %s stopped; retrying after the lease", action_id)
            return "error"

    async def _attempt(self, claimed: ledger.Stored, name: str, deadline: float) -> str:
        record, status = claimed.record, claimed.status
        connector = self._connectors.get(name)
        if connector is None:
            error = connector_error("unsupported", f"no connector for {name!r}")
            return await self._dead(claimed, name, error, int(status.get("attempts") or 0), release=False)
        attempt = int(status.get("attempts") or 0) + 1
        try:
            verdict = await self._checks(claimed, name, connector)
        except Exception as exc:
            if is_redis_trouble(exc):
                # Redis trouble (a socket error redis-py did not wrap too, as the workers see it): not the
                # action's fault, so no attempt is counted; the lease lapses and the action is tried again then.
                raise
            # Data the checks cannot read (a corrupt user record, one of a newer version mid-upgrade) or our bug.
            # Nothing was sent, so it is a counted, retryable attempt that ends dead (replayable) when attempts
            # run out; the catch-all in `deliver` once retried it every lease, uncounted, for ever.
            log.exception("checks before sending action %s via %s failed", record["action_id"], name)
            error = connector_error("policy_error", f"{name}: before the send: {type(exc).__name__}: {exc}"[:300])
            return await self._failed(claimed, name, error, attempt)
        if verdict.outcome == ledger.SKIPPED:
            return await self._skip(claimed, name, verdict.reason, release=False)
        if verdict.outcome == DEFERRED:
            return await self._defer(claimed, name, verdict.at, verdict.reason, verdict.booked_at)
        try:
            async with asyncio.timeout_at(deadline):
                reply = await connector.send(record, verdict.profile)
        except ConnectorError as error:
            return await self._failed(claimed, name, error, attempt)
        except TimeoutError:
            # Several calls (a WeChat token refresh) ran past the attempt's budget; past the lease another
            # consumer would claim the action and post it again while this post is still in flight.
            budget = self._settings.attempt_budget_ms
            stopped = connector_error("timeout", f"attempt stopped at its budget of {budget} ms (3/4 of the lease)")
            return await self._failed(claimed, name, stopped, attempt)
        except Exception as exc:
            if is_redis_error(exc):
                raise  # Redis trouble (a WeChat token read), not the provider's: retried after the lease
            # A connector bug or a reply it could not handle: counted as an attempt and dead-lettered with the
            # reason, never retried lease after lease without a count (which once posted an action forever).
            log.exception("connector %s failed on action %s", name, record["action_id"])
            broken = connector_error("internal_error", f"{name}: {type(exc).__name__}: {exc}"[:300])
            return await self._failed(claimed, name, broken, attempt)
        done = self._clock.now_ms()
        final = ledger.transition(
            status, done, ledger.DELIVERED, attempts=attempt, reply=clip_reply(reply), delivered_at=done,
            reason=None, next_attempt_at=None, rate_booked_at=None,
        )  # fmt: skip
        await self._finish(claimed, final)
        # Trigger-to-delivery latency; a delayed action's clock starts when it fell due.
        started = max(int(record.get("created_at") or 0), int(record.get("due_at") or 0))
        metrics.on_delivery(name, ledger.DELIVERED, latency_s=(done - started) / 1000 if started else None)
        return ledger.DELIVERED

    async def _checks(self, claimed: ledger.Stored, name: str, connector: Connector) -> Verdict:
        """The policy before a send, in order: staleness, 48 h window, quiet hours, frequency cap, rate limit; then the
        recipient's profile. Only reads and takes counts: the caller writes the outcome."""
        record, status = claimed.record, claimed.status
        user_id, action_id = record["user_id"], record["action_id"]
        settings, now = self._settings, self._clock.now_ms()
        if is_stale(record, status, settings.max_staleness_ms):
            return Verdict(ledger.SKIPPED, "stale")
        if name == "wechat_cs":
            seen = await last_interaction(self._redis, self._partitions, user_id)
            if seen is None or now - seen > settings.cs_window_ms:
                return Verdict(ledger.SKIPPED, "outside_48h_window")
        if settings.quiet_hours is not None and name in settings.quiet_channels:
            until = quiet_until(now, settings.quiet_hours)
            if until is not None:
                return Verdict(DEFERRED, "quiet_hours_deferred", at=until)
        cap = settings.frequency_caps.get(name)
        if cap is not None and not await take_cap(self._redis, user_id, name, action_id, cap, now):
            return Verdict(ledger.SKIPPED, "frequency_capped")
        # Fatigue: across channels (the `marketing` cap), then the ruleset's or journey's own cap. A count
        # taken above for a send that is now refused is given back.
        taken = [name] if cap is not None else []
        fatigue = settings.frequency_caps.get(MARKETING) if is_marketing(record) else None
        scoped = source_cap(record)
        for cap_name, fatigue_cap in ((MARKETING, fatigue), scoped or ("", None)):
            if fatigue_cap is None:
                continue
            if not await take_cap(self._redis, user_id, cap_name, action_id, fatigue_cap, now):
                for earlier in taken:
                    await release_cap(self._redis, user_id, earlier, action_id)
                return Verdict(ledger.SKIPPED, "fatigue_capped")
            taken.append(cap_name)
        limit = settings.rate_limits.get(connector.bucket)
        booked = int(status.get("rate_booked_at") or 0)
        if limit is not None and not 0 < booked <= now:
            grant = await take_token(self._redis, connector.bucket, limit, now, settings.rate_limit_max_wait_ms)
            if grant.wait_ms > 0:
                at = now + grant.wait_ms
                return Verdict(DEFERRED, "rate_limited", at=at, booked_at=at if grant.granted else None)
        if not connector.needs_profile:
            return Verdict(SEND)
        return Verdict(SEND, profile=(await get_profile(self._redis, self._partitions, user_id)).attrs)

    async def _failed(self, claimed: ledger.Stored, name: str, error: ConnectorError, attempt: int) -> str:
        if error.reason in SKIP_REASONS:
            return await self._skip(claimed, name, error.reason, release=True, attempt=attempt, detail=error)
        retry_in = self._settings.retry.retry_in_ms(error, attempt, self._rng)
        if retry_in is None:
            return await self._dead(claimed, name, error, attempt, release=True)
        record = claimed.record
        now = self._clock.now_ms()
        at = now + retry_in
        log.warning(
            "action %s via %s failed (%s): attempt %d of %d, retrying in %d ms",
            record["action_id"], name, error.reason, attempt, self._settings.retry.max_attempts, retry_in,
        )  # fmt: skip
        # If we die before this, the claim's wake-up at the lease's end retries it then.
        failed = ledger.transition(
            claimed.status, now, ledger.FAILED, attempts=attempt, reason=error.reason,
            reply=storable(error.message, 500), next_attempt_at=at, rate_booked_at=None,
        )  # fmt: skip
        await ledger.swap_status(self._redis, self._partitions, claimed, failed, wake_at=at)
        metrics.on_delivery(name, ledger.FAILED, error.reason)
        return ledger.FAILED

    async def _dead(
        self, claimed: ledger.Stored, name: str, error: ConnectorError, attempt: int, *, release: bool
    ) -> str:
        record = claimed.record
        now = self._clock.now_ms()
        log.error("action %s via %s is dead after %d attempt(s): %s", record["action_id"], name, attempt, error.message)
        # Listed before the status turns dead, so a crash in between never hides a dead action.
        await add_dead_letter(self._redis, record, name, error.reason, now, self._settings.dead_letter_maxlen)
        dead = ledger.transition(
            claimed.status, now, ledger.DEAD, attempts=attempt, reason=error.reason, reply=storable(error.message, 500),
            dead_at=now, next_attempt_at=None, rate_booked_at=None,
        )  # fmt: skip
        await self._finish(claimed, dead, release=release)
        metrics.on_delivery(name, ledger.DEAD, error.reason)
        return ledger.DEAD

    async def _skip(
        self,
        claimed: ledger.Stored,
        name: str,
        reason: str,
        *,
        release: bool,
        attempt: int | None = None,
        detail: ConnectorError | None = None,
    ) -> str:
        skipped = ledger.transition(
            claimed.status, self._clock.now_ms(), ledger.SKIPPED, reason=reason,
            attempts=int(claimed.status.get("attempts") or 0) if attempt is None else attempt,
            next_attempt_at=None, rate_booked_at=None, reply=storable(detail.message, 500) if detail else None,
        )  # fmt: skip
        await self._finish(claimed, skipped, release=release)
        metrics.on_delivery(name, ledger.SKIPPED, reason)
        return ledger.SKIPPED

    async def _defer(self, claimed: ledger.Stored, name: str, at: int, reason: str, booked: int | None = None) -> str:
        deferred = ledger.transition(
            claimed.status, self._clock.now_ms(), ledger.PENDING, next_attempt_at=at, reason=reason,
            rate_booked_at=booked,
        )  # fmt: skip
        await ledger.swap_status(self._redis, self._partitions, claimed, deferred, wake_at=at)
        metrics.on_delivery(name, DEFERRED, reason)
        return DEFERRED

    async def _record_outcome(self, claimed: ledger.Stored, final: dict[str, Any]) -> ledger.Stored | None:
        """Write an attempt's outcome, retried through Redis trouble for up to one lease length.

        The provider has already acted: an outcome given up on leaves the claim to lapse and the action to be
        posted again (21 reposts in 3 s of Redis at maxmemory, tests/faults). While Redis refuses this write
        it refuses the other consumers' claims too, so retrying past our lease is safe: the write compares
        with our claim and finds any take-over."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._settings.lease_ms / 1000
        retry = 0
        while True:
            try:
                return await ledger.swap_status(self._redis, self._partitions, claimed, final, wake_at=None)
            except Exception as exc:
                retry += 1
                delay_s = REDIS_BACKOFF.backoff_ms(retry, self._rng) / 1000
                if not is_redis_trouble(exc) or loop.time() + delay_s > give_up_at:
                    raise
                log_retried(
                    log,
                    exc,
                    "outcome of action %s not recorded; retrying in %.1fs",
                    claimed.record["action_id"],
                    delay_s,
                )
            await asyncio.sleep(delay_s)

    async def _finish(self, claimed: ledger.Stored, final: dict[str, Any], *, release: bool = False) -> None:
        # `release`: a frequency-cap count was taken for a send that never happened; give it back.
        user_id, action_id = claimed.record["user_id"], claimed.record["action_id"]
        if await self._record_outcome(claimed, final) is None:
            # Our lease lapsed and someone else took over: their outcome stands (the key kept it idempotent).
            log.warning("action %s changed while we delivered it; leaving it to its new owner", action_id)
            return
        name = str(final.get("connector"))
        if release and name in self._settings.frequency_caps:
            await release_cap(self._redis, user_id, name, action_id)
        if release and MARKETING in self._settings.frequency_caps and is_marketing(claimed.record):
            await release_cap(self._redis, user_id, MARKETING, action_id)
        scoped = source_cap(claimed.record) if release else None
        if scoped is not None:
            await release_cap(self._redis, user_id, scoped[0], action_id)
