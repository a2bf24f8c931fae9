"""The connectors' handling of Redis trouble (`beacon.redis_errors` says what is trouble): the backoff, and
one counted line per retry instead of a traceback."""

from __future__ import annotations

import logging

from beacon import metrics
from beacon.redis_errors import describe, is_redis_trouble
from connectors.policy import RetryPolicy

# From 0.1 s, doubling to 5 s while the trouble lasts (half of each delay drawn at random, so the loops of
# many processes do not retry in step), as the workers' partition owners do.
REDIS_BACKOFF = RetryPolicy(base_delay_ms=100, max_delay_ms=5_000, jitter=0.5)


def log_retried(log: logging.Logger, exc: BaseException, message: str, *args: object) -> None:
    """Log a failure that will be retried: one WARNING line (with the error) counted in
    `beacon_redis_errors_total{component="connectors"}` for Redis trouble, the full traceback for anything else."""
    if is_redis_trouble(exc):
        metrics.on_redis_error("connectors")
        log.warning(message + " (Redis: %s)", *args, describe(exc))
    else:
        log.error(message, *args, exc_info=exc)
