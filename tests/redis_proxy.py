"""A TCP relay between Redis clients and a real Redis that a test tells to misbehave at one exact point: lose
the reply to one command after Redis ran it, or answer every command with an error reply in Redis's place."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass(eq=False)  # kept in a set, by identity
class _Link:
    """One client connection and its upstream connection to Redis."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    awaiting: bool = False  # the last request matched `lose_reply`'s markers: its reply is watched
    pending: bytearray = field(default_factory=bytearray)  # request bytes not yet split into commands


class RedisProxy:
    """Listens on a free loopback port and relays each connection to `upstream_host:upstream_port`.

    - `lose_reply(*markers, reply=b":1")`: the next request holding every marker is passed to Redis; when its
      reply begins with `reply` (the command ran, e.g. a script returned 1), that reply is swallowed and the
      client's connection closed, as a dropped connection does. Later matching requests pass, and the head of
      each of their replies is recorded in `watched_replies` (the lost one first).
    - `answer_errors(text)`: every command is answered `-<text>` without reaching Redis (None: relay again).
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._markers: tuple[bytes, ...] = ()
        self._lose: bytes | None = None
        self._error: bytes | None = None
        self.watched_replies: list[bytes] = []
        self.errors_sent = 0

    async def start(self) -> RedisProxy:
        """Listen; returns itself."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        """redis:// URL of the relay."""
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    def lose_reply(self, *markers: bytes, reply: bytes = b":1") -> None:
        """Arm: swallow the next reply starting with `reply` to a request holding every marker."""
        self._markers, self._lose = markers, reply

    def answer_errors(self, text: str | None) -> None:
        """Answer every command with the error `text` (None: relay to Redis again)."""
        self._error = None if text is None else f"-{text}\r\n".encode()

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.client.close()
            link.upstream.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self._upstream)
        except OSError:
            client.close()
            return
        link = _Link(client, upstream)
        self._links.add(link)
        try:
            await asyncio.gather(self._requests(link, client_reader), self._replies(link, upstream_reader))
        finally:
            self._links.discard(link)
            client.close()
            upstream.close()

    async def _requests(self, link: _Link, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                if self._error is not None:
                    link.pending += chunk
                    commands = _take_commands(link.pending)
                    self.errors_sent += commands
                    link.client.write(self._error * commands)
                    await link.client.drain()
                    continue
                if self._markers and all(marker in chunk for marker in self._markers):
                    link.awaiting = True
                link.upstream.write(chunk)
                await link.upstream.drain()
        link.upstream.close()

    async def _replies(self, link: _Link, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                if link.awaiting:
                    link.awaiting = False
                    self.watched_replies.append(chunk[:16])
                    if self._lose is not None and chunk.startswith(self._lose):
                        self._lose = None
                        link.client.transport.abort()  # the command ran; its client never hears so
                        link.upstream.close()
                        return
                link.client.write(chunk)
                await link.client.drain()
        link.client.close()


def _take_commands(buffer: bytearray) -> int:
    """Remove the complete commands (RESP arrays of bulk strings, as clients send them) from the front of
    `buffer`; how many there were."""
    count = 0
    while True:
        position = _command_end(buffer)
        if position is None:
            return count
        del buffer[:position]
        count += 1


def _command_end(buffer: bytearray) -> int | None:
    line_end = buffer.find(b"\r\n")
    if not buffer.startswith(b"*") or line_end < 0:
        return None
    position = line_end + 2
    for _ in range(int(buffer[1:line_end])):
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        position = line_end + 2 + int(buffer[position + 1 : line_end]) + 2
        if position > len(buffer):
            return None
    return position
