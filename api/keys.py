"""Typed application state by `web.AppKey`, and the accessors handlers use."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from redis.asyncio import Redis

from beacon.clock import Clock
from beacon.services import Services
from beacon.settings import Settings
from rules.registry import RulesetRegistry
from rules.store import JOURNEYS, SEGMENTS, RulesetStore


@dataclass(slots=True)
class ServiceSlot:
    """Filled by the app's cleanup context: the app is frozen before its services exist."""

    services: Services | None = None


SETTINGS = web.AppKey("settings", Settings)
CLOCK = web.AppKey("clock", Clock)
SERVICES = web.AppKey("services", ServiceSlot)


def services(request: web.Request) -> Services:
    """The running services of the request's app."""
    running = request.app[SERVICES].services
    if running is None:
        raise RuntimeError("services are not running")
    return running


def redis(request: web.Request) -> Redis:
    """The Redis client."""
    return services(request).redis


def store(request: web.Request) -> RulesetStore:
    """The ruleset store."""
    return services(request).store


def journey_store(request: web.Request) -> RulesetStore:
    """The journey store (the ruleset store's sibling, under `b:{rs}:j:*`)."""
    return RulesetStore(services(request).redis, JOURNEYS)


def segment_store(request: web.Request) -> RulesetStore:
    """The segment store (the ruleset store's sibling, under `b:{rs}:g:*`)."""
    return RulesetStore(services(request).redis, SEGMENTS)


def registry(request: web.Request) -> RulesetRegistry:
    """The compiled-ruleset registry."""
    return services(request).registry
