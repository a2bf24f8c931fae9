"""The event model and its persisted codec (msgpack, versioned)."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from beacon.errors import DecodeError

EVENT_CODEC_VERSION = 1
# Origins of events that did not come from a producer.
ORIGIN_PRODUCER = ""
ORIGIN_ACTION = "action"  # tag_added / tag_removed emitted by a tag action
ORIGIN_TIMER = "timer"  # a due timer turned into an event


@dataclass(frozen=True, slots=True)
class Event:
    """One behaviour event: who did what, when (event time, ms), with which attributes."""

    event_id: str
    user_id: str
    type: str
    ts: int
    attrs: dict[str, Any] = field(default_factory=dict, hash=False)
    # Server clock when the event was accepted: the start of the ingest -> outbox latency.
    received_ms: int = 0
    origin: str = ORIGIN_PRODUCER
    # Timer events only: what fell due ({"kind": "absence" | "action", ...}).
    timer: dict[str, Any] | None = field(default=None, hash=False)


def encode_event(event: Event) -> bytes:
    """Serialise an event for a stream entry."""
    return msgpack.packb(_to_fields(event), use_bin_type=True)


def decode_event(raw: bytes) -> Event:
    """Inverse of encode_event; raises DecodeError on anything it cannot read."""
    try:
        data = msgpack.unpackb(raw, raw=False)
        return _from_fields(data)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"unreadable event entry: {exc}") from exc


def encode_timer_event(event: Event) -> str:
    """A timer event as JSON text: timer set members must be text inside the step script's JSON."""
    return json.dumps(_to_fields(event), separators=(",", ":"), ensure_ascii=False)


def decode_timer_event(raw: bytes | str, due_ms: int) -> Event:
    """Inverse of encode_timer_event; `received_ms` becomes the due time (the timer-lag origin)."""
    try:
        data = json.loads(raw)
        data["r"] = due_ms
        return _from_fields(data)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"unreadable timer entry: {exc}") from exc


def _to_fields(event: Event) -> dict[str, Any]:
    return {
        "v": EVENT_CODEC_VERSION,
        "id": event.event_id,
        "u": event.user_id,
        "t": event.type,
        "ts": event.ts,
        "a": event.attrs,
        "r": event.received_ms,
        "o": event.origin,
        "tm": event.timer,
    }


def _from_fields(data: dict[str, Any]) -> Event:
    if data.get("v") != EVENT_CODEC_VERSION:
        raise DecodeError(f"unknown event codec version {data.get('v')!r}")
    return Event(
        event_id=data["id"],
        user_id=data["u"],
        type=data["t"],
        ts=int(data["ts"]),
        attrs=dict(data.get("a") or {}),
        received_ms=int(data.get("r") or 0),
        origin=data.get("o") or ORIGIN_PRODUCER,
        timer=data.get("tm"),
    )


def partition_of(user_id: str, partitions: int) -> int:
    """The partition that owns a user: stable across processes and restarts (CRC-32)."""
    return zlib.crc32(user_id.encode()) % partitions
