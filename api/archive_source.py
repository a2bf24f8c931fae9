"""Whether this process can read the event archive, for the endpoints that do (`source=archive` reports, a
segment backfill from the archive): one check, one error."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from api import keys
from beacon.errors import ConflictError
from measure.archiver import archive_elsewhere


async def archive_dir(request: web.Request) -> Path:
    """This process's data directory, when it holds the deployment's event archive; else a 409 naming why
    (`error.path` is `source`): the archive is off, or its files are in another process's data directory."""
    settings = request.app[keys.SETTINGS]
    if not settings.archive:
        raise ConflictError("the event archive is off (BEACON_ARCHIVE)", path="source", code="archive_off")
    problem = await archive_elsewhere(keys.redis(request), settings.data_dir)
    if problem is not None:
        raise ConflictError(problem, path="source", code="archive_elsewhere")
    return settings.data_dir
