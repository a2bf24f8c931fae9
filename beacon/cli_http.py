"""The CLI's HTTP calls to a running Beacon (`rules push`, `healthcheck`): every way a call can fail becomes
one line and an exit code, never a traceback."""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

import aiohttp
from yarl import URL

EXIT_REFUSED = 1  # the input was refused: an invalid ruleset
EXIT_USAGE = 2  # a bad argument, setting or file
EXIT_UNREACHABLE = 3  # no answer: connection refused, unknown host, timeout, connection lost
EXIT_HTTP = 4  # the server answered with an HTTP error (other than an invalid ruleset)


class CommandError(Exception):
    """A command that failed in a known way: a one-line message for stderr and the exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def checked_url(url: str, option: str = "--url") -> URL:
    """`url` if it is an absolute http(s) URL, else a usage error."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CommandError(f"{option} {url!r}: use an http:// or https:// URL", EXIT_USAGE)
    return parsed


async def call(
    method: str, url: URL, *, timeout_s: float, headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, Any]:
    """(status, JSON body or text) of one request; raises CommandError (EXIT_UNREACHABLE) when there is no answer."""
    where = f"{url.host}:{url.port}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.request(method, url, json=body, headers=headers) as response,
        ):
            text = await response.text(errors="replace")
    except TimeoutError:
        raise CommandError(f"no answer from {where} within {timeout_s:g}s", EXIT_UNREACHABLE) from None
    except aiohttp.ClientConnectorError as exc:
        raise CommandError(f"cannot connect to {where}: {_reason(exc.os_error)}", EXIT_UNREACHABLE) from None
    except aiohttp.ClientError as exc:
        raise CommandError(f"{where}: {str(exc) or type(exc).__name__}", EXIT_UNREACHABLE) from None
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def _reason(error: OSError) -> str:
    """ "Connection refused" rather than asyncio's "Connect call failed ('127.0.0.1', 1)"."""
    if isinstance(error, socket.gaierror):
        return f"unknown host ({error.strerror})"
    if error.errno and error.errno > 0:
        return os.strerror(error.errno)
    return str(error) or type(error).__name__


def http_error(url: URL, status: int, body: Any) -> CommandError:
    """The server's JSON error `{"error": {"code", "message", "path"}}`, or a non-JSON body's start, in one line."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        path = f"{error.get('path')}: " if error.get("path") else ""
        detail = f"{error.get('code')}: {path}{error.get('message')}"
    else:
        detail = " ".join(str(body).split())[:200] or "(empty body)"
    return CommandError(f"{url}: HTTP {status} {detail}", EXIT_HTTP)


async def push_ruleset(document: Any, source: str, base_url: str, key: str | None, timeout_s: float) -> int:
    """PUT a ruleset document; prints its new version (0), or each problem of an invalid ruleset (1)."""
    ruleset_id = document.get("id") if isinstance(document, dict) else None
    if not isinstance(ruleset_id, str):
        print(f'{source}: the document needs an "id"', file=sys.stderr)
        return EXIT_REFUSED
    base = checked_url(base_url)
    url = base.with_path(f"{base.path.rstrip('/')}/v1/rulesets/{ruleset_id}")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    status, body = await call("PUT", url, timeout_s=timeout_s, headers=headers, body=document)
    if status == 200 and isinstance(body, dict):
        print(f"pushed {ruleset_id} as version {body.get('version')}")
        return 0
    error = body.get("error") if isinstance(body, dict) else None
    if status == 422 and isinstance(error, dict):
        for item in error.get("errors") or [error]:
            print(f"{source}: {item.get('path')}: {item.get('message')}", file=sys.stderr)
        return EXIT_REFUSED
    raise http_error(url, status, body)


async def healthcheck(urls: list[str], timeout_s: float) -> int:
    """0 when the first of `urls` that answers says 200, else 1 (Docker's HEALTHCHECK reserves other codes)."""
    silent = []
    for raw in urls:
        url = checked_url(raw)
        try:
            status, body = await call("GET", url, timeout_s=timeout_s)
        except CommandError as exc:
            silent.append(exc.message)
            continue  # nothing of ours listens there: try the next role's port
        if status == 200:
            print(f"{url}: healthy")
            return 0
        problems = body.get("problems") if isinstance(body, dict) else None
        detail = "; ".join(map(str, problems)) if problems else http_error(url, status, body).message
        print(f"beacon: {url}: unhealthy: {detail}", file=sys.stderr)
        return 1
    print(f"beacon: no health endpoint answered ({'; '.join(silent)})", file=sys.stderr)
    return 1
