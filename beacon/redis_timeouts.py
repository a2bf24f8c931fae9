"""Redis connections whose socket timeout bounds how long a reply may be late, on top of the time its command
asks Redis to wait (`XREAD ... BLOCK`, `WAITAOF`): a hung server fails a command with a TimeoutError after the
timeout, and a blocking command is never cut short by it.

redis-py reads every reply under one `socket_timeout` (redis/redis-py#2807: a BLOCK or WAITAOF longer than it
raises TimeoutError). These connections note each command's block time as they pack it and read its reply
with the timeout plus that time. Replies come back in the order commands were sent, pipelines included, so a
queue of block times per connection, filled as commands are sent, lines up with the reads; a connection that
drops forgets the queue.
"""

from __future__ import annotations

from collections import deque
from typing import Any, TypeVar, cast

from redis.asyncio import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection

# Commands whose timeout (seconds, float) is their last argument, or their first.
_LAST_ARG_SECONDS = frozenset({"BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BZPOPMIN", "BZPOPMAX"})
_FIRST_ARG_SECONDS = frozenset({"BLMPOP", "BZMPOP"})


def _word(arg: Any) -> str:
    return (arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)).upper()


def block_allowance_s(args: tuple[Any, ...]) -> float | None:
    """How long Redis may hold the reply to the command `args` on purpose, in seconds: an XREAD / XREADGROUP's
    BLOCK, a WAIT / WAITAOF's timeout, a BLPOP-like command's timeout; 0 for any other command, and for one
    too malformed to read (Redis answers it with an error); None when it may wait for ever (0 as the wait)."""
    name = _word(args[0]).split(" ", 1)[0]
    try:
        wait_s = _wait_s(name, args)
    except (IndexError, ValueError):
        return 0.0
    if wait_s is None or wait_s < 0:  # a negative wait is refused by Redis at once
        return 0.0
    return wait_s or None  # Redis reads a wait of 0 as "for ever"


def _wait_s(name: str, args: tuple[Any, ...]) -> float | None:
    """The command's own wait in seconds as written, or None for a command that does not wait."""
    if name in ("XREAD", "XREADGROUP"):
        words = [_word(arg) for arg in args[1:]]
        streams = words.index("STREAMS") if "STREAMS" in words else len(words)
        if "BLOCK" not in words[:streams]:
            return None
        return int(args[1 + words.index("BLOCK") + 1]) / 1000
    if name == "WAITAOF":
        return int(args[3]) / 1000
    if name == "WAIT":
        return int(args[2]) / 1000
    if name in _LAST_ARG_SECONDS:
        return float(args[-1])
    if name in _FIRST_ARG_SECONDS:
        return float(args[1])
    return None


class _BlockAware(AbstractConnection):
    """Reads each reply with `socket_timeout` plus its command's block time (see the module's docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._packed_blocks: list[float | None] = []  # of the commands packed for the next send
        self._pending_blocks: deque[float | None] = deque()  # of the commands sent, in order, not yet answered

    def pack_command(self, *args: Any) -> list[bytes]:
        """Pack as redis-py does, noting how long the command may block (pipelines pack through here too)."""
        packed: list[bytes] = super().pack_command(*args)
        self._packed_blocks.append(block_allowance_s(args))
        return packed

    def pack_commands(self, commands: Any) -> list[bytes]:
        """Pack a pipeline as redis-py does; if one of its commands cannot be packed (a DataError), nothing is
        sent, so the block times noted for the ones before it are dropped too: left, they would be taken by the
        next send on this connection and read its replies with the wrong timeouts, for the connection's life."""
        mark = len(self._packed_blocks)
        try:
            packed: list[bytes] = super().pack_commands(commands)
        except BaseException:
            del self._packed_blocks[mark:]
            raise
        return packed

    async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        """Send as redis-py does; the replies to what was packed for it are owed from now on."""
        # A send may first connect (a handshake) or check the connection's health (PING): those pack, send and
        # read commands of their own, in between. This send's commands are the ones packed before it began.
        blocks, self._packed_blocks = self._packed_blocks, []
        await super().send_packed_command(*args, **kwargs)
        self._pending_blocks.extend(blocks)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """The next reply, read with the socket timeout plus the block time of the command it answers."""
        allowance = self._pending_blocks.popleft() if self._pending_blocks else 0.0
        explicit = kwargs.get("timeout", args[1] if len(args) > 1 else None)
        base = self.socket_timeout
        if allowance == 0.0 or explicit is not None or base is None:
            return await super().read_response(*args, **kwargs)
        # One connection serves one caller at a time, so its timeout can be widened for this one read.
        self.socket_timeout = None if allowance is None else base + allowance
        try:
            return await super().read_response(*args, **kwargs)
        finally:
            self.socket_timeout = base

    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        """Close as redis-py does; the replies still owed will never be read."""
        self._packed_blocks.clear()
        self._pending_blocks.clear()
        await super().disconnect(*args, **kwargs)


class TimedConnection(_BlockAware, Connection):
    """A TCP connection (redis://)."""


class TimedSSLConnection(_BlockAware, SSLConnection):
    """A TLS connection (rediss://)."""


class TimedUnixConnection(_BlockAware, UnixDomainSocketConnection):
    """A unix socket connection (unix://)."""


C = TypeVar("C", bound=AbstractConnection)

_TIMED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: TimedConnection,
    SSLConnection: TimedSSLConnection,
    UnixDomainSocketConnection: TimedUnixConnection,
}


def timed(connection_class: type[C]) -> type[C]:
    """The block-aware version of one of redis-py's connection classes (what a URL's scheme chose)."""
    return cast(type[C], _TIMED.get(connection_class, connection_class))


def time_cluster(cluster: RedisCluster) -> None:
    """Give a new cluster client block-aware connections to every node, before its first command.

    RedisCluster takes no connection class: every node it finds is built from its `connection_kwargs`, and the
    startup node was built already.
    """
    for kwargs in (cluster.connection_kwargs, cluster.nodes_manager.connection_kwargs):  # one dict in redis-py 8
        kwargs["connection_class"] = timed(kwargs["connection_class"])
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = timed(node.connection_class)
