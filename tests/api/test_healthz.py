"""/healthz tells what is wrong with Redis, not where Redis is (issue 15, finding 10): its 503 body quoted
redis-py's error, `Error 111 connecting to 10.0.0.5:6379`, to anyone who could reach the port."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from beacon.health import HIDDEN_ADDRESS, hide_addresses
from beacon.redis_server import EmbeddedRedis
from tests.harness import eventually, running_beacon, server_settings
from tests.redis_proxy import RedisProxy


async def test_a_503_for_redis_down_does_not_name_its_address(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis
) -> None:
    relay = await RedisProxy("127.0.0.1", redis_server.port).start()
    address = relay.url.removeprefix("redis://").removesuffix("/0")
    try:
        async with running_beacon(server_settings(relay.url, run_workers=False)) as beacon:
            assert (await beacon.call("GET", "/healthz"))[0] == 200
            await relay.close()  # the port now refuses connections: what redis-py reports names it
            # The first ping may meet the pooled connection the relay dropped ("Connection closed by server").
            status, body = await eventually(
                lambda: beacon.call("GET", "/healthz"), lambda reply: "connecting to" in json.dumps(reply[1])
            )
    finally:
        await relay.close()
    assert status == 503, body
    (problem,) = body["problems"]
    assert problem.startswith("redis: ") and HIDDEN_ADDRESS in problem, problem
    text = json.dumps(body)
    assert address not in text and "127.0.0.1" not in text and address.split(":")[1] not in text, text


@pytest.mark.parametrize(
    ("message", "hidden"),
    [
        ("Error 111 connecting to 10.0.0.5:6379. Connection refused.", "Error 111 connecting to <address>. Connection"),
        ("Error -2 connecting to redis-0.redis.svc:6379. Name or service not known.", "connecting to <address>. Name"),
        ("Error 111 connecting to ::1:6379. Connection refused.", "connecting to <address>. Connection"),
        ("Error 111 connecting to [fe80::1%eth0]:6379.", "connecting to <address>."),
        ("Error 2 connecting to unix socket: /run/redis/redis.sock. No such file", "unix socket: <address>. No such"),
        ("Error while reading from 10.0.0.5:6379 : (104, 'Connection reset by peer')", "reading from <address> :"),
        ("MOVED 1234 10.0.0.7:7000", "MOVED 1234 <address>"),
        ("Connect call failed ('10.0.0.5', 6379)", "Connect call failed <address>"),
        ("Connect call failed ('::1', 6379, 0, 0)", "Connect call failed <address>"),
        ("cannot reach redis://default:pw@r:6379/0", "cannot reach <address>"),
    ],
)
def test_addresses_in_redis_errors_are_hidden(message: str, hidden: str) -> None:
    assert hidden in hide_addresses(message)


@pytest.mark.parametrize(
    "problem",
    [
        "redis: OOM command not allowed when used memory > 'maxmemory'.",
        "partition 3 stalled: 120 item(s) waiting, nothing committed for 31s",
        "outbox 0 stalled: entries waiting, none read for 30s",
    ],
)
def test_problems_without_an_address_are_kept_whole(problem: str) -> None:
    assert hide_addresses(problem) == problem
