"""A producer for Beacon's WebSocket ingest: batches events into msgpack frames and resends them until acked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import msgpack
from yarl import URL

log = logging.getLogger("beacon.client")
T = TypeVar("T")

INGEST_PATH = "/v1/ingest"
# Close codes after which reconnecting cannot help: the key, or a frame the server will never take.
_FATAL_CLOSES = {4401: "API key refused", 4403: "API key lacks the events scope", 1009: "frame too large"}
# Bytes a frame adds around its events: map header, "seq", a 64-bit int, "events", array header.
_FRAME_OVERHEAD = 64
_BACKOFF_FIRST_S = 0.05


class ProducerError(Exception):
    """Root of the producer's errors."""


class IngestRefusedError(ProducerError):
    """The server refused the connection for good (bad key, missing scope, oversized frame)."""


class EventsRejectedError(ProducerError):
    """Raised by flush() in strict mode when the server rejected events since the previous flush."""

    def __init__(self, rejected: list[RejectedEvent]) -> None:
        first = rejected[0]
        super().__init__(f"{len(rejected)} event(s) rejected; first: {first.path}: {first.message}")
        self.rejected = rejected


class FlushTimeoutError(ProducerError, TimeoutError):
    """flush() or close() ran out of time with events still unacknowledged (they stay pending)."""

    def __init__(self, timeout: float, unacked_events: int, unacked_frames: int) -> None:
        super().__init__(
            f"flush timed out after {timeout:g}s: {unacked_events} event(s) in {unacked_frames} frame(s) "
            "not acknowledged (is the server reachable?)"
        )
        self.timeout = timeout
        self.unacked_events = unacked_events
        self.unacked_frames = unacked_frames


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """One event the server refused, and why (code, message, JSON path)."""

    event: dict[str, Any]
    code: str
    message: str
    path: str | None


@dataclass(slots=True)
class _Frame:
    seq: int
    events: list[dict[str, Any]]
    payload: bytes


class BeaconProducer:
    """Async producer: send() queues, frames leave by size or linger, flush() waits for every ack.

    At-least-once: a frame stays pending until its ack, and every pending frame is sent again after a
    reconnect. Each event carries an `event_id` (assigned here if missing), so Beacon drops replays.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        batch_size: int = 500,
        linger_ms: float = 5,
        max_in_flight: int = 8,
        *,
        max_frame_bytes: int = 4 * 1024 * 1024,
        strict: bool = False,
        on_error: Callable[[RejectedEvent], None] | None = None,
        heartbeat_s: float = 20.0,
        max_backoff_s: float = 5.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if batch_size < 1 or max_in_flight < 1:
            raise ValueError("batch_size and max_in_flight must be at least 1")
        target = URL(url)
        base = target.path.rstrip("/")
        # Either the socket's URL or the server's base URL (then /v1/ingest is appended).
        self.url = target if base.endswith(INGEST_PATH) else target.with_path(base + INGEST_PATH)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._batch_size = batch_size
        self._linger_s = linger_ms / 1000
        self._max_in_flight = max_in_flight
        self._max_frame_bytes = max_frame_bytes
        self._strict = strict
        self._on_error = on_error
        self._heartbeat_s = heartbeat_s
        self._max_backoff_s = max_backoff_s
        self._session = session
        self._owns_session = session is None
        # Every rejected event so far, oldest first; the caller may clear it.
        self.errors: list[RejectedEvent] = []
        self.acked_events = 0
        self.connections = 0
        self._reported_errors = 0
        self._batch: list[dict[str, Any]] = []
        self._packed: list[bytes] = []
        self._batch_bytes = 0
        self._next_seq = 1
        self._pending: dict[int, _Frame] = {}
        # One slot per unacked frame: send() waits here when the server falls behind.
        self._slots = asyncio.Semaphore(max_in_flight)
        self._seal_lock = asyncio.Lock()
        self._outbox: asyncio.Queue[int] = asyncio.Queue()
        self._drained = asyncio.Event()
        self._drained.set()
        self._has_work = asyncio.Event()
        self._linger_task: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._fatal: ProducerError | None = None
        self._stopping = False
        self._closed = False

    async def __aenter__(self) -> BeaconProducer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.close()
        else:
            # The body failed: do not block its exception behind a flush that may never end.
            await self._shutdown()

    async def start(self) -> None:
        """Open the session and start connecting (close() undoes it)."""
        if self._runner is not None:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10))
        self._runner = asyncio.create_task(self._run(), name="beacon-producer")

    @property
    def unacked_frames(self) -> int:
        """Frames sent (or waiting to be resent) without an ack yet."""
        return len(self._pending)

    async def send(self, event: Mapping[str, Any]) -> str:
        """Queue a copy of `event` (with an `event_id` assigned if missing); returns its event_id."""
        self._check_usable()
        wire = dict(event)
        if wire.get("event_id") is None:
            wire["event_id"] = uuid.uuid4().hex
        packed = msgpack.packb(wire, use_bin_type=True)
        if len(packed) + _FRAME_OVERHEAD > self._max_frame_bytes:
            raise ValueError(
                f"event {wire['event_id']} packs to {len(packed)} bytes; max_frame_bytes is {self._max_frame_bytes}"
            )
        while self._batch and (
            len(self._batch) >= self._batch_size
            or self._batch_bytes + len(packed) + _FRAME_OVERHEAD > self._max_frame_bytes
        ):
            await self._seal()
        self._batch.append(wire)
        self._packed.append(packed)
        self._batch_bytes += len(packed)
        if len(self._batch) >= self._batch_size:
            await self._seal()
        elif self._linger_task is None:
            self._linger_task = asyncio.create_task(self._linger(), name="beacon-producer-linger")
        return str(wire["event_id"])

    @property
    def unacked_events(self) -> int:
        """Events sent or queued without an ack yet (the open batch included)."""
        return sum(len(frame.events) for frame in self._pending.values()) + len(self._batch)

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (the error names what is unacked)
        """Send the open batch and wait until every frame so far is acked (or raise why it cannot be).

        With `timeout` (seconds), raise FlushTimeoutError when the acks have not all come by then; the
        events stay pending and are still resent, so a later flush() may succeed.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._seal()
                await self._drained.wait()
        except TimeoutError:
            if self._fatal is not None:
                raise self._fatal from None
            raise FlushTimeoutError(timeout or 0.0, self.unacked_events, self.unacked_frames) from None
        if self._fatal is not None:
            raise self._fatal
        if self._strict and len(self.errors) > self._reported_errors:
            rejected = self.errors[self._reported_errors :]
            self._reported_errors = len(self.errors)
            raise EventsRejectedError(rejected)

    async def close(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (as flush)
        """Flush (for at most `timeout` seconds), then close the socket and the session; idempotent.

        The producer is closed even when the flush fails or times out; the error is raised after.
        """
        if self._closed:
            return
        try:
            if self._runner is not None and self._fatal is None and not self._stopping:
                await self.flush(timeout)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._has_work.set()
        for task in (self._linger_task, self._runner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._linger_task = None
        if self._owns_session and self._session is not None:
            await self._session.close()
        if self._pending or self._batch:
            log.warning("producer closed with %d event(s) never acknowledged", self.unacked_events)

    def _check_usable(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._runner is None or self._stopping:
            raise ProducerError("the producer is not running (use `async with` or start())")

    async def _linger(self) -> None:
        await asyncio.sleep(self._linger_s)
        # A fatal error surfaces through send() and flush(); this task has nobody to tell.
        with contextlib.suppress(ProducerError):
            await self._seal()

    async def _seal(self) -> None:
        """Turn the open batch into a pending frame once a slot is free, and queue it for sending."""
        async with self._seal_lock:
            if not self._batch:
                if self._fatal is not None:
                    raise self._fatal
                return
            await self._slots.acquire()
            if self._fatal is not None:
                self._slots.release()  # pass the wake-up on to the next blocked sender
                raise self._fatal
            events, packed = self._batch, self._packed
            self._batch, self._packed, self._batch_bytes = [], [], 0
            linger, self._linger_task = self._linger_task, None
            if linger is not None and linger is not asyncio.current_task():
                linger.cancel()
            seq = self._next_seq
            self._next_seq += 1
            self._pending[seq] = _Frame(seq, events, _frame_payload(seq, packed))
            self._drained.clear()
            self._has_work.set()
            self._outbox.put_nowait(seq)

    async def _run(self) -> None:
        """Keep a connection while the producer runs; an unexpected error stops it loudly, not silently."""
        try:
            await self._connect_loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("producer connection loop failed")
            self._fail(ProducerError(f"producer stopped: {exc!r}"))

    async def _connect_loop(self) -> None:
        """Connect, serve, and reconnect with jittered backoff while frames wait for acks."""
        attempt = 0
        while True:
            assert self._session is not None
            try:
                ws = await self._session.ws_connect(
                    self.url, headers=self._headers, heartbeat=self._heartbeat_s or None
                )
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (401, 403):
                    self._fail(IngestRefusedError(f"ingest refused the API key: HTTP {exc.status}"))
                    return
                reason = f"handshake failed: HTTP {exc.status}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            else:
                self.connections += 1
                replied, close_code = await self._serve(ws)
                if close_code in _FATAL_CLOSES:
                    self._fail(IngestRefusedError(f"ingest closed the socket: {_FATAL_CLOSES[close_code]}"))
                    return
                if replied:
                    attempt = 0
                reason = f"closed with code {close_code}"
            if self._stopping:
                return
            delay = min(self._max_backoff_s, _BACKOFF_FIRST_S * 2**attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            if self._pending:
                log.warning(
                    "ingest connection lost (%s); reconnecting in %.2fs, %d frame(s) to resend",
                    reason,
                    delay,
                    len(self._pending),
                )
            await asyncio.sleep(delay)
            # Reconnect only with something to send: an idle producer need not hold a socket.
            await self._has_work.wait()
            if self._stopping:
                return

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[bool, int | None]:
        """Resend every pending frame, then read replies until the socket closes: (any reply, close code)."""
        replied = False
        close_code: int | None = None
        # A fresh outbox: frames sealed from now on join it, and every earlier pending one is resent.
        outbox: asyncio.Queue[int] = asyncio.Queue()
        self._outbox = outbox
        for seq in self._pending:
            outbox.put_nowait(seq)
        writer = asyncio.create_task(self._write_loop(ws, outbox), name="beacon-producer-write")
        try:
            while True:
                msg = await ws.receive()
                if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    # The CLOSE frame carries the server's code even when the socket dies before our echo.
                    close_code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else None
                    break
                replied = True
                try:
                    binary = msg.type is aiohttp.WSMsgType.BINARY
                    self._on_reply(msgpack.unpackb(msg.data, raw=False) if binary else json.loads(msg.data))
                except Exception:
                    # A reply we cannot use leaves its frame pending: it is resent after the next reconnect.
                    log.exception("unusable ingest reply")
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await ws.close()
        return replied, close_code or ws.close_code

    async def _write_loop(self, ws: aiohttp.ClientWebSocketResponse, outbox: asyncio.Queue[int]) -> None:
        try:
            while True:
                frame = self._pending.get(await outbox.get())
                if frame is not None:  # acked meanwhile: nothing to resend
                    await ws.send_bytes(frame.payload)
        except ConnectionError:
            # The reader sees the same broken socket and ends; _run reconnects and resends.
            await ws.close()

    def _on_reply(self, reply: Any) -> None:
        """Match an ack (or a frame error) to its pending frame; record rejected events; free the slot."""
        if not isinstance(reply, dict) or "auth" in reply:
            return
        seq = reply.get("ack")
        frame = self._pending.get(seq) if isinstance(seq, int) else None
        if frame is None:  # a second ack for a resent frame, or an error for no frame of ours
            if "error" in reply:
                log.warning("ingest refused a frame: %s", reply["error"])
            return
        error = reply.get("error")
        if isinstance(error, dict):
            rejected = [_rejected(event, error) for event in frame.events]
            accepted = 0
        else:
            rejected = [_rejected(frame.events[int(item["index"])], item) for item in reply.get("errors") or ()]
            accepted = len(reply.get("accepted") or ())
        # Only a fully read reply settles the frame; anything unreadable above leaves it pending.
        del self._pending[frame.seq]  # the frame's own seq: `seq` came from the reply, typed Any
        self.acked_events += accepted
        self.errors.extend(rejected)
        self._slots.release()
        if not self._pending:
            self._drained.set()
            if not self._stopping:
                self._has_work.clear()
        if self._on_error is not None:
            for item in rejected:
                try:
                    self._on_error(item)
                except Exception:
                    log.exception("on_error callback failed")

    def _fail(self, error: ProducerError) -> None:
        """Stop for good: wake flush() and every sender blocked on a slot so they raise `error`."""
        log.error("%s", error)
        self._fatal = error
        self._drained.set()
        self._has_work.set()
        self._slots.release()


class SyncProducer:
    """BeaconProducer for code without an event loop: the producer runs on a private loop in a thread.

    Every method blocks until the producer has done it, so plain scripts, WSGI handlers and notebooks can
    send events. Arguments are BeaconProducer's; `on_error` runs on the producer's thread. Use it as a
    context manager or call close(): the thread is a daemon, so a forgotten close() loses the unacked
    events instead of hanging the interpreter at exit.
    """

    def __init__(self, url: str, api_key: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="beacon-producer", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._producer: BeaconProducer = self._call(self._open(url, api_key, options))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _open(url: str, api_key: str | None, options: dict[str, Any]) -> BeaconProducer:
        # Built on the loop that runs it, so its locks and events belong to that loop.
        producer = BeaconProducer(url, api_key, **options)
        await producer.start()
        return producer

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close(self._producer._shutdown())

    @property
    def errors(self) -> list[RejectedEvent]:
        """Every rejected event so far (see BeaconProducer.errors)."""
        return self._producer.errors

    @property
    def acked_events(self) -> int:
        return self._producer.acked_events

    @property
    def unacked_events(self) -> int:
        return self._producer.unacked_events

    def send(self, event: Mapping[str, Any]) -> str:
        """Queue `event` (blocks while max_in_flight frames wait for acks); returns its event_id."""
        return self._call(self._producer.send(event))

    def flush(self, timeout: float | None = None) -> None:
        """Block until every event so far is acked; FlushTimeoutError after `timeout` seconds."""
        self._call(self._producer.flush(timeout))

    def close(self, timeout: float | None = None) -> None:
        """Flush (at most `timeout` seconds), close the producer and stop its thread; idempotent."""
        if not self._closed:
            self._close(self._producer.close(timeout))

    def _close(self, closing: Coroutine[Any, Any, None]) -> None:
        try:
            self._call(closing)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coroutine.close()
            raise ProducerError("the producer is closed")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise ProducerError("SyncProducer called from its own thread (an on_error callback?): use the async API")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


def _frame_payload(seq: int, packed_events: list[bytes]) -> bytes:
    """`{"seq": seq, "events": [...]}` in msgpack, from events packed once in send()."""
    packer = msgpack.Packer(use_bin_type=True)
    head = [packer.pack_map_header(2), packer.pack("seq"), packer.pack(seq), packer.pack("events")]
    return b"".join([*head, packer.pack_array_header(len(packed_events)), *packed_events])


def _rejected(event: dict[str, Any], error: Mapping[str, Any]) -> RejectedEvent:
    return RejectedEvent(event, str(error.get("code")), str(error.get("message")), error.get("path"))
