"""The `beacon` command: serve, worker, connectors, rules push / validate, backtest."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from beacon.clock import SystemClock
from beacon.errors import BeaconError
from beacon.redis_server import EmbeddedRedis
from beacon.settings import Settings

log = logging.getLogger("beacon")


@contextlib.contextmanager
def resolved_redis(settings: Settings) -> Iterator[Settings]:
    """Settings with a Redis URL: the configured one, or a private server started for this process."""
    if settings.redis_url:
        yield settings
        return
    server = EmbeddedRedis(
        settings.data_dir / "redis", port=int(os.environ.get("BEACON_EMBEDDED_REDIS_PORT", "0")) or None
    )
    server.start()
    try:
        yield dataclasses.replace(settings, redis_url=server.url)
    finally:
        server.stop()


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def _serve(settings: Settings) -> None:
    from aiohttp import web

    from api.app import build_app

    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    log.info("beacon serving on http://%s:%s (redis %s)", settings.host, settings.port, settings.redis_url)
    try:
        await _until_stopped()
    finally:
        await runner.cleanup()


async def _work(settings: Settings) -> None:
    from beacon.services import open_services

    async with open_services(settings, SystemClock(), workers=True, connectors=False) as services:
        log.info("beacon worker %s on %s", services.worker.consumer if services.worker else "?", settings.redis_url)
        await _until_stopped()


async def _deliver(settings: Settings) -> None:
    from beacon.services import open_services

    async with open_services(settings, SystemClock(), workers=False, connectors=True):
        log.info("beacon connectors on %s", settings.redis_url)
        await _until_stopped()


def _load_document(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise SystemExit(f"cannot read {path}: {exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"{path} is not valid JSON: {exc}") from exc


def _validate(path: str, lateness_ms: int) -> int:
    from rules.schema import RulesetInvalid, parse_ruleset

    try:
        ruleset = parse_ruleset(_load_document(path), default_lateness_ms=lateness_ms)
    except RulesetInvalid as exc:
        for error in exc.errors:
            print(f"{path}: {error}", file=sys.stderr)
        return 1
    print(f"{path}: ruleset {ruleset.id!r} is valid ({len(ruleset.rules)} rules)")
    return 0


async def _push(path: str, url: str, key: str | None) -> int:
    import aiohttp

    document = _load_document(path)
    ruleset_id = document.get("id") if isinstance(document, dict) else None
    if not isinstance(ruleset_id, str):
        print(f'{path}: the document needs an "id"', file=sys.stderr)
        return 1
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{url.rstrip('/')}/v1/rulesets/{ruleset_id}", json=document, headers=headers) as response,
    ):
        body = await response.json(content_type=None)
    if response.status != 200:
        error = body.get("error", {})
        for item in error.get("errors") or [error]:
            print(f"{path}: {item.get('path')}: {item.get('message')}", file=sys.stderr)
        return 1
    print(f"pushed {ruleset_id} as version {body['version']}")
    return 0


def _jobs(text: str) -> int:
    """--jobs: a whole number of processes, 1 to 64."""
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= jobs <= 64:
        raise argparse.ArgumentTypeError(f"must be 1 to 64, got {jobs}")
    return jobs


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `beacon` console script."""
    parser = argparse.ArgumentParser(prog="beacon", description="Real-time marketing trigger server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="API, workers, timers and connectors in one process")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    commands.add_parser("worker", help="partition owners only: events and their timers (scale-out)")
    commands.add_parser("connectors", help="outbox consumer only: deliver actions (scale-out)")
    rules = commands.add_parser("rules", help="ruleset files")
    rule_commands = rules.add_subparsers(dest="rules_command", required=True)
    push = rule_commands.add_parser("push", help="store a ruleset file on a running server")
    push.add_argument("file")
    push.add_argument("--url", default=os.environ.get("BEACON_URL", "http://127.0.0.1:8080"))
    push.add_argument("--key", default=os.environ.get("BEACON_API_KEY"))
    validate = rule_commands.add_parser("validate", help="check a ruleset file offline")
    validate.add_argument("file")
    backtest = commands.add_parser("backtest", help="run ruleset files over a recorded event log, offline")
    backtest.add_argument("--ruleset", action="append", required=True, metavar="FILE", help="repeatable")
    backtest.add_argument("--events", required=True, metavar="FILE", help=".jsonl or .jsonl.gz, one event a line")
    backtest.add_argument("--json", action="store_true", help="print the report as JSON")
    backtest.add_argument("--until", type=int, metavar="MS", help="stop the simulated clock here (ms since the epoch)")
    backtest.add_argument(
        "--jobs",
        type=_jobs,
        default=len(os.sched_getaffinity(0)),
        metavar="N",
        help="processes, each evaluating a share of the users (default: the CPUs this process may use)",
    )
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except BeaconError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "rules":
        if args.rules_command == "validate":
            return _validate(args.file, settings.lateness_ms)
        return asyncio.run(_push(args.file, args.url, args.key))
    if args.command == "backtest":
        from beacon.backtest_command import backtest as run_backtest_command
        from beacon.services import tune_gc

        # Users' state is millions of small long-lived objects, as in a worker's cache: at CPython's default
        # thresholds the collector rescanning it took a third of the run (300k events of bench/workload.py).
        tune_gc()
        return run_backtest_command(
            args.ruleset, args.events, settings, as_json=args.json, until_ms=args.until, jobs=args.jobs
        )
    if args.command == "serve":
        settings = dataclasses.replace(
            settings, host=args.host or settings.host, port=args.port if args.port is not None else settings.port
        )
    runners = {"serve": _serve, "worker": _work, "connectors": _deliver}
    with resolved_redis(settings) as ready:
        asyncio.run(runners[args.command](ready))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
