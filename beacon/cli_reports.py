"""`beacon report rulesets|journeys|plans ID`: a report's funnel as tables (or JSON, or the CSV export).

A client of `GET /v1/reports/...` (as `beacon.cli_commands`, whose connection options and exit codes it
shares).
"""

from __future__ import annotations

import argparse
from typing import Any

from beacon.cli_commands import Remote, _command, print_json, table
from beacon.cli_http import call, http_error

STAGES = ("triggered", "entered", "acted", "delivered", "skipped", "dead", "clicked")
MODELS = ("acted", "reach", "click")


def _cells(name: str, funnel: dict[str, Any], stages: tuple[str, ...]) -> list[Any]:
    converted, revenue = funnel.get("converted", {}), funnel.get("revenue", {})
    return [
        name,
        *(funnel.get(stage, 0) for stage in stages),
        *(converted.get(model, 0) for model in MODELS),
        *(f"{revenue.get(model, 0):.2f}" for model in MODELS),
    ]


def _header(first: str, stages: tuple[str, ...]) -> list[str]:
    return [first, *stages, *(f"conv {m}" for m in MODELS), *(f"revenue {m}" for m in MODELS)]


async def show_report(remote: Remote, args: argparse.Namespace) -> int:
    """Print a ruleset's, journey's or plan's report."""
    query = {name: value for name, value in (("from", args.from_), ("to", args.to)) if value}
    if args.by_day:
        query["by"] = "day"
    if args.csv:
        url = remote.url("v1", "reports", args.kind, args.id, query={**query, "format": "csv"})
        headers = {"Authorization": f"Bearer {remote.key}"} if remote.key else {}
        status, text = await call("GET", url, timeout_s=remote.timeout_s, headers=headers)
        if status != 200:
            raise http_error(url, status, text)
        print(text, end="")
        return 0
    answer = await remote.request("GET", "v1", "reports", args.kind, args.id, query=query or None)
    if args.json:
        print_json(answer)
        return 0
    rulesets = args.kind == "rulesets"
    stages = tuple(stage for stage in STAGES if stage != ("entered" if rulesets else "triggered"))
    print(f"{args.kind[:-1]} {args.id}, {answer.get('from')} to {answer.get('to')}")
    units = answer.get("rules" if rulesets else "nodes") or {}
    rows = [_cells("total", answer.get("funnel") or {}, stages)]
    rows += [_cells(name, funnel, stages) for name, funnel in sorted(units.items())]
    table(_header("rule" if rulesets else "node", stages), rows)
    for split, arms in sorted((answer.get("arms") or {}).items()):
        print(f"\nsplit {split}")
        arm_rows = []
        for label, arm in sorted(arms.items()):
            lifted = arm.get("lift") or {}
            interval = lifted.get("ci95")
            arm_rows.append(
                [
                    label,
                    arm.get("entered", 0),
                    *(arm.get("converted", {}).get(model, 0) for model in MODELS),
                    "-" if lifted.get("rate") is None else f"{lifted['rate']:.2%}",
                    "-" if lifted.get("lift") is None else f"{lifted['lift']:+.2%}",
                    "-" if not interval else f"[{interval[0]:+.2%}, {interval[1]:+.2%}]",
                    "-" if lifted.get("p_value") is None else f"{lifted['p_value']:.3g}",
                ]
            )
        table(["arm", "entered", *(f"conv {m}" for m in MODELS), "rate", "lift", "95% CI", "p"], arm_rows)
    failures = answer.get("failures") or []
    if failures:
        print("\nfailures")
        table(
            ["status", "reason", "count", "sample actions"],
            [[f["status"], f["reason"], f["count"], " ".join(f.get("sample_action_ids") or [])] for f in failures],
        )
    if answer.get("days"):
        print("\nby day")
        table(_header("day", stages), [_cells(day["day"], day, stages) for day in answer["days"]])
    if answer.get("runs"):
        print("\nruns")
        table(
            ["occurrence", "status", "targeted", "sent", "entered"],
            [[r["occurrence"], r["status"], r["targeted"], r["sent"], r["entered"]] for r in answer["runs"]],
        )
    return 0


def add_commands(commands: Any) -> None:
    """`beacon report rulesets | journeys | plans ID`."""
    report = commands.add_parser("report", help="a ruleset's, journey's or plan's funnel, arms and failures")
    kinds = report.add_subparsers(dest="report_kind", required=True, metavar="KIND")
    for kind in ("rulesets", "journeys", "plans"):
        command = _command(
            kinds, kind, show_report, "rules", f"the report of one of the {kind}",
            f"GET /v1/reports/{kind}/ID: triggered or entered, acted, delivered, failures, clicked, conversions and "
            "revenue per attribution model (acted, reach, click), per rule or node, split arms with lift.",
            kind=kind,
        )  # fmt: skip
        command.add_argument("id", help="its id")
        command.add_argument(
            "--from", dest="from_", metavar="YYYY-MM-DD", help="first day (default: 29 days before --to)"
        )
        command.add_argument("--to", metavar="YYYY-MM-DD", help="last day, inclusive (default: today, UTC)")
        command.add_argument("--by-day", action="store_true", help="also a funnel per day")
        command.add_argument("--json", action="store_true", help="print the server's answer")
        command.add_argument(
            "--csv", action="store_true", help="ask for the CSV export (printed as the server sends it)"
        )
