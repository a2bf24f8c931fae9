"""Real `beacon serve` / `worker` / `connectors` OS processes for crash tests: start, wait until up, kill -9."""

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

from beacon.redis_errors import is_redis_trouble
from beacon.redis_server import stop_process
from cep.outbox import outbox_key
from cep.ownership import owner_key
from cep.streams import PROGRESS_ADDED, PROGRESS_COUNT, progress_key
from connectors.consumer import GROUP

# The `beacon` console script beside the interpreter running the tests (the venv's), else the same CLI as a module.
_SCRIPT = Path(sys.executable).with_name("beacon")
BEACON = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "beacon.cli"]


def redis_down(exc: Exception) -> bool:
    """Whether a Redis call failed because Redis (or a cluster node) is down or restarting: worth asking again.

    The engine's rule (`beacon.redis_errors`): RedisError, RedisClusterException, OSError, and the
    AttributeError / TypeError that redis-py 8.1 leaks from itself or from the asyncio transport it calls
    when it writes on a connection closed under it (redis/redis-py#4287; its cluster client closes them all
    whenever one node fails).
    """
    return is_redis_trouble(exc)


def beacon_env(redis_url: str, port: int, partitions: int, **overrides: str) -> dict[str, str]:
    """Environment of a test process: its Redis, its port, its partitions, fast lease take-over and polling."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BEACON_") and key != "REDIS_URL"}
    env.update(
        BEACON_REDIS_URL=redis_url,
        BEACON_PORT=str(port),
        BEACON_PARTITIONS=str(partitions),
        # A killed or frozen process's partitions are taken over after 0.6 s, not 10 s.
        BEACON_PARTITION_LEASE_MS="600",
        BEACON_WORKER_BLOCK_MS="50",
        BEACON_LOG_LEVEL="WARNING",
        # No event archive unless a test asks for one (with BEACON_DATA_DIR): the default is the working directory.
        BEACON_ARCHIVE="off",
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
        self.freezes = 0
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
        """SIGKILL: no cleanup runs; leases lapse, in-flight batches and deliveries are left half done."""
        process = self._process
        assert process is not None and process.poll() is None, f"{self.name} is not running ({self.log_tail()})"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        self.kills += 1

    def sigstop(self) -> None:
        """Freeze the process (SIGSTOP): it keeps its sockets and its state, and does nothing."""
        assert self.alive, f"{self.name} is not running ({self.log_tail()})"
        os.kill(self.pid, signal.SIGSTOP)

    def sigcont(self) -> None:
        """Let a frozen process run again (SIGCONT)."""
        if self.alive:
            os.kill(self.pid, signal.SIGCONT)

    def terminate(self) -> None:
        """Send SIGTERM (a clean shutdown) without waiting; a frozen process is woken first."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGCONT)
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


async def owned_partitions(process: BeaconProcess, redis: aioredis.Redis, partitions: int) -> list[int]:
    """The partitions whose lease the process holds now (owner names are host:pid:suffix)."""
    marker = f":{process.pid}:"
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.get(owner_key(partition))
        owners = await pipe.execute()
    return [partition for partition, owner in enumerate(owners) if owner and marker in _text(owner)]


async def wait_owning(process: BeaconProcess, redis: aioredis.Redis, partitions: int, timeout_s: float = 30.0) -> None:
    """Wait until the process holds at least one partition's lease."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive:
            raise AssertionError(f"{process.name} exited while starting:\n{process.log_tail()}")
        try:
            if await owned_partitions(process, redis, partitions):
                return
        except Exception as exc:  # Redis restarting: ask again
            if not redis_down(exc):
                raise
        await asyncio.sleep(0.05)
    raise AssertionError(f"{process.name} owns no partition within {timeout_s}s:\n{process.log_tail()}")


async def wait_consuming(
    process: BeaconProcess, redis: aioredis.Redis, partitions: int, timeout_s: float = 30.0
) -> None:
    """Wait until a process delivers: its outbox consumer has joined the group (it reads every partition)."""
    marker = f":{process.pid}:"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive:
            raise AssertionError(f"{process.name} exited while starting:\n{process.log_tail()}")
        try:
            for partition in range(partitions):
                consumers = await redis.xinfo_consumers(outbox_key(partition), GROUP)
                if any(marker in _text(consumer["name"]) for consumer in consumers):
                    return
        except Exception as exc:  # Redis restarting, or the group not created yet: ask again
            if not redis_down(exc):
                raise
        await asyncio.sleep(0.05)
    raise AssertionError(f"{process.name} consumes no outbox within {timeout_s}s:\n{process.log_tail()}")


async def progress_counts(redis: aioredis.Redis, partitions: list[int]) -> list[tuple[int, int]]:
    """(items appended, items committed) per partition: `cep.streams.backlog` is their difference summed."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in partitions:
            pipe.hmget(progress_key(partition), [PROGRESS_ADDED, PROGRESS_COUNT])
        replies = await pipe.execute()
    return [(int(added or 0), int(done or 0)) for added, done in replies]


async def stop_mid_batch(
    process: BeaconProcess, redis: aioredis.Redis, partitions: int, rng: random.Random, wait_s: float
) -> str:
    """Freeze the process, preferably while a partition it owns has uncommitted entries (a batch in flight).

    The process is frozen (SIGSTOP) at short random intervals and inspected while frozen; if it owns a
    partition with a backlog it is left frozen, else resumed. After `wait_s` it is frozen wherever it is.
    Returns where it stopped: "mid-batch" or "idle"; the process is frozen either way.
    """
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(0.005, 0.05))
        process.sigstop()
        try:
            owned = await owned_partitions(process, redis, partitions)
            if owned and any(added > done for added, done in await progress_counts(redis, owned)):
                return "mid-batch"
        except Exception as exc:  # Redis restarting: look again
            if not redis_down(exc):
                raise
        process.sigcont()
    process.sigstop()
    return "idle"


async def kill9_mid_batch(
    process: BeaconProcess, redis: aioredis.Redis, partitions: int, rng: random.Random, wait_s: float
) -> str:
    """SIGKILL the process, preferably mid-batch (see `stop_mid_batch`); returns "mid-batch" or "idle"."""
    where = await stop_mid_batch(process, redis, partitions, rng, wait_s)
    process.kill9()
    return where


async def kill9_and_restart(
    process: BeaconProcess,
    redis: aioredis.Redis,
    partitions: int,
    rng: random.Random,
    session: aiohttp.ClientSession,
    times: int = 2,
) -> list[str]:
    """SIGKILL the process `times` times, preferably mid-batch, restarting it healthy after each; returns
    where each kill landed ("mid-batch" or "idle")."""
    kills = []
    for _ in range(times):
        kills.append(await kill9_mid_batch(process, redis, partitions, rng, wait_s=2.0))
        process.start()
        await wait_healthy(process, session)
    return kills


async def freeze_mid_batch(
    process: BeaconProcess, redis: aioredis.Redis, partitions: int, rng: random.Random, seconds: float
) -> str:
    """Freeze the process, preferably mid-batch, for `seconds`, then let it run on; returns where it stopped.

    Longer than its lease, the freeze lets another process take its partitions over: whatever it was
    about to commit when it stopped must then be refused (fenced).
    """
    where = await stop_mid_batch(process, redis, partitions, rng, wait_s=1.5)
    try:
        await asyncio.sleep(seconds)
    finally:
        process.sigcont()
    process.freezes += 1
    return where


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stop_all(processes: list[BeaconProcess]) -> None:
    """Stop every process (in the caller's finally): SIGTERM all first, then wait for each."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop()
