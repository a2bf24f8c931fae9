"""Which exceptions are Redis trouble (a server down, failing over or refusing writes: retried with backoff,
logged in one line and counted) rather than a bug (logged with its traceback), and the backoff itself."""

from __future__ import annotations

import asyncio
import logging
import os
import traceback

import redis
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterCrossSlotError,
    CrossSlotTransactionError,
    DataError,
    InvalidPipelineStack,
    NoPermissionError,
    RedisClusterException,
    RedisError,
)

from beacon import metrics
from connectors.policy import RetryPolicy

# From 0.1 s, doubling to 5 s while the trouble lasts (half of each delay drawn at random, so the loops of
# many processes do not retry in step), as the workers' partition owners do.
REDIS_BACKOFF = RetryPolicy(base_delay_ms=100, max_delay_ms=5_000, jitter=0.5)

# Our mistakes, which no retry mends: a value redis-py cannot encode, keys of several slots in one call.
_BUGS: tuple[type[Exception], ...] = (DataError, ClusterCrossSlotError, CrossSlotTransactionError, InvalidPipelineStack)
# Refusals that only an operator mends (credentials, ACLs): retried while running, fatal at start.
REFUSALS: tuple[type[Exception], ...] = (AuthenticationError, AuthorizationError, NoPermissionError)
_REDIS_PY = os.path.dirname(os.path.abspath(redis.__file__)) + os.sep
_ASYNCIO = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep


def is_redis_trouble(exc: BaseException) -> bool:
    """Whether `exc` comes from Redis rather than from our code: a server down, failing over, loading, out of
    memory, refusing writes (MISCONF) or answering an error, so that waiting and retrying is the cure (the
    same rule as the workers' partition owners), or a socket error redis-py did not wrap. False for our
    bugs, which keep their tracebacks: a value redis-py cannot encode, keys of several slots in one call, or
    any other exception. Where other sockets are in use too (a provider call), use `is_redis_error`."""
    return isinstance(exc, OSError) or is_redis_error(exc)


def is_redis_error(exc: BaseException) -> bool:
    """`is_redis_trouble` without bare socket errors: what redis-py raised (or leaked, see below)."""
    if isinstance(exc, _BUGS):
        return False
    return isinstance(exc, RedisError | RedisClusterException) or _leaked_by_redis_py(exc)


def _leaked_by_redis_py(exc: BaseException) -> bool:
    """redis-py 8.1's asyncio client, writing on a connection that was closed under it (a cluster client
    resetting its nodes, a peer reset), raises `AttributeError: 'NoneType' object has no attribute
    'writelines'` from its own code, or a TypeError / AttributeError about None from the asyncio transport
    it calls (redis/redis-py#4287), instead of a ConnectionError. Recognised only when raised there: the
    innermost frame outside asyncio must be redis-py's, so the same message from our code stays a bug."""
    if not isinstance(exc, AttributeError | TypeError) or "'NoneType' object" not in str(exc):
        return False
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if not frame.filename.startswith(_ASYNCIO):
            return frame.filename.startswith(_REDIS_PY)
    return False


def describe(exc: BaseException) -> str:
    """One line naming the error: its type and its first line (no traceback)."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def log_retried(log: logging.Logger, exc: BaseException, message: str, *args: object) -> None:
    """Log a failure that will be retried: one WARNING line (with the error) counted in
    `beacon_redis_errors_total{component="connectors"}` for Redis trouble, the full traceback for anything else."""
    if is_redis_trouble(exc):
        metrics.on_redis_error("connectors")
        log.warning(message + " (Redis: %s)", *args, describe(exc))
    else:
        log.error(message, *args, exc_info=exc)
