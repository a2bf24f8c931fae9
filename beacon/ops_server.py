"""`/metrics` and `/healthz`: the handlers every process shares, and the listener of `beacon worker` and
`beacon connectors` (`beacon serve` has them on its API port)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from aiohttp import web

from beacon import metrics
from beacon.errors import ValidationError
from beacon.services import Services
from beacon.settings import Settings

log = logging.getLogger("beacon.ops")


@dataclass(slots=True)
class ProcessSlot:
    """A process's services once they run, and until then why not (what /healthz answers meanwhile)."""

    services: Services | None = None
    starting: str = "starting"

    @contextlib.contextmanager
    def serving(self, services: Services) -> Iterator[None]:
        """Hold `services` for the block; /healthz says "stopping" once they start to stop."""
        self.services = services
        try:
            yield
        finally:
            self.services, self.starting = None, "stopping"

    def waiting_for_redis(self, attempt: int) -> None:
        """`open_services`' `on_redis_wait`: attempt `attempt` to reach Redis failed, another follows."""
        # No address or error text: /healthz may be reachable by more people than the logs are.
        self.starting = f"starting: Redis not available yet ({attempt} attempt(s) failed; see the log)"


SERVICES = web.AppKey("services", ProcessSlot)


def metrics_response() -> web.Response:
    """Prometheus text exposition of this process's metrics."""
    body, content_type = metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def health_response(services: Services | None, starting: str = "not started") -> web.Response:
    """200 `{"status": "ok", "problems": []}`, or 503 with the problems (see `beacon.health`); before the
    services run, the one problem is `starting` (why they do not run yet)."""
    if services is None or services.health is None:
        problems = [starting]
    else:
        problems = await services.health.check()
    if problems:
        return web.json_response({"status": "unavailable", "problems": problems}, status=503)
    return web.json_response({"status": "ok", "problems": []})


async def _get_metrics(request: web.Request) -> web.Response:
    return metrics_response()


async def _get_health(request: web.Request) -> web.Response:
    slot = request.app[SERVICES]
    return await health_response(slot.services, slot.starting)


@contextlib.asynccontextmanager
async def ops_listener(slot: ProcessSlot, settings: Settings, role: str) -> AsyncIterator[str]:
    """Serve /metrics and /healthz for `role` while the context runs, for the services `slot` holds (503 while
    it holds none: the process is starting, waiting for Redis); yields the base URL it listens on.

    Port 0 picks a free port. The role's default port, when taken (several processes on one host), is
    replaced by a free one with a warning; a configured port that is taken is a `ValidationError`.
    """
    app = web.Application()
    app[SERVICES] = slot
    app.router.add_get("/metrics", _get_metrics)
    app.router.add_get("/healthz", _get_health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        host, port, configured = settings.ops_address(role)
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await site.stop()
            if configured or exc.errno != errno.EADDRINUSE:
                raise ValidationError(
                    f"cannot listen on {host}:{port}: {os.strerror(exc.errno) if exc.errno else exc}",
                    path="BEACON_OPS_PORT",
                ) from None
            await web.TCPSite(runner, host, 0).start()
            log.warning(
                "port %d is taken (another process on this host?): /metrics and /healthz on port %d instead; "
                "set BEACON_OPS_PORT to choose",
                port,
                _bound_port(runner),
            )
        yield f"http://{_url_host(host)}:{_bound_port(runner)}"
    finally:
        await runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    """The port the runner's socket is bound to (the one the OS chose for port 0)."""
    return int(runner.addresses[0][1])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
