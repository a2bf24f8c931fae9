"""`beacon backtest`: ruleset and journey files over a `.jsonl[.gz]` event log, with a progress bar, then a report."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from api.recorded_events import EventFile, EventLineError
from beacon.errors import BeaconError
from beacon.settings import Settings
from cep.backtest import BacktestReport, merge_reports, run_backtest
from rules.journey_model import Journey
from rules.model import Ruleset
from rules.registry import compile_ruleset, load_journey

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
BAR_WIDTH = 30
REDRAW_S = 0.1  # a terminal redrawn more often than this only costs time


class InputError(Exception):
    """Bad input, already worded as the one line to print."""


class ProgressBar:
    """A one-line bar on a terminal, redrawn in place: share of the file read, events, events/s."""

    def __init__(self, stream: TextIO, total_bytes: int, bytes_read: Callable[[], int]) -> None:
        self.stream = stream
        self.total_bytes = total_bytes
        self.bytes_read = bytes_read
        self.started = time.monotonic()
        self.drawn = 0.0

    def update(self, events: int) -> None:
        """Redraw, at most every REDRAW_S seconds."""
        now = time.monotonic()
        if now - self.drawn < REDRAW_S:
            return
        self.drawn = now
        self.stream.write("\r" + self.line(events, now - self.started) + "\x1b[K")
        self.stream.flush()

    def line(self, events: int, elapsed_s: float) -> str:
        """The bar's text for `events` done after `elapsed_s`."""
        share = min(self.bytes_read() / self.total_bytes, 1.0) if self.total_bytes else 1.0
        filled = int(share * BAR_WIDTH)
        rate = events / elapsed_s if elapsed_s > 0 else 0.0
        return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%}  {events:,} events  {rate:,.0f} events/s"

    def finish(self) -> None:
        """Erase the bar, leaving the terminal line clean for the report."""
        self.stream.write("\r\x1b[K")
        self.stream.flush()


def load_ruleset(path: str, lateness_ms: int) -> Ruleset:
    """A ruleset file, validated; InputError naming the file and the first problem."""
    document = _read_json(path)
    try:
        return compile_ruleset(document, ruleset_id=None, lateness_ms=lateness_ms)
    except BeaconError as exc:
        raise InputError(f"{path}: {exc}") from exc


def load_journey_file(path: str, lateness_ms: int) -> Journey:
    """A journey file, validated; InputError naming the file and the first problem."""
    document = _read_json(path)
    try:
        return load_journey(document, journey_id=None, lateness_ms=lateness_ms)
    except BeaconError as exc:
        raise InputError(f"{path}: {exc}") from exc


def _read_json(path: str) -> object:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc


def backtest(
    ruleset_paths: Sequence[str],
    events_path: str,
    settings: Settings,
    *,
    as_json: bool = False,
    until_ms: int | None = None,
    jobs: int = 1,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    journey_paths: Sequence[str] = (),
) -> int:
    """Run the command; returns the exit code (0, or 2 with one line on stderr for bad input).

    `jobs` > 1 runs that many processes, each evaluating its share of the users over the whole log
    (`cep.backtest.run_backtest(shard=...)`), and merges their reports.
    """
    try:
        if jobs > 1:
            report = _run_in_processes(
                (ruleset_paths, journey_paths), events_path, settings, until_ms, jobs, err.isatty()
            )
        else:
            report = _run((ruleset_paths, journey_paths), events_path, settings, until_ms, err)
    except InputError as exc:
        print(f"beacon backtest: {exc}", file=err)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\nbeacon backtest: interrupted", file=err)
        return EXIT_INTERRUPTED
    if as_json:
        json.dump(report.to_json(), out, indent=2)
        out.write("\n")
    else:
        out.write(render(report))
    return EXIT_OK


def _run_in_processes(
    paths: tuple[Sequence[str], Sequence[str]],
    events_path: str,
    settings: Settings,
    until_ms: int | None,
    jobs: int,
    bar: bool,
) -> BacktestReport:
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        shards = [
            pool.submit(_run, paths, events_path, settings, until_ms, None, (k, jobs), bar and k == 0)
            for k in range(jobs)
        ]
        reports = [shard.result() for shard in shards]
    return merge_reports(reports, time.perf_counter() - started)


def _run(
    paths: tuple[Sequence[str], Sequence[str]],
    events_path: str,
    settings: Settings,
    until_ms: int | None,
    err: TextIO | None,
    shard: tuple[int, int] = (0, 1),
    bar_on_stderr: bool = False,
) -> BacktestReport:
    """One process's run (of one shard); `err` None: a worker process, drawing the bar on its stderr
    when `bar_on_stderr` (every shard reads the whole file, so one bar tells the whole run's progress)."""
    if err is None:
        err = sys.stderr if bar_on_stderr else None
    ruleset_paths, journey_paths = paths
    rulesets: list[Ruleset] = []
    for path in ruleset_paths:
        ruleset = load_ruleset(path, settings.lateness_ms)
        if any(earlier.id == ruleset.id for earlier in rulesets):
            raise InputError(f"{path}: ruleset {ruleset.id!r} is given twice")
        rulesets.append(ruleset)
    journeys: list[Journey] = []
    for path in journey_paths:
        journey = load_journey_file(path, settings.lateness_ms)
        if any(earlier.id == journey.id for earlier in journeys):
            raise InputError(f"{path}: journey {journey.id!r} is given twice")
        journeys.append(journey)
    try:
        source = EventFile(events_path)
    except OSError as exc:
        raise InputError(f"cannot read {events_path}: {exc.strerror or exc}") from exc
    with source:
        bar = ProgressBar(err, source.size, source.bytes_read) if err is not None and err.isatty() else None
        try:
            report = run_backtest(
                rulesets,
                source,
                progress=bar.update if bar else None,
                until_ms=until_ms,
                dedupe_horizon_ms=settings.dedupe_horizon_ms,
                shard=shard,
                journeys=journeys,
            )
        except EventLineError as exc:
            raise InputError(f"{events_path}:{exc.line}: {exc}") from exc
        except BeaconError as exc:
            raise InputError(f"{events_path}: {exc}") from exc
        except OSError as exc:
            raise InputError(f"cannot read {events_path}: {exc.strerror or exc}") from exc
        finally:
            if bar is not None:
                bar.finish()
    return report


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def render(report: BacktestReport) -> str:
    """The human report: firings per rule, the per-day timeline, and the totals."""
    rule_rows = [
        [
            f"{summary.ruleset_id}/{summary.rule_id}",
            f"{summary.firings:,}",
            f"{len(summary.users):,}",
            ", ".join(f"{kind} {count:,}" for kind, count in sorted(summary.actions.items())) or "-",
            f"{summary.late:,}",
            f"{summary.duplicates:,}",
            _when(summary.first_at),
            _when(summary.last_at),
        ]
        for summary in report.rules
    ]
    header = ["rule", "firings", "users", "actions", "late", "duplicates", "first firing (UTC)", "last firing (UTC)"]
    lines = _table(header, rule_rows, right={1, 2, 4, 5})
    timeline = report.timeline()
    most = max((day["firings"] for day in timeline), default=0)
    day_rows = [
        [
            day["day"],
            f"{day['events']:,}",
            f"{day['firings']:,}",
            "#" * (round(day["firings"] / most * BAR_WIDTH) if most else 0),
        ]
        for day in timeline
    ]
    if report.journeys:
        journey_rows = []
        for journey_summary in report.journeys:
            counts = journey_summary.journey_totals()
            journey_rows.append(
                [
                    journey_summary.journey_id,
                    *(f"{counts.get(name, 0):,}" for name in ("entered", "completed", "exited", "converted")),
                    ", ".join(f"{kind} {count:,}" for kind, count in sorted(journey_summary.actions.items())) or "-",
                ]
            )
        header = ["journey", "entered", "completed", "exited", "converted", "actions"]
        lines += ["", *_table(header, journey_rows, right={1, 2, 3, 4})]
    lines += ["", *_table(["day (UTC)", "events", "firings", ""], day_rows, right={1, 2})]
    totals = report.totals.to_json()
    rate = f"{totals['events_per_s']:,.0f} events/s" if totals["events_per_s"] is not None else "-"
    lines += [
        "",
        f"{totals['events']:,} events of {totals['users']:,} users in {totals['elapsed_s']:.1f} s ({rate}); "
        f"{totals['firings']:,} firings",
        f"timers fired {totals['timers_fired']:,}, pending at the end {totals['pending_timers']:,}; "
        f"late {totals['late']:,}, duplicates {totals['duplicates']:,}"
        + (f"; clock stopped at {_when(report.until_ms)}" if report.until_ms is not None else ""),
    ]
    return "\n".join(lines) + "\n"
