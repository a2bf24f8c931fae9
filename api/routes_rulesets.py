"""Ruleset endpoints: versioned PUT, GET, list, DELETE, validate.

Ownership (`rules.owners`) is checked on PUT and DELETE; webhook header values are write-only
(`rules.secret_headers`): masked in every document read back, restored from the stored version on PUT.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from api import keys, paging
from api.bodies import read_body
from api.middleware import caller, requires
from beacon.errors import NotFoundError, ValidationError
from rules.model import Ruleset
from rules.owners import Owners
from rules.registry import compile_ruleset
from rules.secret_headers import has_marker, redact_document, restore_secrets
from rules.store import RulesetStore

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
_ID = re.compile(ID_PATTERN)


def ruleset_id_of(request: web.Request) -> str:
    """The `{id}` path segment (of a ruleset or a journey), checked."""
    ruleset_id = request.match_info["id"]
    if not _ID.fullmatch(ruleset_id):
        raise ValidationError("id must match " + ID_PATTERN, path="id")
    return ruleset_id


def version_of(request: web.Request) -> int | None:
    """The `?version=N` query parameter, checked (None when absent)."""
    version_text = request.query.get("version")
    if version_text is None:
        return None
    if not (version_text.isascii() and version_text.isdigit()):
        raise ValidationError("version must be a positive integer", path="version")
    return int(version_text)


@requires("rules")
async def put_ruleset(request: web.Request) -> web.Response:
    """Validate a document and store it as the ruleset's new active version."""
    ruleset_id = ruleset_id_of(request)
    document = await read_body(request)
    ruleset = await validated(request, document, ruleset_id)
    if isinstance(document, dict) and "id" not in document:
        document = {"id": ruleset_id, **document}
    store, owners, who = keys.store(request), Owners(keys.redis(request)), caller(request)
    # Refused before the stored secrets are read: another owner's PUT learns nothing from a 422 about them.
    await owners.claim(ruleset_id, who, record=False)
    document = await restore_stored_secrets(store, ruleset_id, document)
    await owners.claim(ruleset_id, who, record=True)
    version = await store.put(ruleset_id, document, request.app[keys.CLOCK].now_ms())
    # Compile here too, so this process serves the new version before the response goes out.
    await keys.registry(request).refresh()
    return web.json_response({"id": ruleset_id, "version": version, "rules": len(ruleset.rules)})


async def validated(request: web.Request, document: Any, ruleset_id: str | None) -> Ruleset:
    """The document validated into a ruleset (422s from `rules.schema`), in a thread: 500 rules take tens to
    hundreds of ms, and on the event loop that stalled every request and partition of the process."""
    lateness_ms = request.app[keys.SETTINGS].lateness_ms
    return await asyncio.to_thread(compile_ruleset, document, ruleset_id=ruleset_id, lateness_ms=lateness_ms)


async def restore_stored_secrets(store: RulesetStore, document_id: str, document: Any) -> Any:
    """The document with the masked header values it sent back replaced by the stored ones (write-only secrets)."""
    if not has_marker(document):
        return document
    try:
        stored = (await store.get(document_id)).document
    except NotFoundError:
        stored = None
    return restore_secrets(document, stored)


@requires("rules")
async def list_rulesets(request: web.Request) -> web.Response:
    """One page of the active rulesets, by id, with their versions and owners (`?limit=&after=&q=`: `api.paging`)."""
    stored, page = await paging.stored_page(request, keys.store(request))
    owners = await Owners(keys.redis(request)).of(page.ids)
    items = [
        {
            "id": item.id,
            "version": item.version,
            "description": item.document.get("description", ""),
            "rules": len(item.document.get("rules", [])),
            "updated_ms": item.updated_ms,
            "owner": owners.get(item.id),
        }
        for item in stored
    ]
    return paging.page_reply("rulesets", items, page)


@requires("rules")
async def get_ruleset(request: web.Request) -> web.Response:
    """The active version (or `?version=N`) of one ruleset, with its kept versions and owner."""
    ruleset_id = ruleset_id_of(request)
    owner = await Owners(keys.redis(request)).owner(ruleset_id)
    return await stored_document(keys.store(request), ruleset_id, version_of(request), {"owner": owner})


async def stored_document(
    store: RulesetStore, document_id: str, version: int | None, extra: dict[str, Any] | None = None
) -> web.Response:
    """A stored ruleset's or journey's active (or given) version, with its kept version numbers.

    Webhook header values are masked: they are write-only secrets (`rules.secret_headers`).
    """
    stored = await store.get(document_id, version)
    return web.json_response(
        {
            "id": stored.id,
            "version": stored.version,
            "document": redact_document(stored.document),
            "updated_ms": stored.updated_ms,
            "versions": await store.versions(document_id),
            **(extra or {}),
        }
    )


@requires("rules")
async def delete_ruleset(request: web.Request) -> web.Response:
    """Deactivate a ruleset and drop its versions (its owner's keys or an admin key only, once it has one)."""
    ruleset_id = ruleset_id_of(request)
    owners = Owners(keys.redis(request))
    await owners.claim(ruleset_id, caller(request), record=False)
    await keys.store(request).delete(ruleset_id)
    await owners.release(ruleset_id)
    await keys.registry(request).refresh()
    return web.json_response({"id": ruleset_id, "deleted": True})


@requires("rules")
async def validate_ruleset(request: web.Request) -> web.Response:
    """Validate a document without storing it."""
    document = await read_body(request)
    ruleset = await validated(request, document, None)
    return web.json_response({"valid": True, "id": ruleset.id, "rules": [rule.id for rule in ruleset.rules]})


def add_routes(app: web.Application) -> None:
    """Register the ruleset endpoints."""
    app.router.add_post("/v1/rulesets:validate", validate_ruleset)
    app.router.add_get("/v1/rulesets", list_rulesets)
    app.router.add_put("/v1/rulesets/{id:[^/:]+}", put_ruleset)
    app.router.add_get("/v1/rulesets/{id:[^/:]+}", get_ruleset)
    app.router.add_delete("/v1/rulesets/{id:[^/:]+}", delete_ruleset)
