"""The aiohttp application: routes, middleware, and the services it starts and stops."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from api import (
    ingest_ws,
    keys,
    routes_actions,
    routes_audiences,
    routes_backtest,
    routes_clicks,
    routes_console,
    routes_dead_letters,
    routes_dryrun,
    routes_events,
    routes_identities,
    routes_items,
    routes_journeys,
    routes_ops,
    routes_plans,
    routes_reports,
    routes_rulesets,
    routes_schemas,
    routes_segments,
    routes_users,
)
from api.middleware import auth_middleware, error_middleware, metrics_middleware
from beacon.clock import Clock, SystemClock
from beacon.services import open_services
from beacon.settings import Settings

log = logging.getLogger("beacon.api")


def build_app(settings: Settings, clock: Clock | None = None) -> web.Application:
    """The application for `settings`; services start on app startup and stop on cleanup."""
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, auth_middleware], client_max_size=settings.max_body_bytes
    )
    app[keys.SETTINGS] = settings
    app[keys.CLOCK] = clock or SystemClock()
    app[keys.SERVICES] = keys.ServiceSlot()
    for module in (
        routes_events,
        routes_rulesets,
        routes_journeys,
        routes_segments,
        routes_audiences,
        routes_items,
        routes_identities,
        routes_plans,
        routes_reports,
        routes_dryrun,
        routes_backtest,
        routes_users,
        routes_actions,
        routes_dead_letters,
        routes_ops,
        routes_schemas,
        routes_clicks,
        routes_console,
    ):
        module.add_routes(app)
    ingest_ws.setup(app)
    app.cleanup_ctx.append(_services)
    if not settings.api_keys:
        log.warning("no API keys configured (BEACON_API_KEYS): the API is open to anyone who can reach it")
    return app


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    async with open_services(settings, app[keys.CLOCK], workers=settings.run_workers) as services:
        app[keys.SERVICES].services = services
        try:
            yield
        finally:
            app[keys.SERVICES].services = None
