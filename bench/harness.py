"""Processes the benchmark starts and stops: a private Redis (or Cluster), `beacon serve`, `beacon worker`s.

Everything listens on loopback. Each Beacon process runs in its own session (process group) so that
stopping it stops whatever it started; every start has a bounded wait and every stop is reached from
a `finally`, escalating from SIGTERM to SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from redis.asyncio import Redis

from beacon.redis_server import EmbeddedRedis, free_port

RULESET_PATH = Path(__file__).parent / "rulesets" / "mix.json"
PARTITIONS = 12  # Beacon's default (BEACON_PARTITIONS)
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class RedisServer(Protocol):
    """What the harness needs of a private server or cluster."""

    @property
    def url(self) -> str:
        """The URL Beacon connects to."""
        ...

    def start(self) -> None:
        """Start and wait until it serves."""
        ...

    def stop(self) -> None:
        """Stop it."""
        ...


class HarnessError(RuntimeError):
    """A process of the benchmark did not start or misbehaved."""


def load_ruleset() -> dict[str, Any]:
    """The benchmark ruleset document (bench/rulesets/mix.json)."""
    document: dict[str, Any] = json.loads(RULESET_PATH.read_text())
    return document


@dataclass
class BeaconProcess:
    """One `beacon serve` or `beacon worker` child in its own process group, with its log file."""

    role: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the process's log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the process group, wait, then SIGKILL it."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


@dataclass
class BeaconStack:
    """A private Redis, one `beacon serve` and any number of `beacon worker` processes."""

    workdir: Path
    redis_server: RedisServer
    env: dict[str, str]
    port: int
    serve: BeaconProcess | None = None
    workers: list[BeaconProcess] = field(default_factory=list)
    cluster: bool = False

    @property
    def base_url(self) -> str:
        """The HTTP base URL of `beacon serve`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def partitions(self) -> int:
        """Event stream partitions the processes were started with."""
        return int(self.env["BEACON_PARTITIONS"])

    def client(self) -> Any:
        """A new async Redis client on the stack's server (a cluster client for a cluster)."""
        if self.cluster:
            from redis.asyncio.cluster import RedisCluster

            return RedisCluster.from_url(self.redis_server.url.replace("redis+cluster://", "redis://"))
        return Redis.from_url(self.redis_server.url)

    def spawn(self, role: str, extra_env: Mapping[str, str] | None = None) -> BeaconProcess:
        """Start `beacon <role>` (serve or worker) in a new process group."""
        index = len(self.workers) + (self.serve is not None)
        log_path = self.workdir / f"{role}-{index}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "beacon.cli", role],
                env={**self.env, **(extra_env or {})},
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return BeaconProcess(role, process, log_path)

    def pids_by_role(self) -> dict[str, list[int]]:
        """The running Beacon processes' pids: `serve`, and `workers` when any `beacon worker` runs."""
        roles = {"serve": [self.serve.process.pid] if self.serve is not None else []}
        if self.workers:
            roles["workers"] = [worker.process.pid for worker in self.workers]
        return roles

    async def start_workers(self, count: int) -> None:
        """Start `count` more `beacon worker` processes."""
        for _ in range(count):
            self.workers.append(self.spawn("worker"))
        await asyncio.sleep(0.2)
        for worker in self.workers:
            if worker.process.poll() is not None:
                raise HarnessError(f"beacon worker exited at start: {worker.log_tail()}")

    def stop_workers(self) -> None:
        """Stop every `beacon worker` process."""
        workers, self.workers = self.workers, []
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGTERM)
        for worker in workers:
            worker.stop()

    async def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll /healthz until 200, failing early when the server process exits."""
        assert self.serve is not None
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.serve.process.poll() is not None:
                    raise HarnessError(f"beacon serve exited at start: {self.serve.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"{self.base_url}/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise HarnessError(f"beacon serve not healthy within {timeout_s}s: {self.serve.log_tail()}")

    async def push_ruleset(self, document: dict[str, Any]) -> int:
        """PUT a ruleset over HTTP; returns its version."""
        async with (
            aiohttp.ClientSession() as session,
            session.put(f"{self.base_url}/v1/rulesets/{document['id']}", json=document) as response,
        ):
            body = await response.json(content_type=None)
            if response.status != 200:
                raise HarnessError(f"ruleset refused: {body}")
            return int(body["version"])

    async def push_journey(self, document: dict[str, Any]) -> int:
        """PUT a journey over HTTP (`PUT /v1/journeys/{id}`); returns its version."""
        async with (
            aiohttp.ClientSession() as session,
            session.put(f"{self.base_url}/v1/journeys/{document['id']}", json=document) as response,
        ):
            body = await response.json(content_type=None)
            if response.status != 200:
                raise HarnessError(f"journey refused: {body}")
            return int(body["version"])

    def stop(self) -> None:
        """Stop workers, then the server, then Redis (each stop is attempted even if one fails)."""
        try:
            self.stop_workers()
        finally:
            try:
                if self.serve is not None:
                    self.serve.stop()
            finally:
                self.redis_server.stop()


def _cluster_server(data_dir: Path) -> RedisServer:
    """A 3-master loopback cluster, when this Beacon ships `EmbeddedCluster`."""
    from beacon import redis_server

    factory = getattr(redis_server, "EmbeddedCluster", None)
    if factory is None:
        raise HarnessError("beacon.redis_server has no EmbeddedCluster")
    server: RedisServer = factory(data_dir, masters=3)
    return server


@contextlib.asynccontextmanager
async def beacon_stack(
    *,
    run_workers: bool = True,
    cluster: bool = False,
    extra_env: Mapping[str, str] | None = None,
    ruleset: dict[str, Any] | None = None,
    with_ruleset: bool = True,
) -> AsyncIterator[BeaconStack]:
    """Start Redis (AOF on, as embedded Beacon runs it) and `beacon serve`, push the ruleset (the mix unless
    `ruleset` is given; none when not `with_ruleset`); stop all on exit."""
    with tempfile.TemporaryDirectory(prefix="beacon-bench-") as tmp:
        workdir = Path(tmp)
        server = _cluster_server(workdir / "cluster") if cluster else EmbeddedRedis(workdir / "redis")
        port = free_port()
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "BEACON_REDIS_URL": server.url,
            "BEACON_REDIS_CLUSTER": "1" if cluster else "0",
            "BEACON_PORT": str(port),
            "BEACON_HOST": "127.0.0.1",
            "BEACON_PARTITIONS": str(PARTITIONS),
            "BEACON_DATA_DIR": str(workdir / "data"),
            "BEACON_LOG_LEVEL": "WARNING",
            "BEACON_API_KEYS": "",
            "BEACON_RUN_WORKERS": "1" if run_workers else "0",
            # Delivery is not measured: the outbox is the end of the measured path (and no sinks exist here).
            "BEACON_RUN_CONNECTORS": "0",
            "BEACON_OPS_PORT": "0",  # each `beacon worker` serves /metrics on a free port of its own
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        stack = BeaconStack(workdir, server, env, port, cluster=cluster)
        try:
            await asyncio.to_thread(server.start)
            stack.serve = stack.spawn("serve")
            await stack.wait_healthy()
            if with_ruleset:
                await stack.push_ruleset(ruleset or load_ruleset())
            yield stack
        finally:
            await asyncio.to_thread(stack.stop)
