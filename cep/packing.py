"""msgpack packing with a reused Packer: `msgpack.packb` builds a Packer per call, which costs more than
packing a small record (1.5 against 0.6 µs for one pattern state). One Packer per thread, because a
Packer holds its buffer between calls (the backtest API runs the evaluator in a thread)."""

from __future__ import annotations

import threading
from typing import Any

import msgpack

_local = threading.local()


def packb(value: Any) -> bytes:
    """`msgpack.packb(value, use_bin_type=True)`, faster."""
    packer: msgpack.Packer | None = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(value)
    return packed
