"""The `beacon` command: serve, worker, connectors, rules, journeys, users, actions, dead-letters, backtest,
healthcheck. This module is the parser and the dispatch; the commands that query a running server are in
`beacon.cli_commands`.

Every failure the command expects ends in one line on stderr and an exit code (see `beacon.cli_http`):
1 input refused, 2 usage or configuration, 3 a server (Redis, Beacon) unreachable, 4 an HTTP error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from importlib import metadata

import msgspec
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import beacon
from beacon import cli_audiences, cli_commands, cli_reports, cli_settings
from beacon.cli_commands import DEFAULT_URL, add_commands, add_rules_commands
from beacon.cli_commands import load_document as _load_document
from beacon.cli_commands import seconds as _seconds
from beacon.cli_http import EXIT_UNREACHABLE, EXIT_USAGE, CommandError, healthcheck, push_ruleset
from beacon.clock import SystemClock
from beacon.data_dir_lock import DataDirLock
from beacon.errors import BeaconError, ValidationError
from beacon.logs import configure_logging, redact
from beacon.redis_server import EmbeddedRedis
from beacon.settings import DEFAULT_OPS_PORTS, MAX_PORT, Settings

log = logging.getLogger("beacon")

PUSH_TIMEOUT_S = 30.0
HEALTHCHECK_TIMEOUT_S = 3.0
EPILOG = (
    "Settings come from BEACON_* environment variables (README: Configuration); an unknown or malformed one "
    "stops the command. Exit codes: 0 done, 1 input refused (an invalid ruleset), 2 usage or configuration "
    "error, 3 a server (Redis, Beacon) unreachable, 4 the server answered with an HTTP error."
)


def package_version() -> str:
    """The installed distribution's version (the package's own when it runs from a source tree)."""
    try:
        return metadata.version("beacon-cep")
    except metadata.PackageNotFoundError:
        return beacon.__version__


@contextlib.contextmanager
def resolved_redis(settings: Settings) -> Iterator[Settings]:
    """Settings with a Redis URL: the configured one, or a private server started for this process."""
    if settings.redis_url:
        yield settings
        return
    lock = DataDirLock(settings.data_dir)
    lock.acquire()  # before anything touches the directory's server: a second process stops here
    try:
        server = EmbeddedRedis(settings.data_dir / "redis", port=settings.embedded_redis_port or None)
        server.start()
        try:
            yield msgspec.structs.replace(settings, redis_url=server.url)
        finally:
            server.stop()
    finally:
        lock.release()


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
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise ValidationError(
                f"cannot listen on {settings.host}:{settings.port}: {os.strerror(exc.errno) if exc.errno else exc}",
                path="BEACON_PORT",
            ) from None
        port = runner.addresses[0][1]
        log.info("beacon serving on http://%s:%s (redis %s)", settings.host, port, settings.redis_url)
        await _until_stopped()
    finally:
        await runner.cleanup()


async def _work(settings: Settings) -> None:
    await _scale_out(settings, "worker")


async def _deliver(settings: Settings) -> None:
    await _scale_out(settings, "connectors")


async def _scale_out(settings: Settings, role: str) -> None:
    """`beacon worker` or `beacon connectors`: one part of what `serve` runs, with its own ops port."""
    from beacon.ops_server import ProcessSlot, ops_listener
    from beacon.services import open_services

    # The ops port first: /healthz answers 503 while the process waits for Redis (as long as it takes).
    slot = ProcessSlot()
    async with (
        ops_listener(slot, settings, role) as ops_url,
        open_services(
            settings,
            SystemClock(),
            workers=role == "worker",
            connectors=role == "connectors",
            role=role,
            on_redis_wait=slot.waiting_for_redis,
        ) as services,
    ):
        with slot.serving(services):
            name = f"beacon {role}"
            if services.worker is not None:
                name += f" {services.worker.consumer}"
            log.info("%s on %s; /metrics and /healthz on %s", name, settings.redis_url, ops_url)
            await _until_stopped()


def _run_process(command: str, settings: Settings) -> int:
    """Run `serve`, `worker` or `connectors` until SIGINT / SIGTERM; start-up failures become one line."""
    runners = {"serve": _serve, "worker": _work, "connectors": _deliver}
    try:
        with resolved_redis(settings) as ready:
            try:
                asyncio.run(runners[command](ready))
            except RedisAuthenticationError as exc:
                raise CommandError(f"Redis at {ready.redis_url} refused the credentials: {exc}", EXIT_USAGE) from None
            except (RedisConnectionError, RedisTimeoutError) as exc:
                raise CommandError(f"cannot reach Redis at {ready.redis_url}: {exc}", EXIT_UNREACHABLE) from None
    except BeaconError as exc:  # a setting Redis refuses, a port in use, another layout, the private server
        raise CommandError(str(exc), EXIT_USAGE) from None
    return 0


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


def _health_urls(settings: Settings) -> list[str]:
    """Where this machine's Beacon process answers /healthz: serve's port, then worker's, then connectors'."""
    ports = [settings.port] + [settings.ops_address(role)[1] for role in DEFAULT_OPS_PORTS]
    urls = []
    for host, port in [(settings.host, ports[0])] + [(settings.ops_host or settings.host, p) for p in ports[1:]]:
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        url = f"http://{f'[{local}]' if ':' in local else local}:{port}/healthz"
        if url not in urls:
            urls.append(url)
    return urls


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 for any free one."""
    if not text.isdigit() or int(text) > MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-{MAX_PORT})")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The `beacon` command line; every command and option carries help (tests/test_cli.py checks it)."""
    parser = argparse.ArgumentParser(
        prog="beacon",
        description="Beacon: a real-time marketing trigger server (complex event processing on Redis).",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"beacon {package_version()}", help="print the version")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="API, workers, timers and connectors in one process",
        description="Run the HTTP/WebSocket API (with /metrics and /healthz), the workers and the connectors.",
        epilog=EPILOG,
    )
    serve.add_argument("--host", help="listen address (env BEACON_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="listen port, 0 for any free one (env BEACON_PORT; default 8080)")
    commands.add_parser(
        "worker",
        help="partition owners only: events and their timers (scale-out)",
        description="Own a fair share of the partitions and process their events and timers. /metrics and "
        "/healthz on BEACON_OPS_HOST:BEACON_OPS_PORT (default: BEACON_HOST, port 8081).",
        epilog=EPILOG,
    )
    commands.add_parser(
        "connectors",
        help="outbox consumer only: deliver actions (scale-out)",
        description="Deliver the actions in the outbox. /metrics and /healthz on BEACON_OPS_HOST:BEACON_OPS_PORT "
        "(default: BEACON_HOST, port 8082).",
        epilog=EPILOG,
    )

    rules = commands.add_parser(
        "rules", help="rulesets: push, list, get, diff, delete, dry-run on a server; validate offline", epilog=EPILOG
    )
    rule_commands = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    push = rule_commands.add_parser(
        "push",
        help="store a ruleset file on a running server",
        description='PUT the file as the newest version of its ruleset (the document\'s "id").',
    )
    push.add_argument("file", help="ruleset JSON file, - for stdin")
    push.add_argument("--url", help=f"the server's base URL (env BEACON_URL; default {DEFAULT_URL})")
    push.add_argument("--key", help="API key with the rules scope (env BEACON_API_KEY; default none)")
    push.add_argument(
        "--timeout",
        type=_seconds,
        default=PUSH_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for the server (default {PUSH_TIMEOUT_S:g})",
    )
    validate = rule_commands.add_parser("validate", help="check a ruleset file offline")
    validate.add_argument("file", help="ruleset JSON file, - for stdin")
    add_rules_commands(rule_commands)
    add_commands(commands)
    cli_audiences.add_commands(commands)
    cli_reports.add_commands(commands)
    cli_settings.add_commands(commands)

    backtest = commands.add_parser("backtest", help="run ruleset and journey files over a recorded event log, offline")
    backtest.add_argument(
        "--ruleset", action="append", default=[], metavar="FILE", help="ruleset JSON file; repeat for several"
    )
    backtest.add_argument(
        "--journey", action="append", default=[], metavar="FILE", help="journey JSON file; repeat for several"
    )
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

    check = commands.add_parser(
        "healthcheck",
        help="exit 0 if the local Beacon process is healthy, else 1 (for Docker's HEALTHCHECK)",
        description="GET /healthz of this machine's Beacon process: serve's BEACON_PORT, then worker's and "
        "connectors' ops ports; the first that answers decides. Exits 0 or 1 only.",
    )
    check.add_argument("--url", help="check this /healthz URL instead (default: the local ports, in that order)")
    check.add_argument(
        "--timeout",
        type=_seconds,
        default=HEALTHCHECK_TIMEOUT_S,
        metavar="S",
        help=f"seconds per address (default {HEALTHCHECK_TIMEOUT_S:g})",
    )
    return parser


def _fail(message: str, exit_code: int) -> int:
    print(f"beacon: {redact(' '.join(message.split()))}", file=sys.stderr)
    return exit_code


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
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except BeaconError as exc:
        # Docker's HEALTHCHECK reserves exit code 2: a health check that cannot run is unhealthy (1).
        return _fail(f"configuration error: {exc}", 1 if args.command == "healthcheck" else EXIT_USAGE)
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    try:
        if getattr(args, "remote", None) is not None:  # a command of beacon.cli_commands
            return cli_commands.run(args)
        if args.command == "settings":
            return cli_settings.run(args, os.environ)
        if args.command == "healthcheck":
            urls = [args.url] if args.url else _health_urls(settings)
            return min(asyncio.run(healthcheck(urls, args.timeout)), 1)
        if args.command == "rules":
            if args.rules_command == "validate":
                return _validate(args.file, settings.lateness_ms)
            url = args.url or os.environ.get("BEACON_URL") or DEFAULT_URL
            key = args.key or os.environ.get("BEACON_API_KEY") or None
            return asyncio.run(push_ruleset(_load_document(args.file), args.file, url, key, args.timeout))
        if args.command == "backtest":
            from beacon.backtest_command import backtest as run_backtest_command
            from beacon.services import tune_gc

            # Users' state is millions of small long-lived objects, as in a worker's cache: at CPython's default
            # thresholds the collector rescanning it took a third of the run (300k events of bench/workload.py).
            tune_gc()
            if not args.ruleset and not args.journey:
                return _fail("backtest: give at least one --ruleset or --journey file", EXIT_USAGE)
            return run_backtest_command(
                args.ruleset,
                args.events,
                settings,
                as_json=args.json,
                until_ms=args.until,
                jobs=args.jobs,
                journey_paths=args.journey,
            )
        if args.command == "serve":
            settings = msgspec.structs.replace(
                settings, host=args.host or settings.host, port=args.port if args.port is not None else settings.port
            )
        return _run_process(args.command, settings)
    except CommandError as exc:
        return _fail(exc.message, 1 if args.command == "healthcheck" else exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `beacon ... | head`: the reader left. Point stdout at /dev/null so the interpreter's final flush does not
        # raise again, and exit as `head`'s writers conventionally do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
