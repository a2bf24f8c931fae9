"""One Beacon process per data directory: a second `beacon serve` on it exits at once and leaves the first alone."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp

from beacon.redis_server import free_port
from tests.processes import Process, clean_env, get, run_beacon, wait_health


async def test_a_second_server_on_a_locked_data_dir_exits_and_the_first_keeps_serving(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    port = free_port()
    first = Process(["serve"], clean_env(BEACON_DATA_DIR=data_dir, BEACON_PORT=str(port)), tmp_path / "first.log")
    first.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            await wait_health(session, f"{url}/healthz", first)

            code, out, err = await run_beacon("serve", BEACON_DATA_DIR=data_dir, BEACON_PORT=str(free_port()))
            assert code == 2, (code, out, err)
            [line] = err.strip().splitlines()
            assert "is in use by another Beacon process" in line and data_dir in line, line

            # The first server's private Redis was left alone: it still answers and still stores events.
            await wait_health(session, f"{url}/healthz", first)
            async with session.post(f"{url}/v1/events", json={"user_id": "u1", "type": "pay"}) as response:
                assert response.status == 200, await response.text()

            # A lock left by a process that died is no obstacle: the kernel dropped it with the process.
            first.signal(signal.SIGKILL)
            first.wait()
            third = Process(["serve"], clean_env(BEACON_DATA_DIR=data_dir, BEACON_PORT=str(port)), tmp_path / "3.log")
            third.start()
            try:
                await wait_health(session, f"{url}/healthz", third)
                status, body = await get(session, f"{url}/v1/users/u1")
                assert status == 200, body
            finally:
                third.stop()
    finally:
        first.stop()
