"""Paging of the API's lists: the `?limit=` check every list shares, and the document lists' pages by id.

A document list (`GET /v1/rulesets`, `/v1/journeys`, `/v1/segments`, `/v1/audiences`, `/v1/plans`) answers
one page: `?limit=` documents (default 100, at most 1000) whose id comes after `?after=<id>`, in id order
(byte order: ids are ASCII), optionally only those whose id contains `?q=` (any case). The reply holds the
page under the list's usual key, `next` (the `after` of the following page, null on the last) and `total`
(how many ids match `q`, all pages together). The cursor is an id, not a position: a document added or
deleted between two pages moves nothing else, so a walk lists each document present throughout exactly once.
The page is chosen from the ids alone; only its own documents are then read.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from beacon.errors import ValidationError
from rules.store import RulesetStore, StoredRuleset

LIST_LIMIT_DEFAULT = 100
# One page of summaries stays one small reply: a client that wants everything follows `next`.
LIST_LIMIT_MAX = 1000
# The id rule of every paged kind (`api.routes_rulesets.ID_PATTERN`): a cursor is one of those ids.
_AFTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def query_limit(request: web.Request, default: int = LIST_LIMIT_DEFAULT, maximum: int = LIST_LIMIT_MAX) -> int:
    """The `?limit=` query parameter, checked (a 422 naming `limit` otherwise)."""
    limit_text = request.query.get("limit", str(default))
    if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= maximum:
        raise ValidationError(f"limit must be an integer from 1 to {maximum}", path="limit")
    return int(limit_text)


@dataclass(frozen=True, slots=True)
class PageRequest:
    """Which page of a document list: at most `limit` ids after `after` (None: from the start) containing `q`."""

    limit: int
    after: str | None
    q: str  # lower case; "" matches every id


@dataclass(frozen=True, slots=True)
class Page:
    """The ids of one page, in order; `next` is the cursor of the following page (None: this is the last)."""

    ids: list[str]
    next: str | None
    total: int  # ids matching the request's `q`, on every page


def page_request(request: web.Request) -> PageRequest:
    """`?limit=&after=&q=` of a document list, checked: a bad value is a 422 naming its parameter."""
    limit = query_limit(request)
    after = request.query.get("after") or None
    if after is not None and not _AFTER.fullmatch(after):
        raise ValidationError("after must be a document id: the `next` of the previous page", path="after")
    return PageRequest(limit, after, request.query.get("q", "").lower())


def page_of(ids: Iterable[str], wanted: PageRequest) -> Page:
    """The page `wanted` of `ids` (in any order, each once)."""
    matching = [item for item in ids if wanted.q in item.lower()] if wanted.q else list(ids)
    later = matching if wanted.after is None else [item for item in matching if item > wanted.after]
    # One more than the page: whether it exists says whether there is a next page.
    chosen = heapq.nsmallest(wanted.limit + 1, later)
    page = chosen[: wanted.limit]
    return Page(page, page[-1] if len(chosen) > wanted.limit else None, len(matching))


async def stored_page(request: web.Request, store: RulesetStore) -> tuple[list[StoredRuleset], Page]:
    """The requested page of a store's active documents: chosen from their ids, then only its documents read.

    A document deleted between the two reads is left out of the page (the cursor still moves past it).
    """
    page = page_of(await store.ids(), page_request(request))
    return await store.load(page.ids), page


def page_reply(list_key: str, items: list[dict[str, Any]], page: Page) -> web.Response:
    """`{<list_key>: items, "next", "total"}`: the page, with what a client needs to fetch the next one."""
    return web.json_response({list_key: items, "next": page.next, "total": page.total})
