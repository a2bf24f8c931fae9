"""What the partition streams received, in order, read back from the Redis servers' append-only files once
they have stopped. A reader following the streams during the test can miss entries: the owners trim what
they have committed, and after a cluster node restarts the test's client may come back later than they do.
The AOF misses nothing Redis kept: it is the server's log of every write, in the order it made them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from cep import streams
from cep.events import ORIGIN_DELIVERY, Event

AOF_DIR = "appendonlydir"  # Valkey's default `appenddirname`
MANIFEST = "appendonly.aof.manifest"
_ENTRY_ID = re.compile(rb"\d+-\d+")


def appended_events(data_dirs: list[Path], partitions: int) -> tuple[dict[str, list[str]], int]:
    """Each user's producer event ids in the order first appended to its partition's stream, and how many event
    copies were appended in all (a resent frame appends its events again). The delivery outcomes the
    connectors append (`action_delivered`, ...) are left out: they are the engine's, not the producer's."""
    keys = {streams.events_key(partition).encode() for partition in range(partitions)}
    order: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    copies = 0
    for data_dir in data_dirs:
        for command in command_log(data_dir):
            if command[0].upper() != b"XADD" or command[1] not in keys:
                continue
            # A script's XADD is logged with the id it got: XADD key <id> field value ... (no options here).
            assert _ENTRY_ID.fullmatch(command[2]), f"unexpected XADD in the AOF: {command[:3]}"
            fields = dict(zip(command[3::2], command[4::2], strict=True))
            for item in streams.decode_entry(fields):
                if isinstance(item, Event) and item.origin != ORIGIN_DELIVERY:
                    copies += 1
                    if item.event_id not in seen:
                        seen.add(item.event_id)
                        order[item.user_id].append(item.event_id)
    return order, copies


def command_log(data_dir: Path) -> Iterator[list[bytes]]:
    """Every command in a stopped server's multi-part AOF, in order.

    Only the incremental files are read: the base file must be the empty one written when the server first
    started. After a rewrite the older commands are folded into an RDB base, so that is refused.
    """
    folder = data_dir / AOF_DIR
    increments: list[tuple[int, str]] = []
    for line in (folder / MANIFEST).read_text().splitlines():
        words = line.split()  # file <name> seq <n> type <b | h | i>
        entry = dict(zip(words[::2], words[1::2], strict=True))
        if entry["type"] == "i":
            increments.append((int(entry["seq"]), entry["file"]))
        else:
            assert (entry["type"], entry["seq"]) == ("b", "1"), f"{folder}: the AOF was rewritten ({line})"
    for _, name in sorted(increments):
        yield from _commands((folder / name).read_bytes())


def _commands(data: bytes) -> Iterator[list[bytes]]:
    """The commands of one AOF file: RESP arrays of bulk strings (and `#` annotation lines, skipped)."""
    position = 0
    while position < len(data):
        end = data.index(b"\r\n", position)
        header = data[position:end]
        position = end + 2
        if header.startswith(b"#"):
            continue
        assert header.startswith(b"*"), f"not a command at byte {position}: {header[:20]!r}"
        command = []
        for _ in range(int(header[1:])):
            end = data.index(b"\r\n", position)
            assert data[position : position + 1] == b"$", f"not a bulk string at byte {position}"
            length = int(data[position + 1 : end])
            command.append(data[end + 2 : end + 2 + length])
            position = end + 2 + length + 2
        yield command
