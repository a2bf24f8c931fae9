"""Recorded events for backtests: wire events that carry their `ts`, inline or as JSON lines.

JSON lines come from a `.jsonl` / `.jsonl.gz` file (`beacon backtest`) or an `application/x-ndjson`
body (`POST /v1/backtest`). A bad line is an `EventLineError` naming its 1-based line number and the
JSON path of the problem, where line N is `events[N-1]` (blank lines count as lines, hold no event).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from api.bodies import decode_bytes
from api.event_wire import parse_event
from beacon.errors import BeaconError, DecodeError, TooLargeError, ValidationError
from cep.events import Event

GZIP_MAGIC = b"\x1f\x8b"


class EventLineError(ValidationError):
    """A bad line of JSON lines: the message and JSON path of the problem, and the line number."""

    def __init__(self, error: BeaconError, line: int) -> None:
        super().__init__(error.message, path=error.path)
        self.line = line

    def to_json(self) -> dict[str, object]:
        """The wire shape, with the line number beside the path."""
        body = super().to_json()
        body["error"]["line"] = self.line  # type: ignore[index]  # the base builds {"error": {...}}
        return body


def parse_recorded_event(obj: Any, path: str, now_ms: int) -> Event:
    """A wire event that must carry `ts`: a backtest replays events at their recorded time, never at `now`."""
    if isinstance(obj, dict) and "user_id" in obj and "type" in obj and "ts" not in obj:
        raise ValidationError("is required in a backtest (events replay at their recorded time)", path=f"{path}.ts")
    return parse_event(obj, path, now_ms)


def parse_event_line(raw: bytes, line: int, now_ms: int) -> Event | None:
    """The event on a 1-based line, or None for a blank line; raises EventLineError."""
    if not raw.strip():
        return None
    path = f"events[{line - 1}]"
    try:
        return parse_recorded_event(decode_bytes(raw, binary=False, path=path, what=f"line {line}"), path, now_ms)
    except (ValidationError, DecodeError) as exc:
        raise EventLineError(exc, line) from None


def events_from_lines(lines: Iterable[bytes], now_ms: int, limit: int | None = None) -> Iterator[Event]:
    """Validated events from JSON lines, in line order; at most `limit` events (TooLargeError past it)."""
    count = 0
    for number, raw in enumerate(lines, 1):
        event = parse_event_line(raw, number, now_ms)
        if event is None:
            continue
        count += 1
        if limit is not None and count > limit:
            raise TooLargeError(f"at most {limit} events per backtest", path="events")
        yield event


class EventFile:
    """A `.jsonl` or gzip-compressed `.jsonl.gz` event log (told apart by content), read once, in order."""

    def __init__(self, path: str | Path, now_ms: int = 0) -> None:
        self.path = Path(path)
        self.now_ms = now_ms
        self._raw: IO[bytes] = self.path.open("rb")  # OSError (missing, unreadable) surfaces here
        self.size = self.path.stat().st_size
        self._gzip = self._raw.read(2) == GZIP_MAGIC
        self._raw.seek(0)

    def bytes_read(self) -> int:
        """How far into the file (compressed bytes for gzip) reading has got: progress for a bar."""
        return self._raw.tell()

    def __iter__(self) -> Iterator[Event]:
        """The file's events in file order; a bad line raises EventLineError, a corrupt file DecodeError."""
        return events_from_lines(self._lines(), self.now_ms)

    def _lines(self) -> Iterator[bytes]:
        stream: IO[bytes] | gzip.GzipFile = gzip.GzipFile(fileobj=self._raw, mode="rb") if self._gzip else self._raw
        what = "gzip data" if self._gzip else "file"
        while True:
            try:
                raw = stream.readline()
            except (OSError, EOFError, zlib.error) as exc:
                raise DecodeError(f"{self.path.name}: unreadable {what}: {exc}") from exc
            if not raw:
                return
            yield raw

    def close(self) -> None:
        """Close the file."""
        self._raw.close()

    def __enter__(self) -> EventFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def read_events(path: str | Path, now_ms: int = 0) -> Iterator[Event]:
    """The validated events of a `.jsonl` / `.jsonl.gz` file, in file order (the arrival order)."""
    with EventFile(path, now_ms) as source:
        yield from source
