"""The event model and its persisted codec (msgpack, versioned)."""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from binascii import crc_hqx
from dataclasses import dataclass, field
from typing import Any

import msgpack

from beacon.errors import DecodeError
from cep.packing import packb

EVENT_CODEC_VERSION = 1
# Origins of events that did not come from a producer.
ORIGIN_PRODUCER = ""
ORIGIN_ACTION = "action"  # tag_added / tag_removed emitted by a tag action
ORIGIN_TIMER = "timer"  # the trigger of a timer (an absence deadline)
ORIGIN_PLAN = "plan"  # a plan occurrence reaching one user (cep.plan_runs appends them)
ORIGIN_DELIVERY = "delivery"  # an action's delivery outcome (`action_delivered`, ...; connectors.delivery_ledger)
ORIGIN_BACKFILL = "backfill"  # a past event fed to segments' history only (`POST /v1/segments/{id}:backfill`)


# Not frozen: a frozen dataclass's __init__ goes through object.__setattr__ per field, four times the
# cost of a plain one, and an Event is built per event at ingest and again in every worker. Treated
# as immutable all the same (dataclasses.replace makes changed copies).
@dataclass(slots=True)
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


def backfill_id(event: Event) -> str:
    """A backfilled event's id, from what it says (user, type, time, attributes): the same event fed twice, from
    a file or from the event archive, is recorded once (no attributes and `{}` are the same)."""
    material = json.dumps([event.user_id, event.type, event.ts, event.attrs or None], sort_keys=True, default=str)
    return "bf:" + hashlib.blake2b(material.encode(), digest_size=12).hexdigest()


def encode_batch(events: list[Event]) -> bytes:
    """Serialise the events of one stream entry (one ingest request's events of one partition)."""
    return packb([_to_fields(event) for event in events])


def decode_batch(raw: bytes) -> list[Event]:
    """Inverse of encode_batch; raises DecodeError on anything it cannot read."""
    try:
        return [_from_fields(fields) for fields in msgpack.unpackb(raw, raw=False)]
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"unreadable event batch: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ProfilePatch:
    """A change to a user's profile (`PATCH /v1/users/{id}`), applied by the partition owner in stream order.

    `attrs` values of None delete the attribute.
    """

    user_id: str
    attrs: dict[str, Any]
    add_tags: tuple[str, ...] = ()
    remove_tags: tuple[str, ...] = ()


def encode_patch(patch: ProfilePatch) -> bytes:
    """Serialise a profile patch for a stream entry."""
    fields = {
        "v": EVENT_CODEC_VERSION,
        "u": patch.user_id,
        "a": patch.attrs,
        "+": patch.add_tags,
        "-": patch.remove_tags,
    }
    return packb(fields)


def decode_patch(raw: bytes) -> ProfilePatch:
    """Inverse of encode_patch; raises DecodeError."""
    try:
        data = msgpack.unpackb(raw, raw=False)
        if data.get("v") != EVENT_CODEC_VERSION:
            raise DecodeError(f"unknown patch codec version {data.get('v')!r}")
        return ProfilePatch(data["u"], dict(data["a"]), tuple(data["+"]), tuple(data["-"]))
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"unreadable profile patch: {exc}") from exc


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
    }


def _from_fields(data: dict[str, Any]) -> Event:
    if data.get("v") != EVENT_CODEC_VERSION:
        raise DecodeError(f"unknown event codec version {data.get('v')!r}")
    # Positional and without copying `a` (msgpack made a fresh dict): this runs for every event read.
    return Event(
        data["id"],
        data["u"],
        data["t"],
        int(data["ts"]),
        data.get("a") or {},
        int(data.get("r") or 0),
        data.get("o") or ORIGIN_PRODUCER,
    )


# The order in which partitions take the twelve equal slot ranges of a Redis Cluster: every prefix of
# length 2, 3, 4, 6, 8, 9 and 12 holds equally many partitions in each half, third, quarter or sixth of
# the slots, so 12 partitions (the default) spread evenly over 1, 2, 3, 4 or 6 masters.
_SEGMENT_ORDER = (0, 4, 8, 10, 2, 6, 5, 11, 1, 3, 7, 9)
_SLOTS = 16384


@functools.cache
def partition_tag(partition: int) -> str:
    """The hash tag of every key of a partition: `p:<n>.<salt>`, the salt chosen so the tag's cluster slot
    falls in the partition's share of the slot space (CRC16 of plain `p:<n>` clusters small numbers)."""
    block, index = divmod(partition, len(_SEGMENT_ORDER))
    width = _SLOTS // len(_SEGMENT_ORDER)
    # Later blocks of twelve land further inside each segment, so they interleave with earlier ones.
    # A margin at each segment's edge keeps the slot off the boundaries of an even split among masters.
    step = (width - 16) // 8
    low = _SEGMENT_ORDER[index] * width + 8 + (block % 8) * step
    for salt in range(1_000_000):
        tag = f"p:{partition}.{salt}"
        if low <= crc_hqx(tag.encode(), 0) % _SLOTS < low + step:
            return tag
    raise AssertionError("no salt found")  # ~step/16384 of salts qualify: unreachable in practice


def partition_of(user_id: str, partitions: int) -> int:
    """The partition that owns a user: stable across processes and restarts (CRC-32)."""
    return zlib.crc32(user_id.encode()) % partitions
