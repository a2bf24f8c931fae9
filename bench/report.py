"""Result rows, the printed table, the JSON and CSV files, and a description of the machine."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(slots=True)
class Row:
    """One measurement: a stable id, a label, its value and unit, and how it was obtained."""

    id: str
    section: str
    label: str
    value: float | None
    unit: str
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        """A row that could not be measured in this run (value None, reason in detail)."""
        return self.value is None


def skipped(id_: str, section: str, label: str, reason: str) -> Row:
    """A row reported as `skipped: <reason>`."""
    return Row(id_, section, label, None, "", f"skipped: {reason}")


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width text table grouped by section."""
    headers = ("section", "measurement", "value", "unit", "detail")
    cells = [(row.section, row.label, _format(row.value), row.unit, row.detail) for row in rows]
    widths = [max(len(headers[i]), *(len(cell[i]) for cell in cells)) if cells else len(headers[i]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)) + "  " + headers[4]]
    lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    for cell in cells:
        lead = [cell[0].ljust(widths[0]), cell[1].ljust(widths[1]), cell[2].rjust(widths[2]), cell[3].ljust(widths[3])]
        lines.append("  ".join(lead) + "  " + cell[4])
    return "\n".join(lines)


def markdown(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (for docs/performance.md)."""
    lines = ["| section | measurement | value | unit | detail |", "|---|---|---:|---|---|"]
    for row in rows:
        lines.append(f"| {row.section} | {row.label} | {_format(row.value)} | {row.unit} | {row.detail} |")
    return "\n".join(lines)


def _valkey_version() -> str:
    from beacon.redis_server import server_binary

    try:
        out = subprocess.run([server_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return out.strip()


def machine() -> dict[str, Any]:
    """nproc, CPU model, memory, Python and server versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "server": _valkey_version(),
        "platform": platform.platform(),
    }


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """Machine-wide busy and total CPU seconds (/proc/stat) and this process tree's own CPU seconds."""

    busy: float
    total: float
    ours: float


def cpu_snapshot() -> CpuSnapshot:
    """Now; children count once they have been waited for, which every stop in the harness does."""
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        fields = [0] * 8
    idle = fields[3] + fields[4]  # idle + iowait
    ours = sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )
    return CpuSnapshot(busy=(sum(fields[:8]) - idle) / ticks, total=sum(fields[:8]) / ticks, ours=ours)


def others_share(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """Percent of the machine's CPU used by processes that are not this benchmark's, between two snapshots."""
    total = after.total - before.total
    others = (after.busy - before.busy) - (after.ours - before.ours)
    return max(0.0, 100 * others / total) if total > 0 else 0.0


def write(
    rows: Sequence[Row], size: str, out_dir: Path, started: float, background: dict[str, float] | None = None
) -> tuple[Path, Path]:
    """Write `bench-<size>-<stamp>.json` and `.csv` (and `latest-<size>.*` copies); returns the pair."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    document = {
        "size": size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": machine(),
        # Share of the machine's CPU that other processes used during each benchmark (shared machines).
        "background_cpu_percent": background or {},
        "rows": [asdict(row) for row in rows],
    }
    text = json.dumps(document, indent=2, default=str, allow_nan=True)
    json_path = out_dir / f"bench-{size}-{stamp}.json"
    csv_path = json_path.with_suffix(".csv")
    for path in (json_path, out_dir / f"latest-{size}.json"):
        path.write_text(text)
    for path in (csv_path, out_dir / f"latest-{size}.csv"):
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("id", "section", "label", "value", "unit", "detail"))
            for row in rows:
                writer.writerow(
                    (row.id, row.section, row.label, "" if row.value is None else row.value, row.unit, row.detail)
                )
    return json_path, csv_path
