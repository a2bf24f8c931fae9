"""Which exceptions are Redis trouble (a server down, failing over or refusing writes: retried with backoff
and logged in one line) rather than a bug (logged with its traceback). Shared by the partition owners
(`cep`), the connectors and start-up (`beacon.services`)."""

from __future__ import annotations

import asyncio
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

# Our mistakes, which no retry mends: a value redis-py cannot encode, keys of several slots in one call.
_BUGS: tuple[type[Exception], ...] = (DataError, ClusterCrossSlotError, CrossSlotTransactionError, InvalidPipelineStack)
# Refusals that only an operator mends (credentials, ACLs): retried while running, fatal at start.
REFUSALS: tuple[type[Exception], ...] = (AuthenticationError, AuthorizationError, NoPermissionError)
_REDIS_PY = os.path.dirname(os.path.abspath(redis.__file__)) + os.sep
_ASYNCIO = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep


def is_redis_trouble(exc: BaseException) -> bool:
    """Whether `exc` comes from Redis rather than from our code: a server down, hung (a reply later than the
    Redis timeout, `beacon.services`: TimeoutError, which may come after the command ran), failing over,
    loading, out of memory, refusing writes (MISCONF) or answering an error, so that waiting and retrying is
    the cure (the same rule as the workers' partition owners), or a socket error redis-py did not wrap. False
    for our bugs, which keep their tracebacks: a value redis-py cannot encode, keys of several slots in one
    call, or any other exception. Where other sockets are in use too (a provider call), use `is_redis_error`."""
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
