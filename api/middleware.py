"""API middleware: request metrics, bearer-key auth with scopes, and every error as a JSON body (never a bare 500)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from api.keys import SETTINGS
from beacon import metrics
from beacon.errors import AuthError, BeaconError, ForbiddenError, UnavailableError
from beacon.redis_errors import describe, is_redis_trouble
from cep.scripts import NotDurableError
from rules.owners import Caller

log = logging.getLogger("beacon.api")

# Set by auth_middleware on every scoped request: the handlers that check ownership read it (`caller`).
CALLER = web.RequestKey("caller", Caller)
# With no keys configured the API is open: nobody can be told apart, so nobody is refused for ownership.
OPEN_CALLER = Caller(owner=None, admin=True)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Callable[..., Any])


def requires(scope: str) -> Callable[[H], H]:
    """Mark a handler as needing an API key with `scope` (admin keys hold every scope)."""

    def mark(handler: H) -> H:
        handler.beacon_scope = scope  # type: ignore[attr-defined]  # read back by auth_middleware
        return handler

    return mark


def error_response(error: BeaconError) -> web.Response:
    """The JSON response for one of our errors."""
    return web.json_response(error.to_json(), status=error.status)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each request by its route's template (never the raw path: ids would mint series) and status, and
    time it; outermost, so it sees the status the error middleware chose. A WebSocket session is counted, not
    timed (its "latency" is how long the socket stayed open)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else metrics.UNMATCHED_ROUTE
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # below 400 (redirects): the error middleware passes them on
        metrics.on_http_request(route, request.method, exc.status, time.perf_counter() - started)
        raise
    except Exception:
        metrics.on_http_request(route, request.method, 500, time.perf_counter() - started)
        raise
    status = response.status
    metrics.on_http_request(route, request.method, status, None if status == 101 else time.perf_counter() - started)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map our errors and aiohttp's HTTP errors to `{"error": {...}}`; log and hide the unexpected."""
    try:
        return await handler(request)
    except BeaconError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        body = {"error": {"code": code, "message": exc.reason, "path": None}}
        return web.json_response(
            body, status=exc.status, headers={"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        )
    except Exception as exc:
        # An ack whose AOF fsync did not come in time (WAITAOF: a full or stalled disk) is Redis trouble too:
        # the events may be stored, not yet durable, and a resend with the same ids is what mends it (it was
        # a 500 in the fault suite's full-disk run).
        if is_redis_trouble(exc) or isinstance(exc, NotDurableError):
            # Redis down, out of memory or refusing writes: a retry may succeed, which a 500 ("a bug") did not
            # say. The body names the type only: redis-py's message names the address.
            log.warning("%s %s: Redis trouble: %s", request.method, request.path, describe(exc))
            metrics.on_redis_error("api")
            unavailable = UnavailableError(f"Redis is not available ({type(exc).__name__}); retry the request")
            response = error_response(unavailable)
            response.headers["Retry-After"] = "1"
            return response
        log.exception("unhandled error on %s %s", request.method, request.path)
        body = {"error": {"code": "internal", "message": "internal error; see the server log", "path": None}}
        return web.json_response(body, status=500)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check `Authorization: Bearer <key>` against the configured keys for scoped handlers."""
    scope = getattr(request.match_info.handler, "beacon_scope", None)
    settings = request.app[SETTINGS]
    keys = settings.api_keys
    if scope is None or not keys:
        request[CALLER] = OPEN_CALLER
        return await handler(request)
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise AuthError("missing bearer token (Authorization: Bearer <key>)", path="Authorization")
    scopes = keys.get(token.strip())
    if scopes is None:
        raise AuthError("unknown API key", path="Authorization")
    if scope not in scopes:
        raise ForbiddenError(f"this key lacks the {scope!r} scope", path="Authorization")
    request[CALLER] = Caller(owner=settings.api_key_owners.get(token.strip()), admin="admin" in scopes)
    return await handler(request)


def caller(request: web.Request) -> Caller:
    """Who made a scoped request (set by `auth_middleware`)."""
    return request[CALLER]
