"""WebSocket ingest (`GET /v1/ingest`): framed event batches, acked after a durable append, bounded in flight."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web
from redis.asyncio import Redis

from api import keys
from api.bodies import decode_bytes
from api.routes_events import Validated, resolve_aliases, validate_items
from beacon import metrics
from beacon.errors import AuthError, BeaconError, ForbiddenError, TooLargeError, ValidationError
from beacon.redis_errors import describe, is_redis_trouble
from beacon.settings import Settings
from cep import streams
from cep.events import Event
from cep.scripts import NotDurableError

log = logging.getLogger("beacon.ingest")

TRANSPORT = "ws"
SCOPE = "events"
FRAME_FIELDS = ("seq", "events")
# Close codes 4000-4999 are the application's: 44xx mirror the HTTP status they stand for.
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_IDLE = 4408
_DATA = (WSMsgType.TEXT, WSMsgType.BINARY)


@dataclass(slots=True)
class IngestHub:
    """Open ingest sockets (closed on shutdown) and frame counters, readable by tests and operators."""

    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    frames_read: int = 0
    # Frames read from a socket and not yet answered, over all sockets.
    in_flight: int = 0
    # The most frames any single socket has held at once; never above settings.ws_max_in_flight.
    peak_in_flight: int = 0


HUB = web.AppKey("ingest_hub", IngestHub)


@dataclass(slots=True)
class _Answer:
    """What one frame is owed: its events appended (maybe none), then `body` sent in the frame's encoding."""

    binary: bool
    body: dict[str, Any]
    validated: Validated = field(default_factory=Validated)

    @property
    def events(self) -> list[Event]:
        """The frame's good events (with their users once its aliases are resolved)."""
        return self.validated.events


def authorize(settings: Settings, token: str | None) -> None:
    """Raise AuthError / ForbiddenError unless `token` is a configured key holding the `events` scope."""
    if not token:
        raise AuthError('missing API key (Authorization: Bearer <key>, or a first frame {"auth": "<key>"})')
    scopes = settings.api_keys.get(token)
    if scopes is None:
        raise AuthError("unknown API key", path="auth")
    if SCOPE not in scopes:
        raise ForbiddenError(f"this key lacks the {SCOPE!r} scope", path="auth")


def decode_frame(data: bytes | str, binary: bool) -> Any:
    """A frame's payload: msgpack when binary, JSON when text; DecodeError saying which failed."""
    return decode_bytes(data, binary=binary, path="frame", what="binary frame" if binary else "text frame")


def encode_reply(body: dict[str, Any], binary: bool) -> bytes | str:
    """A reply in the encoding of the frame it answers (inverse of decode_frame)."""
    return msgpack.packb(body, use_bin_type=True) if binary else json.dumps(body, separators=(",", ":"))


def frame_seq(frame: Any) -> int:
    """The frame's integer `seq` (echoed in its ack)."""
    if not isinstance(frame, dict):
        raise ValidationError('a frame must be an object {"seq": <int>, "events": [...]}', path="frame")
    if "seq" not in frame:
        raise ValidationError("is required", path="seq")
    seq = frame["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise ValidationError("seq must be an integer", path="seq")
    return seq


def frame_events(frame: dict[Any, Any], max_events: int) -> list[Any]:
    """The frame's wire events, at most `max_events` of them (an empty list is a valid no-op frame)."""
    unknown = sorted(set(frame) - set(FRAME_FIELDS), key=str)
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r} (expected: seq, events)", path=str(unknown[0]))
    if "events" not in frame:
        raise ValidationError("is required", path="events")
    items = frame["events"]
    if not isinstance(items, list):
        raise ValidationError("events must be a list", path="events")
    if len(items) > max_events:
        raise TooLargeError(f"{len(items)} events in one frame; the limit is {max_events}", path="events")
    return items


class _Connection:
    """One socket: a reader task that parses frames and an appender task that appends and answers them.

    Between the two, a semaphore of `ws_max_in_flight` slots: the reader takes a slot before it reads a
    frame and the appender frees it once the frame's answer is sent, so a socket never holds more frames
    than that. When the slots are gone the reader stops calling receive(); aiohttp then pauses the
    transport after its read buffer fills and TCP pushes back on the producer.
    """

    def __init__(self, ws: web.WebSocketResponse, redis: Redis, settings: Settings, request: web.Request) -> None:
        self._ws = ws
        self._redis = redis
        self._settings = settings
        self._clock = request.app[keys.CLOCK]
        self._fsync_ms = keys.services(request).ack_fsync_ms
        self._hub = request.app[HUB]
        self._slots = asyncio.Semaphore(settings.ws_max_in_flight)
        # Unbounded as a queue, bounded by the slots: it never holds more than ws_max_in_flight answers.
        self._answers: asyncio.Queue[_Answer | None] = asyncio.Queue()
        self._in_flight = 0
        self._idle_s = settings.ws_receive_timeout_ms / 1000 or None
        self._peer = request.remote

    async def run(self, authenticated: bool) -> None:
        """Serve the socket until it closes; appends already read finish even if the peer has gone."""
        reader = asyncio.create_task(self._read_loop(authenticated), name="ingest-read")
        appender = asyncio.create_task(self._append_loop(), name="ingest-append")
        try:
            await asyncio.wait({reader, appender}, return_when=asyncio.FIRST_COMPLETED)
            # The appender may be done without fault: on a close the reader's end-of-frames marker wakes it
            # before `wait` returns, so both tasks are done here and only an exception means a failed append.
            if appender.done() and not appender.cancelled() and appender.exception() is not None:
                # Unacked frames will be resent by the producer on its next connection, so closing is the
                # safe answer.
                reader.cancel()
                exc = appender.exception()
                assert exc is not None
                if is_redis_trouble(exc) or isinstance(exc, NotDurableError):
                    # Redis down, hung, refusing writes or not fsyncing in time: expected in operation, and the
                    # producer's resend is the cure. One line, as the HTTP path logs it (answering 503), and 1013
                    # (try again later) for the producer.
                    log.warning("ingest from %s: Redis trouble, closing the socket: %s", self._peer, describe(exc))
                    reason = b"Redis unavailable; resend unacked frames"
                    await self._ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=reason)
                    return
                log.error("ingest append failed; closing the socket", exc_info=exc)
                await self._ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"append failed; resend unacked frames")
                return
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                log.error("ingest reader failed", exc_info=reader.exception())
            await appender
        except Exception:
            log.exception("ingest socket failed")
            await self._ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
        finally:
            for task in (reader, appender):
                task.cancel()
            for task in (reader, appender):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._hub.in_flight -= self._in_flight

    async def _read_loop(self, authenticated: bool) -> None:
        """Read frames while a slot is free; parse each and queue its answer in arrival order."""
        first = True
        try:
            while True:
                await self._slots.acquire()
                msg = await self._receive()
                if msg is None or msg.type not in _DATA:
                    # CLOSE / CLOSING / CLOSED / ERROR: aiohttp has already answered the close or torn down.
                    self._slots.release()
                    self._log_end(msg)
                    return
                binary = msg.type is WSMsgType.BINARY
                if first and (not authenticated or _is_auth_frame(msg.data, binary)):
                    self._slots.release()
                    if not await self._authenticate(msg.data, binary):
                        return
                    first = False
                    continue
                first = False
                self._take_frame()
                self._answers.put_nowait(self._parse(msg.data, binary))
        finally:
            self._answers.put_nowait(None)

    async def _receive(self) -> Any:
        """The next message, or None after closing a socket idle for the receive timeout."""
        # Our own deadline rather than aiohttp's receive_timeout: that one restarts on every
        # heartbeat pong, so a socket that only answers pings would never count as idle.
        try:
            async with asyncio.timeout(self._idle_s):
                return await self._ws.receive()
        except TimeoutError:
            log.info("closing ingest socket idle for %.1fs", self._idle_s or 0)
            await self._ws.close(code=CLOSE_IDLE, message=b"idle timeout")
            return None

    def _log_end(self, msg: Any) -> None:
        """Log why the socket ended: a close (by the peer, or ours on shutdown) is routine and logged at DEBUG, a
        connection lost mid-read at INFO, a protocol error (a bad or oversized frame) at WARNING with its reason."""
        if msg is None:
            return  # closed for idleness, logged by `_receive`
        if msg.type is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
            # The error's code is the one the socket was closed with (1002 protocol, 1007 data, 1009 too big).
            log.warning(
                "ingest socket from %s closed on a protocol error (code %s): %s", self._peer, msg.data.code, msg.data
            )
        elif msg.type is WSMsgType.ERROR:
            log.info("ingest socket from %s lost: %r", self._peer, msg.data)
        else:
            log.debug("ingest socket from %s closed (%s, code %s)", self._peer, msg.type.name, self._ws.close_code)

    async def _authenticate(self, data: bytes | str, binary: bool) -> bool:
        """Check a first frame `{"auth": "<key>"}`; answer `{"auth": "ok"}`, or an error and close 4401/4403."""
        try:
            frame = decode_frame(data, binary)
            token = frame.get("auth") if isinstance(frame, dict) and set(frame) == {"auth"} else None
            if not isinstance(token, str):
                raise AuthError('the first frame must be {"auth": "<key>"} without an Authorization header')
            if self._settings.api_keys:
                authorize(self._settings, token)
        except BeaconError as exc:
            code = CLOSE_FORBIDDEN if isinstance(exc, ForbiddenError) else CLOSE_UNAUTHORIZED
            await self._send({"ack": None, **exc.to_json()}, binary)
            await self._ws.close(code=code, message=exc.message.encode()[:120])
            return False
        await self._send({"auth": "ok"}, binary)
        return True

    def _parse(self, data: bytes | str, binary: bool) -> _Answer:
        """Validate one frame: a frame error, or the good events plus per-item errors."""
        seq: int | None = None
        try:
            frame = decode_frame(data, binary)
            seq = frame_seq(frame)
            items = frame_events(frame, self._settings.max_batch_events)
        except BeaconError as exc:
            # A bad frame counts once, whatever it carried: its events were never read.
            metrics.on_event_rejected(TRANSPORT, exc.code)
            return _Answer(binary, {"ack": seq, **exc.to_json()})
        found = validate_items(items, True, self._clock.now_ms(), TRANSPORT, self._settings.max_future_ms)
        body = {"ack": seq, "accepted": [event.event_id for event in found.events], "errors": found.errors}
        return _Answer(binary, body, found)

    async def _append_loop(self) -> None:
        """Append every queued frame's events in one pipeline, then answer those frames in order."""
        while True:
            answer = await self._answers.get()
            if answer is None:
                return
            batch, ended = [answer], False
            while not self._answers.empty():
                queued = self._answers.get_nowait()
                if queued is None:
                    ended = True
                    break
                batch.append(queued)
            # One pipeline for all frames read so far keeps the socket's order in the streams and
            # costs one round trip (and one more for their aliases, if any); each ack still follows Redis
            # confirming its own events.
            await resolve_aliases(self._redis, self._settings.partitions, [queued.validated for queued in batch])
            events = [event for queued in batch for event in queued.events]
            await streams.append_events(self._redis, events, self._settings.partitions, self._fsync_ms)
            for queued in batch:
                if queued.events:
                    metrics.on_events_accepted(TRANSPORT, len(queued.events))
                await self._send(queued.body, queued.binary)
                self._release_frame()
            if ended:
                return

    async def _send(self, body: dict[str, Any], binary: bool) -> None:
        """Send a reply unless the peer is gone (it resends unacked frames when it reconnects)."""
        if self._ws.closed:
            return
        payload = encode_reply(body, binary)
        try:
            if isinstance(payload, bytes):
                await self._ws.send_bytes(payload)
            else:
                await self._ws.send_str(payload)
        except ConnectionError:
            log.debug("ingest peer left before its reply to seq %s", body.get("ack"))

    def _take_frame(self) -> None:
        self._in_flight += 1
        hub = self._hub
        hub.frames_read += 1
        hub.in_flight += 1
        hub.peak_in_flight = max(hub.peak_in_flight, self._in_flight)

    def _release_frame(self) -> None:
        self._in_flight -= 1
        self._hub.in_flight -= 1
        self._slots.release()


async def ingest(request: web.Request) -> web.WebSocketResponse:
    """Upgrade to the ingest socket; a bad Authorization header is refused before the upgrade (401/403)."""
    settings = request.app[keys.SETTINGS]
    authenticated = not settings.api_keys
    header = request.headers.get("Authorization")
    if header is not None and settings.api_keys:
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer":
            raise AuthError("expected Authorization: Bearer <key>", path="Authorization")
        try:
            authorize(settings, token.strip())
        except BeaconError as exc:
            exc.path = "Authorization"
            raise
        authenticated = True
    redis = keys.redis(request)
    ws = web.WebSocketResponse(heartbeat=settings.ws_heartbeat_ms / 1000 or None, max_msg_size=settings.max_body_bytes)
    await ws.prepare(request)
    hub = request.app[HUB]
    hub.sockets.add(ws)
    try:
        await _Connection(ws, redis, settings, request).run(authenticated)
    finally:
        hub.sockets.discard(ws)
    return ws


async def _close_sockets(app: web.Application) -> None:
    """On shutdown, close every ingest socket (1001) so handlers end before the services stop."""
    sockets = list(app[HUB].sockets)
    if sockets:
        log.info("closing %d ingest socket(s) for shutdown", len(sockets))
    await asyncio.gather(
        *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for ws in sockets),
        return_exceptions=True,
    )


def setup(app: web.Application) -> None:
    """Register `GET /v1/ingest` and the shutdown hook that closes open sockets."""
    app[HUB] = IngestHub()
    app.router.add_get("/v1/ingest", ingest)
    app.on_shutdown.append(_close_sockets)


def _is_auth_frame(data: bytes | str, binary: bool) -> bool:
    with contextlib.suppress(BeaconError):
        frame = decode_frame(data, binary)
        return isinstance(frame, dict) and "auth" in frame
    return False
