"""The Redis the chaos test runs on: one private server, or a 3-master loopback cluster; either way a list
of server processes that can be SIGKILLed one at a time and restarted on the same data dir and port."""

from __future__ import annotations

import random
from pathlib import Path

import redis.asyncio as aioredis
from redis.crc import key_slot

from beacon.redis_server import EmbeddedCluster, EmbeddedRedis
from beacon.services import connect
from beacon.settings import Settings
from cep import streams

KINDS = ("single", "cluster")


class RedisUnderTest:
    """A private Redis as Beacon configures it (AOF, `appendfsync everysec`): "single" or "cluster"."""

    def __init__(self, kind: str, data_dir: Path) -> None:
        assert kind in KINDS, kind
        self.kind = kind
        self.cluster = EmbeddedCluster(data_dir) if kind == "cluster" else None
        self.servers = self.cluster.nodes if self.cluster else [EmbeddedRedis(data_dir)]

    @property
    def url(self) -> str:
        """What BEACON_REDIS_URL says: `redis://` or `redis+cluster://` (Beacon then speaks cluster)."""
        return self.cluster.url if self.cluster else self.servers[0].url

    def start(self) -> None:
        """Start the server, or the nodes and join them; returns once it serves every slot."""
        if self.cluster:
            self.cluster.start()
        else:
            self.servers[0].start()

    def stop(self) -> None:
        """Stop every server (SIGTERM: the AOF is flushed)."""
        if self.cluster:
            self.cluster.stop()
        else:
            self.servers[0].stop()

    def client(self) -> aioredis.Redis:
        """A client as Beacon builds one: a cluster client on a cluster (it follows the slots to the nodes)."""
        return connect(Settings(redis_url=self.url))

    def server_of(self, partition: int) -> int:
        """The index of the server that holds the partition's keys (they share one hash tag: one slot)."""
        if self.cluster is None:
            return 0
        return self.cluster.node_of_slot(key_slot(streams.events_key(partition).encode()))

    def partitions_on(self, server: int, partitions: int) -> list[int]:
        """The partitions whose keys the server holds."""
        return [partition for partition in range(partitions) if self.server_of(partition) == server]

    def victims(self, kills: int, seed: str) -> list[int]:
        """Which server each of `kills` Redis kills hits: the one server, or different masters (seeded)."""
        if self.cluster is None:
            return [0] * kills
        return random.Random(seed).sample(range(len(self.servers)), kills)

    def kill(self, server: int) -> None:
        """SIGKILL one server: on a cluster the other masters keep serving their slots."""
        self.servers[server].kill()

    def restart(self, server: int) -> None:
        """Start a killed server again on its data dir and port (AOF replayed; a node keeps its nodes.conf,
        so its id and slots); blocks until it answers and, on a cluster, until the cluster is healthy."""
        if self.cluster:
            self.cluster.restart_node(server)
        else:
            self.servers[server].start()
