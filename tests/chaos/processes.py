"""Real `beacon serve` / `beacon worker` OS processes for crash tests: start, wait until up, kill -9, stop."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from beacon.redis_server import stop_process
from cep import streams
from cep.ownership import owner_key
from cep.user_state import SEEN, user_key

# The `beacon` console script beside the interpreter running the tests (the venv's), else the same CLI as a module.
_SCRIPT = Path(sys.executable).with_name("beacon")
BEACON = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "beacon.cli"]


def beacon_env(redis_url: str, port: int, **overrides: str) -> dict[str, str]:
    """Environment of a test process: its Redis, its port, 4 partitions, fast reclaim and polling."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BEACON_") and key != "REDIS_URL"}
    env.update(
        BEACON_REDIS_URL=redis_url,
        BEACON_PORT=str(port),
        BEACON_PARTITIONS="4",
        # A killed worker's unacknowledged entries are taken over after half a second, not 30.
        BEACON_PARTITION_LEASE_MS="600",
        BEACON_WORKER_BLOCK_MS="50",
        BEACON_LOG_LEVEL="WARNING",
        # The outbox is what the test checks: no connector may consume it.
        BEACON_RUN_CONNECTORS="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


class BeaconProcess:
    """One `beacon <command>` process in its own session, so kill -9 hits it and nothing else."""

    def __init__(self, command: str, env: dict[str, str], log_dir: Path, name: str) -> None:
        self.command = command
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.name = name
        self.kills = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The HTTP port (`beacon serve` only)."""
        return int(self.env["BEACON_PORT"])

    @property
    def pid(self) -> int:
        """The OS process id (while started)."""
        assert self._process is not None
        return self._process.pid

    @property
    def alive(self) -> bool:
        """Whether the process is running."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the process; its output is appended to the log file (kept across restarts)."""
        assert not self.alive, f"{self.name} is already running"
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.name} ({self.command}) at {time.time():.3f}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                [*BEACON, self.command],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill9(self) -> None:
        """SIGKILL: no cleanup runs, unacknowledged stream entries stay pending for the dead consumer."""
        process = self._process
        assert process is not None and process.poll() is None, f"{self.name} is not running ({self.log_tail()})"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        self.kills += 1

    def terminate(self) -> None:
        """Send SIGTERM (a clean shutdown) without waiting."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM and wait (a clean shutdown), SIGKILL if that hangs; a no-op when not running."""
        process, self._process = self._process, None
        stop_process(process, timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's output, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        """The whole output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


async def wait_healthy(process: BeaconProcess, session: aiohttp.ClientSession, timeout_s: float = 30.0) -> None:
    """Poll `GET /healthz` of a `beacon serve` until 200; fail with its log if it died or the deadline passed."""
    url = f"http://127.0.0.1:{process.port}/healthz"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive:
            raise AssertionError(f"{process.name} exited while starting:\n{process.log_tail()}")
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                if response.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{process.name} not healthy within {timeout_s}s:\n{process.log_tail()}")


async def wait_consuming(
    process: BeaconProcess, redis: aioredis.Redis, partitions: int, timeout_s: float = 30.0
) -> None:
    """Wait until the process (consumer named host:pid:suffix) holds at least one partition's lease."""
    marker = f":{process.pid}:"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive:
            raise AssertionError(f"{process.name} exited while starting:\n{process.log_tail()}")
        owners = [await redis.get(owner_key(partition)) for partition in range(partitions)]
        if any(owner and marker in _text(owner) for owner in owners):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{process.name} not consuming within {timeout_s}s:\n{process.log_tail()}")


async def pending_entries(process: BeaconProcess, redis: aioredis.Redis, partitions: int) -> int:
    """Stream entries the process has read and not yet acknowledged: it is in the middle of a batch."""
    marker = f":{process.pid}:"
    total = 0
    for partition in range(partitions):
        summary = await redis.xpending(streams.events_key(partition), streams.GROUP)
        for consumer in summary.get("consumers") or ():
            if marker in _text(consumer["name"]):
                total += int(consumer["pending"])
    return total


async def stepped_unacknowledged(process: BeaconProcess, redis: aioredis.Redis, partitions: int) -> bool:
    """Whether the process holds an unacknowledged entry whose event id is already in the user's dedupe set.

    Then (unless the entry was reclaimed from a consumer that got that far) the process is between a step
    script and the outbox/timer/tag appends and the XACK that follow it.
    """
    marker = f":{process.pid}:"
    for partition in range(partitions):
        key = streams.events_key(partition)
        summary = await redis.xpending(key, streams.GROUP)
        for consumer in summary.get("consumers") or ():
            if marker not in _text(consumer["name"]):
                continue
            held = await redis.xpending_range(key, streams.GROUP, "-", "+", 1_000, consumername=consumer["name"])
            for item in held:
                entry_id = item["message_id"]
                decoded, _ = streams.decode_entries(await redis.xrange(key, entry_id, entry_id))
                for _, event in decoded:
                    if await redis.zscore(user_key(event.user_id, SEEN), event.event_id) is not None:
                        return True
    return False


async def kill9_mid_batch(
    process: BeaconProcess, redis: aioredis.Redis, partitions: int, rng: random.Random, wait_s: float
) -> str:
    """Kill -9 the process, preferably right after a step script and before its appends and XACK.

    The process is frozen (SIGSTOP) at short random intervals and inspected while frozen; if it is in that
    window it is killed frozen, else resumed (SIGCONT). After `wait_s` it is killed wherever it is. Returns
    where it died: "after step", "mid-batch" (holding entries) or "idle".
    """
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        os.kill(process.pid, signal.SIGSTOP)
        try:
            if await stepped_unacknowledged(process, redis, partitions):
                process.kill9()
                return "after step"
        finally:
            if process.alive:
                os.kill(process.pid, signal.SIGCONT)
        await asyncio.sleep(rng.uniform(0.002, 0.02))
    held = await pending_entries(process, redis, partitions)
    process.kill9()
    return "mid-batch" if held else "idle"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stop_all(processes: list[BeaconProcess]) -> None:
    """Stop every process (in the caller's finally): SIGTERM all first, then wait for each."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop()
