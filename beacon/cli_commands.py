"""The `beacon` commands that talk to a running server: rules and journeys (list, get, diff, delete, push,
dry-run, stats), `users show`, `actions tail`, `dead-letters list / replay`.

`beacon.cli` builds the parser (calling `add_rules_commands` and `add_commands`) and hands a parsed command
here (`run`). Each command is one or a few HTTP calls through `beacon.cli_http.call`, with the conventions of
`rules push`: `--url` / BEACON_URL, `--key` / BEACON_API_KEY, `--timeout`; a failure is one line and an exit
code (2 usage, 3 unreachable, 4 an HTTP error; 1 when the server refused the input, one line per problem);
`--json` prints the server's answer for scripts, otherwise a table or a listing made for reading.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import gzip
import json
import os
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from yarl import URL

from beacon.cli_http import EXIT_REFUSED, EXIT_USAGE, CommandError, call, checked_url, http_error

DEFAULT_URL = "http://127.0.0.1:8080"
REQUEST_TIMEOUT_S = 30.0
MAX_DRY_RUN_EVENTS = 10_000  # the server's bound (api.routes_dryrun), checked before sending the file
TRACE_ENTRIES = 10
MAX_TRACE = 10_000  # the server's bound on ?limit= of /v1/users/{id}/trace
TAIL_LIMIT = 20
TAIL_PAGE = 100  # actions asked for per poll when following: more than this between polls is reported
POLL_S = 1.0
MAX_LIMIT = 1000  # the server's bound on ?limit= of /v1/actions, /v1/dead-letters and the document lists

Handler = Callable[["Remote", argparse.Namespace], Coroutine[Any, Any, int]]


class Refused(Exception):
    """The server refused the input (422): one line per problem, printed on stderr, exit code 1."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class Remote:
    """A running server: its base URL, the API key to send, and how long to wait for each answer."""

    base: URL
    key: str | None
    timeout_s: float

    def url(self, *segments: str, action: str = "", query: dict[str, str] | None = None) -> URL:
        """The base URL's path + the quoted segments (+ `:action`, as in `/v1/rulesets/{id}:dry-run`)."""
        quoted = [quote(segment, safe="") for segment in segments]
        if action:
            quoted[-1] += f":{action}"
        url = self.base.joinpath(*quoted, encoded=True)
        return url.with_query(query) if query else url

    async def request(
        self,
        method: str,
        *segments: str,
        action: str = "",
        query: dict[str, str] | None = None,
        body: Any = None,
        refused: Callable[[str, str], str] | None = None,
    ) -> dict[str, Any]:
        """The JSON object of a 200 answer. A 422 raises Refused when `refused` words its problems
        (`refused(path, message)` -> a line); any other answer is an HTTP error (exit code 4)."""
        url = self.url(*segments, action=action, query=query)
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        status, answer = await call(method, url, timeout_s=self.timeout_s, headers=headers, body=body)
        if status == 200 and isinstance(answer, dict):
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        if status == 422 and refused is not None and isinstance(error, dict):
            items = [item for item in error.get("errors") or [error] if isinstance(item, dict)]
            raise Refused([refused(str(item.get("path") or ""), str(item.get("message"))) for item in items])
        raise http_error(url, status, answer)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command of this module (`args.remote` is its handler); CommandError goes to the caller."""
    base = checked_url(args.url or os.environ.get("BEACON_URL") or DEFAULT_URL)
    remote = Remote(base, args.key or os.environ.get("BEACON_API_KEY") or None, args.timeout)
    handler: Handler = args.remote
    try:
        return asyncio.run(handler(remote, args))
    except Refused as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        if getattr(args, "follow", False):
            return 0  # Ctrl-C is how a follow ends
        raise


# --- input files --------------------------------------------------------------------------------------------


def load_document(path: str) -> Any:
    """A JSON file (`-`: stdin); a usage error (exit code 2) naming the file when it cannot be read or parsed."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", EXIT_USAGE) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{path} is not valid JSON: {exc}", EXIT_USAGE) from None


def load_events(path: str) -> tuple[list[Any], list[int]]:
    """The events of a `.jsonl` (or gzip-compressed) file and the line number of each, at most what a dry-run
    takes; blank lines skipped."""
    events, lines = read_events(path)
    if not events:
        raise CommandError(f"{path}: no events (one JSON event a line)", EXIT_USAGE)
    if len(events) > MAX_DRY_RUN_EVENTS:
        raise CommandError(
            f"{path}: {len(events):,} events; a dry-run takes at most {MAX_DRY_RUN_EVENTS:,} "
            "(beacon backtest runs a log of any size)",
            EXIT_USAGE,
        )
    return events, lines


def read_events(path: str) -> tuple[list[Any], list[int]]:
    """Every event of a `.jsonl` (or gzip-compressed) file, of any size, and the line number of each."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", EXIT_USAGE) from None
    events, lines = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError as exc:
            raise CommandError(f"{path}:{number}: not valid JSON: {exc}", EXIT_USAGE) from None
        lines.append(number)
    return events, lines


# --- output -------------------------------------------------------------------------------------------------


def when(ms: Any) -> str:
    """A time in ms since the epoch as UTC, `-` for none."""
    if isinstance(ms, bool) or not isinstance(ms, int) or ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def plural(count: int, word: str, words: str = "") -> str:
    """`1 firing`, `2 firings`."""
    return f"{count:,} {word if count == 1 else words or word + 's'}"


def compact(value: Any) -> str:
    """JSON on one line, without spaces."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def print_json(value: Any) -> None:
    """The server's answer for scripts: indented JSON."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Aligned columns; a column of whole numbers is right-aligned. No rows: the header alone."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in (header, *cells)) for column in range(len(header))]
    numeric = [bool(cells) and all(row[column].isdigit() for row in cells) for column in range(len(header))]
    for row in (header, *cells):
        aligned = [
            cell.rjust(width) if numeric[column] else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(aligned).rstrip())


def listing(fields: Sequence[tuple[str, Sequence[str]]]) -> None:
    """`name  value` lines, a field of several values continued on indented lines."""
    width = max(len(name) for name, _ in fields)
    for name, values in fields:
        for index, value in enumerate(values or ["-"]):
            print(f"{name if index == 0 else '':<{width}}  {value}")


def actions_summary(actions: Sequence[Any]) -> str:
    """A firing's actions, `type {params}` each."""
    return "; ".join(f"{action.get('type')} {compact(action.get('params') or {})}" for action in actions) or "-"


# --- rulesets and journeys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What differs between the ruleset and the journey commands: names, and what a document is made of."""

    noun: str  # ruleset, journey
    collection: str  # the path under /v1 and the list's field
    parts: str  # what the list counts per document: rules, nodes


RULESETS = Kind("ruleset", "rulesets", "rules")
JOURNEYS = Kind("journey", "journeys", "nodes")


async def list_all(remote: Remote, collection: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Every document of a list (`/v1/<collection>`, in id order), or the first `limit`: the server answers a
    page at a time, and each page's `next` names the next one (null on the last)."""
    items: list[dict[str, Any]] = []
    after = ""
    while limit is None or len(items) < limit:
        page_size = MAX_LIMIT if limit is None else min(MAX_LIMIT, limit - len(items))
        query = {"limit": str(page_size), "after": after} if after else {"limit": str(page_size)}
        answer = await remote.request("GET", "v1", collection, query=query)
        items.extend(answer.get(collection) or [])
        after = str(answer.get("next") or "")
        if not after:
            break
    return items


async def list_documents(remote: Remote, args: argparse.Namespace) -> int:
    """`rules list`, `journeys list`: the active documents with their versions, every page of them."""
    kind: Kind = args.kind
    items = await list_all(remote, kind.collection, args.limit)
    if args.json:
        print_json({kind.collection: items})
        return 0
    table(
        ["id", "version", kind.parts, "updated (UTC)", "description"],
        [
            [
                item.get("id"),
                item.get("version"),
                item.get(kind.parts),
                when(item.get("updated_ms")),
                item.get("description") or "",
            ]
            for item in items
        ],
    )
    return 0


async def _stored(remote: Remote, kind: Kind, document_id: str, version: int | None) -> dict[str, Any]:
    query = {"version": str(version)} if version is not None else None
    return await remote.request("GET", "v1", kind.collection, document_id, query=query)


async def get_document(remote: Remote, args: argparse.Namespace) -> int:
    """`rules get`, `journeys get`: the stored document (a file `push` takes back), or with --json the answer."""
    answer = await _stored(remote, args.kind, args.id, args.version)
    print_json(answer if args.json else answer.get("document"))
    return 0


def _diff_text(document: Any) -> list[str]:
    """A document as lines to compare: keys sorted, so that key order in a file is no difference."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


async def diff_documents(remote: Remote, args: argparse.Namespace) -> int:
    """`rules diff`, `journeys diff`: a unified diff of two stored versions (default the one before the active
    one and the active one), or of a stored version (default active) and a local file."""
    kind: Kind = args.kind
    if args.file is not None:
        if args.to is not None:
            raise CommandError(
                f"{kind.noun}s diff: --to does not go with a FILE (--from picks the version)", EXIT_USAGE
            )
        stored = await _stored(remote, kind, args.id, args.from_)
        document = load_document(args.file)
        if isinstance(document, dict) and "id" not in document:
            document = {"id": args.id, **document}  # as the server stores a document pushed without its id
        old, new = (stored.get("document"), f"{args.id} v{stored.get('version')}"), (document, args.file)
    else:
        newer = await _stored(remote, kind, args.id, args.to)
        to_version = int(newer["version"])
        if args.from_ is None:
            earlier = [int(v) for v in newer.get("versions") or [] if int(v) < to_version]
            if not earlier:
                raise CommandError(
                    f"{args.id} keeps no version before {to_version}: give --from N, or a FILE to compare with",
                    EXIT_USAGE,
                )
            from_version = max(earlier)
        else:
            from_version = args.from_
        older = await _stored(remote, kind, args.id, from_version)
        old = (older.get("document"), f"{args.id} v{from_version}")
        new = (newer.get("document"), f"{args.id} v{to_version}")
    for line in difflib.unified_diff(_diff_text(old[0]), _diff_text(new[0]), old[1], new[1], lineterm=""):
        print(line)
    return 0


async def delete_document(remote: Remote, args: argparse.Namespace) -> int:
    """`rules delete`, `journeys delete`."""
    kind: Kind = args.kind
    await remote.request("DELETE", "v1", kind.collection, args.id)
    print(f"deleted {kind.noun} {args.id}")
    return 0


def _document_id(document: Any, source: str) -> str:
    document_id = document.get("id") if isinstance(document, dict) else None
    if not isinstance(document_id, str):
        raise Refused([f'{source}: the document needs an "id"'])
    return document_id


async def push_document(remote: Remote, args: argparse.Namespace) -> int:
    """`journeys push` (rules push is `beacon.cli_http.push_ruleset`): store a file as the newest version."""
    kind: Kind = args.kind
    document = load_document(args.file)
    document_id = _document_id(document, args.file)
    answer = await remote.request(
        "PUT",
        "v1",
        kind.collection,
        document_id,
        body=document,
        refused=lambda path, message: f"{args.file}: {path}: {message}",
    )
    print(f"pushed {document_id} as version {answer.get('version')}")
    return 0


async def dry_run(remote: Remote, args: argparse.Namespace) -> int:
    """`rules dry-run`, `journeys dry-run`: the file's document (unsaved) on the events, with a simulated clock."""
    kind: Kind = args.kind
    document = load_document(args.file)
    document_id = _document_id(document, args.file)
    events, lines = load_events(args.events)
    body: dict[str, Any] = {"document": document, "events": events}
    if args.profiles is not None:
        body["profiles"] = load_document(args.profiles)
    if args.until is not None:
        body["until"] = args.until

    def refused(path: str, message: str) -> str:
        """A problem, named by the file (and line) it comes from."""
        if path.startswith("events["):
            index = int(path[len("events[") : path.index("]")])
            source = f"{args.events}:{lines[index]}" if index < len(lines) else args.events
            return f"{source}: {path}: {message}"
        if path.startswith("profiles"):
            return f"{args.profiles}: {path}: {message}"
        return f"{args.file}: {path}: {message}"

    answer = await remote.request(
        "POST", "v1", kind.collection, document_id, action="dry-run", body=body, refused=refused
    )
    if args.json:
        print_json(answer)
    elif kind is RULESETS:
        _print_rule_dry_run(answer, len(events))
    else:
        _print_journey_dry_run(answer, len(events))
    return 0


def _print_rule_dry_run(answer: dict[str, Any], events: int) -> None:
    firings = answer.get("firings") or []
    print(f"ruleset {answer.get('ruleset_id')}: {plural(events, 'event')}, {plural(len(firings), 'firing')}")
    if firings:
        print()
        table(
            ["at (UTC)", "user", "rule", "event", "actions", "why"],
            [
                [when(f.get("at")), f.get("user_id"), f.get("rule_id"), f.get("trigger_event_id"),
                 actions_summary(f.get("actions") or []), f.get("explanation") or ""]
                for f in firings
            ],
        )  # fmt: skip
    late = answer.get("late") or []
    if late:
        print(f"\n{plural(len(late), 'late event')} (older than the rule's lateness allows):")
        table(
            ["user", "rule", "event", "event time (UTC)"],
            [[item.get("user_id"), item.get("rule_id"), item.get("event_id"), when(item.get("ts"))] for item in late],
        )
    pending = answer.get("pending_timers") or []
    if pending:
        print(f"\n{plural(len(pending), 'timer')} still pending at the end (--until):")
        table(["due (UTC)", "user"], [[when(item.get("due")), item.get("user_id")] for item in pending])


def _print_journey_dry_run(answer: dict[str, Any], events: int) -> None:
    steps = answer.get("steps") or []
    print(f"journey {answer.get('journey_id')}: {plural(events, 'event')}, {plural(len(steps), 'step')} with actions")
    if steps:
        print()
        table(
            ["at (UTC)", "user", "node", "actions"],
            [
                [when(s.get("at")), s.get("user_id"), s.get("node"), actions_summary(s.get("actions") or [])]
                for s in steps
            ],
        )
    waiting = answer.get("waiting") or []
    if waiting:
        print(f"\n{plural(len(waiting), 'instance')} still waiting at the end:")
        table(
            ["user", "key", "node", "due (UTC)"],
            [[item.get("user_id"), item.get("key"), item.get("node"), when(item.get("due"))] for item in waiting],
        )
    _print_stats((answer.get("stats") or {}).get("versions") or {})


def _print_stats(versions: dict[str, Any]) -> None:
    if not versions:
        print("\nno statistics yet: nobody entered")
    for version, view in sorted(versions.items(), key=lambda item: int(item[0])):
        journey = dict(view.get("journey") or {})
        blocked = journey.pop("not_entered", None) or {}
        counts = ", ".join(f"{name} {value}" for name, value in journey.items())
        if blocked:
            counts += "; not entered: " + ", ".join(f"{reason} {n}" for reason, n in sorted(blocked.items()))
        print(f"\n{'totals' if version == '0' else f'version {version}'}: {counts}")  # 0: an unsaved document
        table(
            ["node", "entered", "waiting", "exited", "converted", "left"],
            [
                [node, c.get("entered", 0), c.get("waiting", 0), c.get("exited", 0), c.get("converted", 0),
                 ", ".join(f"{arm} {n}" for arm, n in sorted((c.get("left") or {}).items())) or "-"]
                for node, c in sorted((view.get("nodes") or {}).items())
            ],
        )  # fmt: skip


async def journey_stats(remote: Remote, args: argparse.Namespace) -> int:
    """`journeys stats`: per version and node, entered, waiting now, left by each arm, exited, converted."""
    answer = await remote.request("GET", "v1", "journeys", args.id, "stats")
    if args.json:
        print_json(answer)
        return 0
    print(f"journey {answer.get('id')} (active version {answer.get('version')})")
    _print_stats(answer.get("versions") or {})
    return 0


# --- users, actions, dead letters ---------------------------------------------------------------------------


def _rule_line(key: str, view: dict[str, Any]) -> str:
    parts = []
    if view.get("last_fired_ts"):
        parts.append(f"last fired {when(view['last_fired_ts'])}")
    if view.get("first_seen_ts"):
        parts.append(f"first seen {when(view['first_seen_ts'])}")
    for live in view.get("sets") or []:
        entries = live.get("entries") or []
        parts.append(f"{live.get('kind')} {live.get('correlation')}: {len(entries)} entries")
    return f"{key}: {', '.join(parts) or 'no state'}"


def _journey_lines(journey_id: str, view: dict[str, Any]) -> list[str]:
    instances = view.get("instances") or []
    marks = (view.get("entered") or {}).values()  # kept for a reentry policy other than `always`
    entered = f", entered {plural(sum(int(mark.get('entries') or 0) for mark in marks), 'time')}" if marks else ""
    lines = [f"{journey_id}: {plural(len(instances), 'instance')}{entered}"]
    for inst in instances:
        where = "finished" if inst.get("finished") else f"at {inst.get('node')}"
        due = f", due {when(inst['due'])}" if inst.get("due") else ""
        lines.append(f"  key {inst.get('key')} v{inst.get('version')} {where}{due}")
    return lines


def _segment_line(segment_id: str, view: dict[str, Any]) -> str:
    state = f"member since {when(view.get('since'))}" if view.get("member") else "not a member"
    change = f", next change {when(view['next_change'])}" if view.get("next_change") else ""
    return f"{segment_id}: {state}{change}"


TRACE_SUBJECTS = {"rule": ("rule",), "journey": ("journey_id", "version", "node"), "segment": ("segment",)}


def _trace_row(entry: dict[str, Any]) -> list[str]:
    """A trace entry as cells: when, event time, kind, what it concerns, what happened, and the rest."""
    kind = str(entry.get("kind"))
    if kind == "journey":
        subject = f"{entry.get('journey_id')} v{entry.get('version')}" + (
            f" {entry['node']}" if entry.get("node") else ""
        )
    elif kind == "event":
        subject = str(entry.get("type"))
    else:
        subject = str(entry.get(kind, ""))
    shown = {"at", "ts", "kind", "what", "type", *TRACE_SUBJECTS.get(kind, ())}
    details = []
    for name, value in entry.items():
        if name in shown:
            continue
        if name == "actions" and isinstance(value, list):
            outcomes = [
                f"{a.get('status')}" + (f" ({a['reason']})" if a.get("reason") else "")
                for a in value
                if isinstance(a, dict)
            ]
            details.append(f"actions: {', '.join(outcomes)}")
        elif isinstance(value, int) and not isinstance(value, bool) and name in ("due", "last_fired_ts", "watermark"):
            details.append(f"{name} {when(value)}")
        else:
            details.append(f"{name} {value if isinstance(value, str) else compact(value)}")
    return [when(entry.get("at")), when(entry.get("ts")), kind, subject, str(entry.get("what", "")), "; ".join(details)]


async def show_user(remote: Remote, args: argparse.Namespace) -> int:
    """`users show`: profile, tags, segments, journeys, rule state, and the newest trace entries."""
    user = await remote.request("GET", "v1", "users", args.id)
    trace: dict[str, Any] = {}
    if args.trace:
        trace = await remote.request("GET", "v1", "users", args.id, "trace", query={"limit": str(args.trace)})
    if args.json:
        print_json({"user": user, "trace": trace.get("trace", [])})
        return 0
    attrs = user.get("attrs") or {}
    listing(
        [
            ("user", [str(user.get("user_id"))]),
            ("attrs", [f"{name}: {compact(value)}" for name, value in sorted(attrs.items())]),
            ("tags", [", ".join(user.get("tags") or [])] if user.get("tags") else []),
            ("segments", [_segment_line(s, view) for s, view in sorted((user.get("segments") or {}).items())]),
            (
                "journeys",
                [line for j, view in sorted((user.get("journeys") or {}).items()) for line in _journey_lines(j, view)],
            ),
            ("rules", [_rule_line(key, view) for key, view in sorted((user.get("rules") or {}).items())]),
        ]
    )
    if not args.trace:
        return 0
    entries = trace.get("trace") or []
    if not trace.get("tracing", True):
        print("\ntrace: off on this server (BEACON_TRACE_DEPTH=0)")
    elif not entries:
        print("\ntrace: empty")
    else:
        print(f"\ntrace, newest first ({plural(len(entries), 'entry', 'entries')}):")
        table(["at (UTC)", "event time (UTC)", "kind", "of", "what", "details"], [_trace_row(e) for e in entries])
    return 0


class Columns:
    """Rows printed as they come (a follow), aligned: the header is as wide as the first rows, and a column
    widens when a longer cell comes later."""

    def __init__(self, header: Sequence[str], first: Sequence[Sequence[str]]) -> None:
        self.widths = [max(len(row[column]) for row in (header, *first)) for column in range(len(header))]
        for row in (header, *first):
            self.row(row)

    def row(self, cells: Sequence[str]) -> None:
        """Print one row."""
        self.widths = [max(width, len(cell)) for width, cell in zip(self.widths, cells, strict=True)]
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, self.widths, strict=True)).rstrip())


ACTION_HEADER = ("created (UTC)", "user", "rule", "type", "status", "params")


def _action_cells(action: dict[str, Any]) -> list[str]:
    status = str(action.get("status"))
    if action.get("reason"):
        status += f" ({action['reason']})"
    source = f"{action.get('ruleset_id')}/{action.get('rule_id')}"
    return [when(action.get("created_at")), str(action.get("user_id")), source, str(action.get("type")), status,
            compact(action.get("params") or {})]  # fmt: skip


async def tail_actions(remote: Remote, args: argparse.Namespace) -> int:
    """`actions tail`: the newest actions, oldest first; with --follow, each new one as it appears, until Ctrl-C."""
    query = {name: value for name, value in (("user_id", args.user), ("rule", args.rule)) if value}

    async def page(limit: int) -> list[dict[str, Any]]:
        answer = await remote.request("GET", "v1", "actions", query={**query, "limit": str(limit)})
        return [action for action in answer.get("actions") or [] if isinstance(action, dict)]

    columns: Columns | None = None

    def show(newest_first: list[dict[str, Any]]) -> None:
        """Print actions oldest first."""
        nonlocal columns
        actions = newest_first[::-1]
        if args.json:
            for action in actions:
                print(compact(action))
        elif columns is None:
            if actions:
                columns = Columns(ACTION_HEADER, [_action_cells(action) for action in actions])
        else:
            for action in actions:
                columns.row(_action_cells(action))
        sys.stdout.flush()  # a follow piped into another program shows each action when it comes

    newest = await page(args.limit)
    show(newest)
    if not args.follow:
        return 0
    seen = {action.get("action_id") for action in newest}
    size = max(args.limit, TAIL_PAGE)
    while True:
        await asyncio.sleep(args.interval)
        newest = await page(size)
        fresh = [action for action in newest if action.get("action_id") not in seen]
        if seen and len(newest) == size and len(fresh) == size:
            print(f"beacon: more than {size} new actions since the last poll: some are not shown", file=sys.stderr)
        show(fresh)
        seen = {action.get("action_id") for action in newest}


async def list_dead_letters(remote: Remote, args: argparse.Namespace) -> int:
    """`dead-letters list`: actions whose delivery gave up, newest first."""
    query = {"limit": str(args.limit), **({"connector": args.connector} if args.connector else {})}
    answer = await remote.request("GET", "v1", "dead-letters", query=query)
    if args.json:
        print_json(answer)
        return 0
    rows = []
    for letter in answer.get("dead_letters") or []:
        action = letter.get("action") or {}
        rows.append(
            [letter.get("id"), when(letter.get("dead_at")), letter.get("connector"), letter.get("reason"),
             letter.get("user_id"), action.get("type", ""), letter.get("action_id")]
        )  # fmt: skip
    table(["id", "dead at (UTC)", "connector", "reason", "user", "action", "action id"], rows)
    return 0


async def replay_dead_letters(remote: Remote, args: argparse.Namespace) -> int:
    """`dead-letters replay`: put dead actions back to pending; the connectors deliver them again (once)."""
    if args.connector and not args.all:
        raise CommandError("dead-letters replay: --connector goes with --all", EXIT_USAGE)
    body: dict[str, Any] = {"ids": args.id} if args.id else {"all": True}
    if args.connector:
        body["connector"] = args.connector
    answer = await remote.request("POST", "v1", "dead-letters", action="replay", body=body)
    if args.json:
        print_json(answer)
    replayed = answer.get("replayed") or []
    refused = answer.get("refused") or []
    unknown = answer.get("unknown") or []
    if not args.json:
        print(
            f"replayed {plural(len(replayed), 'action')}" + (f": {', '.join(map(str, replayed))}" if replayed else "")
        )
    for item in refused:
        print(f"beacon: action {item.get('action_id')} not replayed: {item.get('reason')}", file=sys.stderr)
    for entry_id in unknown:
        print(f"beacon: no dead letter {entry_id}", file=sys.stderr)
    return EXIT_REFUSED if refused or unknown else 0


# --- the parser -----------------------------------------------------------------------------------------------


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds (under a day)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 86_400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def _count(maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= maximum:
            raise argparse.ArgumentTypeError(f"{text!r}: use a whole number from 1 to {maximum}")
        return int(text)

    return parse


def _trace_entries(text: str) -> int:
    return 0 if text == "0" else _count(MAX_TRACE)(text)


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: use a whole number from 1")
    return int(text)


def _version(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version (1, 2, ...)")
    return int(text)


def add_connection_options(parser: argparse.ArgumentParser, scope: str) -> None:
    """--url, --key and --timeout, as `rules push` has them."""
    parser.add_argument("--url", help=f"the server's base URL (env BEACON_URL; default {DEFAULT_URL})")
    parser.add_argument("--key", help=f"API key with the {scope} scope (env BEACON_API_KEY; default none)")
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=REQUEST_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for each answer of the server (default {REQUEST_TIMEOUT_S:g})",
    )


def _json_option(parser: argparse.ArgumentParser, what: str = "the server's answer") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON (default: text for reading)")


def _list_options(parser: argparse.ArgumentParser) -> None:
    """`--limit` and `--json` of a `list` command (it follows the server's pages to the end by default)."""
    parser.add_argument(
        "--limit", type=_positive, metavar="N", help="list the first N, in id order (default: all, a page at a time)"
    )
    _json_option(parser, "the list as JSON")


def _command(
    commands: Any, name: str, handler: Handler, scope: str, help_text: str, description: str = "", **defaults: Any
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text, description=description or help_text)
    parser.set_defaults(remote=handler, **defaults)
    add_connection_options(parser, scope)
    return parser


def _document_commands(commands: Any, kind: Kind) -> None:
    """list, get, diff, delete and dry-run of rulesets or journeys."""
    noun = kind.noun
    listed = _command(commands, "list", list_documents, "rules", f"the active {noun}s and their versions", kind=kind)
    _list_options(listed)
    get = _command(
        commands, "get", get_document, "rules", f"print a stored {noun} document",
        f"Print the active version (or --version N) of a {noun} as JSON: a file `push` takes back.", kind=kind,
    )  # fmt: skip
    get.add_argument("id", help=f"the {noun}'s id")
    get.add_argument("--version", type=_version, metavar="N", help="a kept version (default: the active one)")
    get.add_argument("--json", action="store_true", help="print the whole answer: document, version, kept versions")
    diff = _command(
        commands, "diff", diff_documents, "rules", f"a unified diff of two versions of a {noun}, or of one and a file",
        f"Compare two stored versions of a {noun} (default: the one before the active one, and the active one), "
        "or a stored version (default: the active one) and a local FILE. Keys are compared in sorted order.",
        kind=kind,
    )  # fmt: skip
    diff.add_argument("id", help=f"the {noun}'s id")
    diff.add_argument(
        "file", nargs="?", help=f"a local {noun} file to compare with (default: none, two stored versions)"
    )
    diff.add_argument(
        "--from", dest="from_", type=_version, metavar="N",
        help="the older version (default: the one before --to; with FILE, the active one)",
    )  # fmt: skip
    diff.add_argument("--to", type=_version, metavar="M", help="the newer version (default: the active one)")
    delete = _command(
        commands, "delete", delete_document, "rules", f"deactivate a {noun} and drop its versions", kind=kind
    )
    delete.add_argument("id", help=f"the {noun}'s id")
    run_dry = _command(
        commands, "dry-run", dry_run, "rules", f"run a {noun} file on recorded events, storing nothing",
        f"POST the file's {noun} (unsaved) with the events to /v1/{kind.collection}/ID:dry-run: the live evaluator "
        "on throwaway state, with a simulated clock that follows the events' ts.",
        kind=kind,
    )  # fmt: skip
    run_dry.add_argument("file", help=f"{noun} JSON file, - for stdin")
    run_dry.add_argument(
        "--events", required=True, metavar="FILE",
        help=f".jsonl (or gzip-compressed), one event a line, at most {MAX_DRY_RUN_EVENTS:,}",
    )  # fmt: skip
    run_dry.add_argument(
        "--profiles", metavar="FILE", help='JSON {user_id: {"attrs": {...}, "tags": [...]}} (default: empty profiles)'
    )
    run_dry.add_argument(
        "--until", type=int, metavar="MS", help="stop the simulated clock here (default: fire every pending timer)"
    )
    _json_option(run_dry, "the report")


def add_rules_commands(rule_commands: Any) -> None:
    """`beacon rules list | get | diff | delete | dry-run` (push and validate are `beacon.cli`'s)."""
    _document_commands(rule_commands, RULESETS)


def add_commands(commands: Any) -> None:
    """`beacon journeys`, `beacon users`, `beacon actions`, `beacon dead-letters`."""
    journeys = commands.add_parser(
        "journeys", help="journeys on a server: list, get, diff, push, delete, dry-run, stats"
    )
    journey_commands = journeys.add_subparsers(dest="journeys_command", required=True, metavar="COMMAND")
    _document_commands(journey_commands, JOURNEYS)
    push = _command(
        journey_commands, "push", push_document, "rules", "store a journey file on a running server",
        'PUT the file as the newest version of its journey (the document\'s "id"); running instances keep theirs.',
        kind=JOURNEYS,
    )  # fmt: skip
    push.add_argument("file", help="journey JSON file, - for stdin")
    stats = _command(
        journey_commands, "stats", journey_stats, "rules",
        "per version and node: entered, waiting, left by each arm, exited, converted",
    )  # fmt: skip
    stats.add_argument("id", help="the journey's id")
    _json_option(stats)

    users = commands.add_parser("users", help="a user as the server sees them")
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    show = _command(
        user_commands, "show", show_user, "events", "profile, tags, segments, journeys, rule state and trace",
        "GET /v1/users/ID and the newest entries of /v1/users/ID/trace: the \"why did (or didn't) it fire?\" view.",
    )  # fmt: skip
    show.add_argument("id", help="the user's id")
    show.add_argument(
        "--trace", type=_trace_entries, default=TRACE_ENTRIES, metavar="N",
        help=f"trace entries to show, 0 for none (default {TRACE_ENTRIES})",
    )  # fmt: skip
    _json_option(show, '{"user": profile and state, "trace": [...]}')

    actions = commands.add_parser("actions", help="the action ledger")
    action_commands = actions.add_subparsers(dest="actions_command", required=True, metavar="COMMAND")
    tail = _command(
        action_commands, "tail", tail_actions, "events", "the newest actions; --follow prints new ones as they come",
        "GET /v1/actions: the newest actions, oldest first; with --follow, poll and print each new action until "
        "Ctrl-C (exit code 0).",
    )  # fmt: skip
    tail.add_argument("--user", metavar="ID", help="only this user's actions (default: all users)")
    tail.add_argument("--rule", metavar="RULE", help="only this rule's (or journey node's) actions (default: all)")
    tail.add_argument(
        "--limit", type=_count(MAX_LIMIT), default=TAIL_LIMIT, metavar="N",
        help=f"how many of the newest actions to show first (default {TAIL_LIMIT})",
    )  # fmt: skip
    tail.add_argument("--follow", "-f", action="store_true", help="keep polling for new actions until Ctrl-C")
    tail.add_argument(
        "--interval", type=seconds, default=POLL_S, metavar="S", help=f"seconds between polls (default {POLL_S:g})"
    )
    tail.add_argument("--json", action="store_true", help="print each action as one line of JSON")

    letters = commands.add_parser("dead-letters", help="actions whose delivery gave up: list, replay")
    letter_commands = letters.add_subparsers(dest="dead_letters_command", required=True, metavar="COMMAND")
    listed = _command(letter_commands, "list", list_dead_letters, "admin", "dead letters, newest first")
    listed.add_argument("--connector", metavar="C", help="only this connector's (default: all)")
    listed.add_argument(
        "--limit", type=_count(MAX_LIMIT), default=100, metavar="N", help="at most this many (default 100)"
    )
    _json_option(listed)
    replay = _command(
        letter_commands, "replay", replay_dead_letters, "admin", "deliver dead actions again",
        "POST /v1/dead-letters:replay: put the actions back to pending with fresh attempts; the connectors deliver "
        "them again, with the same idempotency key. Exit code 1 when some were not replayed.",
    )  # fmt: skip
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", nargs="+", action="extend", metavar="ID", help="dead-letter ids (from `list`)")
    which.add_argument("--all", action="store_true", help="every dead letter (up to 1000), or --connector's")
    replay.add_argument("--connector", metavar="C", help="with --all: only this connector's (default: all)")
    _json_option(replay)
