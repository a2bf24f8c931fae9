"""The Redis clients' timeout (`beacon.redis_timeouts`): a reply may be late by the timeout beyond the time its
command asks Redis to wait, so blocking reads and replication or fsync waits longer than the timeout answer.
(A hung server failing a request after the timeout: tests/faults/test_redis_timeout.py.)"""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis import exceptions as redis_errors

from beacon.redis_server import EmbeddedCluster, EmbeddedRedis
from beacon.redis_timeouts import block_allowance_s
from beacon.services import connect
from beacon.settings import Settings

TIMEOUT_MS = 150
BLOCK_MS = 400  # well past the timeout: a plain socket timeout cuts these commands short


@pytest.mark.parametrize(
    ("command", "allowance"),
    [
        (("GET", "k"), 0.0),
        (("SCRIPT LOAD", "return 1"), 0.0),
        (("XREAD", "COUNT", 10, "BLOCK", 600, "STREAMS", "s", "0-0"), 0.6),
        ((b"XREADGROUP", b"GROUP", b"g", b"c", b"BLOCK", b"200", b"STREAMS", b"s", b">"), 0.2),
        (("XREAD", "COUNT", 10, "STREAMS", "BLOCK", "0-0"), 0.0),  # a stream named BLOCK does not block
        (("XREAD", "BLOCK", 0, "STREAMS", "s", "$"), None),  # for ever
        (("WAITAOF", 1, 0, 5000), 5.0),
        (("WAIT", 1, 0), None),
        (("BLPOP", "a", "b", 2.5), 2.5),
        (("BZMPOP", 1.5, 1, "z", "MIN"), 1.5),
        (("XREAD", "BLOCK"), 0.0),  # malformed: sent as it is, for Redis to refuse
        (("BLPOP", "a", -1), 0.0),
    ],
)
def test_block_allowance_is_the_time_a_command_asks_redis_to_wait(command: tuple[Any, ...], allowance: float) -> None:
    """Each blocking command's own wait, in seconds; None for a wait without end; 0 for the rest."""
    assert block_allowance_s(command) == allowance


@pytest.fixture(params=["single", "cluster"])
def server_url(request: pytest.FixtureRequest) -> str:
    """The session's single server, or its cluster."""
    server: EmbeddedRedis | EmbeddedCluster = request.getfixturevalue(
        "redis_server" if request.param == "single" else "redis_cluster"
    )
    return server.url


async def test_blocking_commands_outlast_the_timeout(server_url: str) -> None:
    """Broke with a socket timeout shorter than a block: redis-py reads every reply under that one timeout, so the
    workers' XREAD BLOCK, the connectors' XREADGROUP BLOCK and ingest's WAITAOF raised TimeoutError instead."""
    redis = connect(Settings(redis_url=server_url), TIMEOUT_MS)
    stream = "{timeouts}s"
    try:
        started = time.monotonic()
        # The first command: on a new connection, whose handshake sends and reads commands of its own first.
        assert await redis.xread({stream: "$"}, block=BLOCK_MS) == []
        await redis.xgroup_create(stream, "g", id="$", mkstream=True)
        assert await redis.xreadgroup("g", "c", {stream: ">"}, block=BLOCK_MS) == []
        # A write and a wait in one pipeline, as ingest's appends and their WAITAOF: WAIT for a replica that
        # does not exist holds its reply for its whole timeout (WAITAOF answers as soon as the fsync is done).
        target: dict[str, Any] = {}
        if server_url.startswith("redis+cluster://"):
            target["target_nodes"] = redis.get_node_from_key(stream)  # type: ignore[attr-defined]  # cluster client
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xadd(stream, {"f": "v"})
            pipe.execute_command("WAIT", 1, BLOCK_MS, **target)
            replies = await pipe.execute()
        assert replies[1] == 0
        assert time.monotonic() - started >= 3 * BLOCK_MS / 1000
        assert await redis.xlen(stream) == 1  # and the connection still answers the next command
    finally:
        await redis.delete(stream)
        await redis.aclose()


async def test_a_pipeline_that_cannot_be_packed_leaves_no_block_time_behind(redis_server: EmbeddedRedis) -> None:
    """A pipeline refused while packing (a None argument: DataError) left the block times of the commands packed
    before it on the connection; the next command then took one of them, and a stale `None` (wait for ever) read
    its reply with no timeout at all."""
    redis = connect(Settings(redis_url=redis_server.url), TIMEOUT_MS)
    stream = "{timeouts}p"
    try:
        await redis.ping()
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xread({stream: "$"}, block=0)  # would wait for ever: allowance None
            pipe.set("{timeouts}k", None)  # type: ignore[arg-type]  # refused while packing
            with pytest.raises(redis_errors.DataError):
                await pipe.execute()
        connection = redis.connection_pool._available_connections[-1]  # type: ignore[attr-defined]
        assert connection._packed_blocks == [] and not connection._pending_blocks
        assert await redis.set("{timeouts}k", "v")
    finally:
        await redis.delete(stream, "{timeouts}k")
        await redis.aclose()
