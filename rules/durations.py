"""Duration strings of the ruleset language: `500ms`, `5s`, `30m`, `47h`, `7d` (and `1d12h`)."""

from __future__ import annotations

import re

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"(?:\d+(?:ms|s|m|h|d|w))+")


def parse_duration(text: str) -> int:
    """Milliseconds in `text`; raises ValueError naming the input when it is not a duration."""
    if not isinstance(text, str) or not _WHOLE.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not a duration (use e.g. 500ms, 5s, 30m, 47h, 7d)")
    return sum(int(n) * _UNIT_MS[unit] for n, unit in _PART.findall(text.strip()))


def format_duration(ms: int) -> str:
    """The shortest exact spelling of `ms` (inverse of parse_duration for its own output)."""
    if ms == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        size = _UNIT_MS[unit]
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts)
