"""The WebSocket ingest: frames in both encodings, acks after append, bad frames, auth, limits, backpressure."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import msgpack
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from api.app import build_app
from api.ingest_ws import HUB
from beacon.errors import ValidationError
from beacon.settings import Settings
from tests.harness import Beacon, eventually, ingest_hub, running_beacon, server_settings, stream_event_ids

TS = 1_700_000_000_000
PARTITIONS = 2
KEYS = {"k-events": frozenset({"events"}), "k-rules": frozenset({"rules"})}


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {"user_id": f"u{n % 7}", "type": "view", "ts": TS + n, "event_id": f"e{n}", **extra}


@pytest.fixture
async def beacon(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    # No workers: they trim acknowledged stream entries, and these tests read the streams back.
    settings = server_settings(redis_url, run_workers=False, max_body_bytes=64 * 1024, max_batch_events=10)
    async with running_beacon(settings) as running:
        yield running


@pytest.fixture
async def keyed(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[Beacon]:
    settings = server_settings(redis_url, run_workers=False, api_keys=KEYS)
    async with running_beacon(settings) as running:
        yield running


def connect(beacon: Beacon, headers: dict[str, str] | None = None) -> Any:
    return beacon.session.ws_connect(beacon.url("/v1/ingest"), headers=headers or {})


async def roundtrip(ws: aiohttp.ClientWebSocketResponse, frame: Any, binary: bool = False) -> dict[str, Any]:
    """Send one frame and return the next reply, decoded from the encoding the frame used."""
    if binary:
        await ws.send_bytes(msgpack.packb(frame))
        return dict(msgpack.unpackb(await ws.receive_bytes(timeout=5), raw=False))
    await ws.send_str(json.dumps(frame))
    return dict(json.loads(await ws.receive_str(timeout=5)))


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_ack_follows_the_append(beacon: Beacon, redis_client: aioredis.Redis, binary: bool) -> None:
    async with connect(beacon) as ws:
        reply = await roundtrip(ws, {"seq": 1, "events": [event(1), event(2), event(3)]}, binary)
        # Read once, no polling: the ack promises the events are already in the streams.
        assert sorted(await stream_event_ids(redis_client, PARTITIONS)) == ["e1", "e2", "e3"]
    assert reply == {"ack": 1, "accepted": ["e1", "e2", "e3"], "errors": []}


async def test_event_without_id_gets_one(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    async with connect(beacon) as ws:
        reply = await roundtrip(ws, {"seq": 5, "events": [{"user_id": "u", "type": "pay"}]}, binary=True)
    assert reply["ack"] == 5 and len(reply["accepted"]) == 1
    assert await stream_event_ids(redis_client, PARTITIONS) == reply["accepted"]


async def test_per_item_errors(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    frame = {"seq": 2, "events": [event(1), {"user_id": "u", "type": "has space"}, event(3)]}
    async with connect(beacon) as ws:
        reply = await roundtrip(ws, frame)
    assert reply["accepted"] == ["e1", "e3"]
    assert [(e["index"], e["code"], e["path"]) for e in reply["errors"]] == [(1, "invalid", "events[1].type")]
    assert reply["errors"][0]["message"]
    assert sorted(await stream_event_ids(redis_client, PARTITIONS)) == ["e1", "e3"]


BAD_FRAMES = [
    pytest.param(b'{"seq": 1, "events": [', False, None, "malformed", "frame", id="bad-json"),
    pytest.param(b'{"seq": 1, "events": NaN}', False, None, "malformed", "frame", id="nan"),
    pytest.param(b"\xc1\xff", True, None, "malformed", "frame", id="bad-msgpack"),
    pytest.param([1, 2], False, None, "invalid", "frame", id="not-an-object"),
    pytest.param({"events": []}, True, None, "invalid", "seq", id="missing-seq"),
    pytest.param({"seq": "7", "events": []}, False, None, "invalid", "seq", id="string-seq"),
    pytest.param({"seq": True, "events": []}, False, None, "invalid", "seq", id="bool-seq"),
    pytest.param({"seq": 7}, False, 7, "invalid", "events", id="missing-events"),
    pytest.param({"seq": 7, "events": {"user_id": "u"}}, True, 7, "invalid", "events", id="events-not-list"),
    pytest.param({"seq": 7, "events": [], "extra": 1}, False, 7, "invalid", "extra", id="unknown-field"),
    pytest.param({"seq": 7, "events": [event(n) for n in range(11)]}, True, 7, "too_large", "events", id="too-many"),
]


@pytest.mark.parametrize(("frame", "binary", "ack", "code", "path"), BAD_FRAMES)
async def test_bad_frame_gets_an_error_and_the_socket_survives(
    beacon: Beacon, redis_client: aioredis.Redis, frame: Any, binary: bool, ack: int | None, code: str, path: str
) -> None:
    async with connect(beacon) as ws:
        raw = frame if isinstance(frame, bytes) else (msgpack.packb(frame) if binary else json.dumps(frame).encode())
        if binary:
            await ws.send_bytes(raw)
            reply = msgpack.unpackb(await ws.receive_bytes(timeout=5), raw=False)
        else:
            await ws.send_str(raw.decode())
            reply = json.loads(await ws.receive_str(timeout=5))
        assert reply["ack"] == ack, reply
        assert reply["error"]["code"] == code, reply
        assert reply["error"]["path"] == path, reply
        assert reply["error"]["message"]
        good = await roundtrip(ws, {"seq": 8, "events": [event(8)]}, binary)
    assert good == {"ack": 8, "accepted": ["e8"], "errors": []}
    assert await stream_event_ids(redis_client, PARTITIONS) == ["e8"]


async def test_empty_events_is_a_no_op_ack(beacon: Beacon) -> None:
    async with connect(beacon) as ws:
        assert await roundtrip(ws, {"seq": 3, "events": []}) == {"ack": 3, "accepted": [], "errors": []}


async def test_oversized_frame_closes_with_1009(beacon: Beacon, redis_client: aioredis.Redis) -> None:
    big = {"seq": 1, "events": [event(1, attrs={"blob": "x" * 70_000})]}
    async with connect(beacon) as ws:
        await ws.send_str(json.dumps(big))
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert await stream_event_ids(redis_client, PARTITIONS) == []
    async with connect(beacon) as ws:  # the server itself is unaffected
        assert (await roundtrip(ws, {"seq": 2, "events": [event(2)]}))["accepted"] == ["e2"]


async def test_idle_socket_is_closed_despite_heartbeats(redis_url: str, redis_client: aioredis.Redis) -> None:
    settings = server_settings(redis_url, run_workers=False, ws_heartbeat_ms=100, ws_receive_timeout_ms=400)
    async with running_beacon(settings) as beacon, connect(beacon) as ws:
        started = time.monotonic()
        # Pings every 100 ms are answered by the client; they must not count as activity.
        msg = await ws.receive(timeout=5)
        waited = time.monotonic() - started
    assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 4408
    assert 0.35 < waited < 3.0


async def test_activity_keeps_the_socket_open(redis_url: str, redis_client: aioredis.Redis) -> None:
    settings = server_settings(redis_url, run_workers=False, ws_receive_timeout_ms=400)
    async with running_beacon(settings) as beacon, connect(beacon) as ws:
        deadline = time.monotonic() + 1.2
        seq = 0
        while time.monotonic() < deadline:  # three idle periods' worth of frames, 100 ms apart
            seq += 1
            assert (await roundtrip(ws, {"seq": seq, "events": []}))["ack"] == seq
            await asyncio.sleep(0.1)
        assert not ws.closed


async def test_header_auth(keyed: Beacon, redis_client: aioredis.Redis) -> None:
    async with connect(keyed, {"Authorization": "Bearer k-events"}) as ws:
        assert (await roundtrip(ws, {"seq": 1, "events": [event(1)]}))["accepted"] == ["e1"]


@pytest.mark.parametrize(("key", "status"), [("nope", 401), ("k-rules", 403)])
async def test_bad_header_is_refused_before_the_upgrade(keyed: Beacon, key: str, status: int) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with connect(keyed, {"Authorization": f"Bearer {key}"}):
            pass
    assert refused.value.status == status


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_first_frame_auth(keyed: Beacon, redis_client: aioredis.Redis, binary: bool) -> None:
    async with connect(keyed) as ws:
        assert await roundtrip(ws, {"auth": "k-events"}, binary) == {"auth": "ok"}
        assert (await roundtrip(ws, {"seq": 1, "events": [event(1)]}, binary))["accepted"] == ["e1"]


@pytest.mark.parametrize(
    ("first", "close_code", "error_code"),
    [
        ({"auth": "nope"}, 4401, "unauthorized"),
        ({"auth": "k-rules"}, 4403, "forbidden"),
        ({"seq": 1, "events": [event(1)]}, 4401, "unauthorized"),
    ],
    ids=["unknown-key", "missing-scope", "data-before-auth"],
)
async def test_first_frame_auth_refused(
    keyed: Beacon, redis_client: aioredis.Redis, first: dict[str, Any], close_code: int, error_code: str
) -> None:
    async with connect(keyed) as ws:
        reply = await roundtrip(ws, first)
        closing = await ws.receive(timeout=5)
    assert reply["ack"] is None and reply["error"]["code"] == error_code and reply["error"]["message"]
    assert closing.type is aiohttp.WSMsgType.CLOSE and ws.close_code == close_code
    assert await stream_event_ids(redis_client, PARTITIONS) == []


async def test_open_server_answers_an_auth_frame(beacon: Beacon) -> None:
    async with connect(beacon) as ws:
        assert await roundtrip(ws, {"auth": "anything"}) == {"auth": "ok"}
        assert (await roundtrip(ws, {"seq": 1, "events": []}))["ack"] == 1


async def test_backpressure_bounds_frames_in_flight(redis_url: str, redis_client: aioredis.Redis) -> None:
    limit, frames = 4, 20
    settings = server_settings(redis_url, run_workers=False, ws_max_in_flight=limit)
    async with running_beacon(settings) as beacon, connect(beacon) as ws:
        # Hold every write in Redis: the appender blocks on its XADDs, so nothing can be acked.
        await redis_client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        try:
            for seq in range(1, frames + 1):
                await ws.send_bytes(msgpack.packb({"seq": seq, "events": [event(seq)]}))
            counters = ingest_hub(beacon)
            await eventually(lambda: asyncio.sleep(0, counters.frames_read), lambda n: n >= limit)
            # A negative observation needs a wait: give the reader time it would use to read on.
            await asyncio.sleep(0.3)
            assert (counters.frames_read, counters.in_flight) == (limit, limit)
            assert await stream_event_ids(redis_client, PARTITIONS) == []
            with pytest.raises(asyncio.TimeoutError):  # and no ack ran ahead of its append
                await ws.receive(timeout=0.05)
        finally:
            await redis_client.execute_command("CLIENT", "UNPAUSE")
        acks = [msgpack.unpackb(await ws.receive_bytes(timeout=5), raw=False)["ack"] for _ in range(frames)]
        assert acks == list(range(1, frames + 1))  # answers leave in arrival order
        assert counters.peak_in_flight == limit and counters.in_flight == 0
    assert sorted(await stream_event_ids(redis_client, PARTITIONS)) == sorted(f"e{n}" for n in range(1, frames + 1))


async def test_shutdown_closes_open_sockets(redis_url: str, redis_client: aioredis.Redis) -> None:
    settings = server_settings(redis_url, run_workers=False)
    async with running_beacon(settings) as beacon, connect(beacon) as ws:
        assert (await roundtrip(ws, {"seq": 1, "events": []}))["ack"] == 1
        await beacon.server.close()
        msg = await ws.receive(timeout=5)
        # The close frame says 1001; the socket is gone before the client could echo it, hence data.
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.GOING_AWAY
        assert not ingest_hub(beacon).sockets


@asynccontextmanager
async def served_as_in_production(settings: Settings) -> AsyncIterator[tuple[str, web.AppRunner]]:
    """(ingest URL, runner) of the app served as `beacon serve` serves it. aiohttp's TestServer cancels a handler
    once its client has gone, which hid what the handler logged after a close."""
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1/ingest", runner
    finally:
        await runner.cleanup()


async def no_sockets(runner: web.AppRunner) -> None:
    """Wait until every ingest handler has ended (and logged how)."""

    async def open_sockets() -> int:
        return len(runner.app[HUB].sockets)

    assert await eventually(open_sockets, lambda n: n == 0) == 0


def ingest_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "beacon.ingest"]


@pytest.mark.parametrize("closer", ["client", "shutdown"])
async def test_a_clean_close_is_not_an_error(
    redis_url: str, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture, closer: str
) -> None:
    """Every normal close logged "ingest append failed; closing the socket" at ERROR: the appender, woken by the
    reader's end-of-frames marker, was done too and was taken for a failed one."""
    caplog.set_level(logging.DEBUG, logger="beacon.ingest")
    settings = server_settings(redis_url, run_workers=False)
    async with served_as_in_production(settings) as (url, runner), aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            assert (await roundtrip(ws, {"seq": 1, "events": [event(1)]}))["accepted"] == ["e1"]
            if closer == "shutdown":
                await runner.shutdown()  # closes open sockets (1001), as on SIGTERM
                assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSE
        await no_sockets(runner)
    records = ingest_records(caplog)
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    assert any("closed (CLOS" in r.getMessage() and r.levelno == logging.DEBUG for r in records)


async def test_a_protocol_error_is_a_warning_with_its_reason(
    redis_url: str, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="beacon.ingest")
    settings = server_settings(redis_url, run_workers=False, max_body_bytes=64 * 1024)
    async with served_as_in_production(settings) as (url, runner), aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"seq": 1, "events": [event(1, attrs={"blob": "x" * 70_000})]}))
            assert (await ws.receive(timeout=5)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await no_sockets(runner)
    [warning] = [r for r in ingest_records(caplog) if r.levelno >= logging.WARNING]
    assert warning.levelno == logging.WARNING
    assert "protocol error (code 1009)" in warning.getMessage() and "exceeds limit" in warning.getMessage()


async def test_redis_trouble_closes_with_try_again_later_and_one_warning_line(
    redis_url: str, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that refuses writes closed the socket with 1011 and an ERROR traceback, as if Beacon were broken;
    it is an operational state the producer's resend cures: 1013 (try again later) and one WARNING line."""
    caplog.set_level(logging.DEBUG, logger="beacon.ingest")
    config = await redis_client.config_get("maxmemory*")
    settings = server_settings(redis_url, run_workers=False)
    async with served_as_in_production(settings) as (url, runner), aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            try:
                await redis_client.config_set("maxmemory-policy", "noeviction")
                await redis_client.config_set("maxmemory", 1)
                await ws.send_str(json.dumps({"seq": 1, "events": [event(1)]}))
                closing = await ws.receive(timeout=10)
            finally:
                await redis_client.config_set("maxmemory", config["maxmemory"])
                await redis_client.config_set("maxmemory-policy", config["maxmemory-policy"])
            assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1013, closing
            assert "resend unacked frames" in closing.extra
        async with session.ws_connect(url) as ws:  # the resend, once Redis takes writes again
            assert (await roundtrip(ws, {"seq": 1, "events": [event(1)]}))["accepted"] == ["e1"]
        await no_sockets(runner)
    loud = [r for r in ingest_records(caplog) if r.levelno >= logging.WARNING]
    assert [(r.levelno, r.exc_info) for r in loud] == [(logging.WARNING, None)], [r.getMessage() for r in loud]
    assert "Redis trouble" in loud[0].getMessage() and "OutOfMemoryError" in loud[0].getMessage()


def test_ws_settings_from_env() -> None:
    env = {"BEACON_WS_HEARTBEAT_MS": "0", "BEACON_WS_RECEIVE_TIMEOUT_MS": "1500", "BEACON_WS_MAX_IN_FLIGHT": "3"}
    settings = Settings.from_env(env)
    assert (settings.ws_heartbeat_ms, settings.ws_receive_timeout_ms, settings.ws_max_in_flight) == (0, 1500, 3)
    with pytest.raises(ValidationError):
        Settings.from_env({"BEACON_WS_MAX_IN_FLIGHT": "0"})


async def test_items_that_cannot_be_stored_are_refused_alone_and_the_socket_survives(
    beacon: Beacon, redis_client: aioredis.Redis
) -> None:
    """A 2**64 attribute or a lone surrogate passed validation, failed the append and closed the socket
    with 1011 "resend unacked frames": a client following the docs resent the same frame for ever."""
    # Raw JSON text: json.dumps would escape the surrogate into valid UTF-8 the server never sees whole.
    text = (
        '{"seq": 3, "events": ['
        f"{json.dumps(event(1))}, "
        '{"user_id": "u1", "type": "view", "ts": 1700000000002, "event_id": "e2", '
        '"attrs": {"n": 18446744073709551616}}, '
        '{"user_id": "u1\\ud800", "type": "view", "ts": 1700000000003, "event_id": "e3"}, '
        f"{json.dumps(event(4))}]}}"
    )
    async with connect(beacon) as ws:
        await ws.send_str(text)
        reply = json.loads(await ws.receive_str(timeout=5))
        assert reply["ack"] == 3 and reply["accepted"] == ["e1", "e4"], reply
        assert [(error["index"], error["path"]) for error in reply["errors"]] == [
            (1, "events[1].attrs.n"),
            (2, "events[2].user_id"),
        ], reply
        assert await roundtrip(ws, {"seq": 4, "events": [event(5)]}) == {"ack": 4, "accepted": ["e5"], "errors": []}
    assert sorted(await stream_event_ids(redis_client, PARTITIONS)) == ["e1", "e4", "e5"]
