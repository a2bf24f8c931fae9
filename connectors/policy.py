"""The retry policy (how many attempts, how long between them, which failure reasons retry), and staleness."""

from __future__ import annotations

import email.utils
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from beacon.environment import setting
from beacon.errors import ConnectorError

# Failure reasons worth another attempt: the provider may answer differently next time. `policy_error` (a
# check before the send failed, e.g. on a user record it could not decode) sent nothing, so retrying is free.
RETRYABLE_REASONS = frozenset(
    {"timeout", "http_5xx", "http_429", "connection_error", "system_busy", "conflict", "policy_error"}
)
# Reasons that say "this user cannot receive this now": the action is skipped, not dead-lettered,
# because replaying it would change nothing until the user acts.
SKIP_REASONS = frozenset({"not_subscribed", "outside_48h_window", "no_recipient", "frequency_capped"})


def is_stale(record: Mapping[str, Any], status: Mapping[str, Any], default_bound_ms: int) -> bool:
    """Whether an action was first taken by a consumer (`first_taken_at`, which every later claim keeps) more than
    its staleness bound (its own `max_staleness_ms`, else `default_bound_ms`; 0: none) after its due time.

    Judged from the first take, not from now: an action the policy itself held back (quiet hours, a rate limit),
    a failed attempt delayed, a consumer that died mid-attempt (its claim lapsed) or a dead-letter replay is as
    fresh as it was when first taken; only a history fed late, or an outage's backlog, is stale."""
    bound = int(record.get("max_staleness_ms") or default_bound_ms)
    due, taken = record.get("event_due_at"), status.get("first_taken_at")
    # Records written before the field existed have none: they are judged fresh.
    return bool(bound) and isinstance(due, int) and isinstance(taken, int) and taken - due > bound


def connector_error(reason: str, message: str, retry_after: float | None = None) -> ConnectorError:
    """A ConnectorError whose `retryable` follows RETRYABLE_REASONS (the one place that decides)."""
    return ConnectorError(message, reason=reason, retryable=reason in RETRYABLE_REASONS, retry_after=retry_after)


# Longer than any RetryPolicy honours; bounds the number so a header of 400 nines is not infinity.
RETRY_AFTER_MAX_S = 366 * 86_400.0


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), at most a year; None if
    absent or unreadable. It never raises: the header is the provider's text, and an exception here once
    escaped the connector error path and left the action re-posted every lease."""
    if not value:
        return None
    value = value.strip()
    # ASCII digits only: str.isdigit() accepts "²", which float() then refuses.
    if re.fullmatch(r"[0-9]{1,12}", value):
        return min(float(value), RETRY_AFTER_MAX_S)
    try:
        moment = email.utils.parsedate_to_datetime(value)
        seconds = moment.timestamp() - now_s
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and exponential backoff with jitter; the same shape for every connector."""

    max_attempts: Annotated[int, setting("attempts before an action is dead", ge=1)] = 6
    base_delay_ms: Annotated[
        int, setting("the first retry's delay, doubled at each retry", env="BEACON_CONNECTOR_BACKOFF_BASE_MS", ge=1)
    ] = 1_000
    max_delay_ms: Annotated[
        int, setting("the longest delay between retries", env="BEACON_CONNECTOR_BACKOFF_MAX_MS", ge=1)
    ] = 5 * 60_000
    # Fraction of each delay drawn at random, so a burst of failures does not retry in lockstep.
    jitter: Annotated[
        float,
        setting("the share of each delay drawn at random", env="BEACON_CONNECTOR_BACKOFF_JITTER", ge=0, le=1),
    ] = 0.5
    # A provider's Retry-After is honoured up to this bound; beyond it the answer is treated as "much later".
    max_retry_after_ms: int = 60 * 60_000

    def backoff_ms(self, attempt: int, rng: random.Random | None = None) -> int:
        """Delay before attempt `attempt + 1`: base * 2^(attempt-1), capped, its jitter share drawn at random."""
        ceiling = min(self.max_delay_ms, self.base_delay_ms * 2 ** max(attempt - 1, 0))
        spread = ceiling * self.jitter
        return int(ceiling - spread + (rng or random).random() * spread)

    def retry_in_ms(self, error: ConnectorError, attempt: int, rng: random.Random | None = None) -> int | None:
        """Milliseconds until the next attempt after failed attempt `attempt`, or None when it is the last."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        delay = self.backoff_ms(attempt, rng)
        if error.retry_after is not None:
            # min() before int(): an infinite or huge float must not reach int().
            delay = max(delay, int(min(error.retry_after * 1000, self.max_retry_after_ms)))
        return delay
