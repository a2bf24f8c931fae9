"""The stream items of an identity merge and their codec (msgpack, versioned), and what a partition owner hands
to another partition (`Handoff`, carried by `cep.handoff`).

- `MergeOut` goes to the *source* user's partition stream: its owner turns the source's record into a
  tombstone naming the target and hands the source's packed state on.
- `MergeIn` arrives in the *target* user's partition stream with that state: its owner merges it
  (`cep.merge_rules`). Delivered at least once; the target dedupes it by `merge_id(source)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from beacon.errors import DecodeError
from cep.packing import packb

MERGE_CODEC_VERSION = 1


@dataclass(frozen=True, slots=True)
class MergeOut:
    """Merge `user_id` (the source, whose partition holds this item) into `target`."""

    user_id: str
    target: str


@dataclass(frozen=True, slots=True)
class MergeIn:
    """The state of `source` (a packed `cep.user_record`), to merge into `user_id` (the target)."""

    user_id: str
    source: str
    record: bytes


@dataclass(frozen=True, slots=True)
class Handoff:
    """A stream entry for another user's partition: written by a commit to the partition's handoff stream,
    then appended to `to`'s partition stream by the relay (`cep.handoff`)."""

    to: str
    field: bytes  # the stream entry's payload field (`cep.streams`: events, patch or merge)
    payload: bytes
    count: int  # items in the payload


def merge_id(source: str) -> str:
    """The dedupe id of a merge at its target: a user is merged away once (`cep.identities` keeps merges a
    forest), so its id names the merge."""
    return f"merge:{source}"


def encode_merge(item: MergeOut | MergeIn) -> bytes:
    """Serialise a merge item for a stream entry."""
    if isinstance(item, MergeOut):
        return packb({"v": MERGE_CODEC_VERSION, "k": "out", "u": item.user_id, "t": item.target})
    return packb({"v": MERGE_CODEC_VERSION, "k": "in", "u": item.user_id, "s": item.source, "r": item.record})


def decode_merge(raw: bytes) -> MergeOut | MergeIn:
    """Inverse of encode_merge; raises DecodeError."""
    try:
        data = msgpack.unpackb(raw, raw=False)
        if data.get("v") != MERGE_CODEC_VERSION:
            raise DecodeError(f"unknown merge codec version {data.get('v')!r}")
        if data["k"] == "out":
            return MergeOut(data["u"], data["t"])
        if data["k"] == "in":
            return MergeIn(data["u"], data["s"], bytes(data["r"]))
        raise DecodeError(f"unknown merge item kind {data['k']!r}")
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"unreadable merge item: {exc}") from exc
