"""An async client for Beacon's HTTP API: rulesets, journeys, segments, users, actions and dead letters.

Every method is one request and returns the server's decoded JSON. Any HTTP error becomes one
exception, BeaconAPIError, carrying the status and the server's `{"error": {"code", "message", "path"}}`;
a server that cannot be reached raises aiohttp's own ClientError (or TimeoutError).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

JSON = dict[str, Any]
LIST_PAGE = 1000  # documents per request when listing: the server's most


class BeaconAPIError(Exception):
    """The server answered with an HTTP error: its status and its JSON error's code, message and path."""

    def __init__(self, method: str, url: URL, status: int, code: str, message: str, path: str | None) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{method} {url.path}: HTTP {status} {code}: {where}{message}")
        self.method = method
        self.url = url
        self.status = status
        self.code = code
        self.message = message
        self.path = path


class BeaconAdmin:
    """Async client for the management endpoints; use `async with` or call close().

    `url` is the server's base URL (`http://host:8080`); `api_key` is sent as a bearer token and needs
    the scope of each endpoint (rules, events or admin; see the README's HTTP API table).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        base = URL(url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"{url!r}: use an http:// or https:// URL")
        self._base = base.with_query(None)
        self._prefix = base.raw_path.rstrip("/")  # a server mounted under a path prefix keeps it
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> BeaconAdmin:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session this client opened (a session passed in stays open); idempotent."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- rulesets

    async def put_ruleset(self, document: Mapping[str, Any], ruleset_id: str | None = None) -> JSON:
        """Validate and store a new version → `{"id", "version", "rules"}` (the id defaults to the document's)."""
        return await self._json("PUT", _path("rulesets", _id_of(document, ruleset_id)), body=document)

    async def get_ruleset(self, ruleset_id: str, version: int | None = None) -> JSON:
        """The active (or a kept) version's document and the kept versions."""
        return await self._json("GET", _path("rulesets", ruleset_id), query=_query(version=version))

    async def list_rulesets(self, page_size: int = LIST_PAGE) -> list[JSON]:
        """Every active ruleset and its version, in id order, fetched a page (1–1000) at a time."""
        return await self._list_all("rulesets", page_size)

    async def delete_ruleset(self, ruleset_id: str) -> JSON:
        return await self._json("DELETE", _path("rulesets", ruleset_id))

    async def validate_ruleset(self, document: Mapping[str, Any]) -> JSON:
        """Validate without storing → `{"valid": true, "id", "rules"}`; a bad document raises (422, with path)."""
        return await self._json("POST", "/v1/rulesets:validate", body=document)

    async def dry_run_ruleset(
        self,
        ruleset_id: str,
        events: Sequence[Mapping[str, Any]],
        *,
        profiles: Mapping[str, Any] | None = None,
        until: int | None = None,
        document: Mapping[str, Any] | None = None,
    ) -> JSON:
        """Run the stored ruleset (or an unsaved `document`) on `events` → firings, late events, pending timers."""
        return await self._dry_run("rulesets", ruleset_id, events, profiles, until, document)

    # -- journeys

    async def put_journey(self, document: Mapping[str, Any], journey_id: str | None = None) -> JSON:
        """Validate and store a new version → `{"id", "version", "nodes"}`."""
        return await self._json("PUT", _path("journeys", _id_of(document, journey_id)), body=document)

    async def get_journey(self, journey_id: str, version: int | None = None) -> JSON:
        return await self._json("GET", _path("journeys", journey_id), query=_query(version=version))

    async def list_journeys(self, page_size: int = LIST_PAGE) -> list[JSON]:
        """Every active journey and its version, in id order, fetched a page (1–1000) at a time."""
        return await self._list_all("journeys", page_size)

    async def delete_journey(self, journey_id: str) -> JSON:
        return await self._json("DELETE", _path("journeys", journey_id))

    async def validate_journey(self, document: Mapping[str, Any]) -> JSON:
        return await self._json("POST", "/v1/journeys:validate", body=document)

    async def journey_stats(self, journey_id: str) -> JSON:
        """Per version and node: entered, waiting, left by each arm, exited, converted."""
        return await self._json("GET", _path("journeys", journey_id, "stats"))

    async def dry_run_journey(
        self,
        journey_id: str,
        events: Sequence[Mapping[str, Any]],
        *,
        profiles: Mapping[str, Any] | None = None,
        until: int | None = None,
        document: Mapping[str, Any] | None = None,
    ) -> JSON:
        """Run the stored journey (or an unsaved `document`) on `events` with a simulated clock."""
        return await self._dry_run("journeys", journey_id, events, profiles, until, document)

    async def _dry_run(
        self,
        kind: str,
        document_id: str,
        events: Sequence[Mapping[str, Any]],
        profiles: Mapping[str, Any] | None,
        until: int | None,
        document: Mapping[str, Any] | None,
    ) -> JSON:
        body = _body(events=list(events), profiles=profiles, until=until, document=document)
        return await self._json("POST", _path(kind, document_id, action="dry-run"), body=body)

    # -- segments

    async def put_segment(self, document: Mapping[str, Any], segment_id: str | None = None) -> JSON:
        """Validate and store a new version → `{"id", "version"}`."""
        return await self._json("PUT", _path("segments", _id_of(document, segment_id)), body=document)

    async def get_segment(self, segment_id: str, version: int | None = None) -> JSON:
        """The document, its kept versions and its `size`."""
        return await self._json("GET", _path("segments", segment_id), query=_query(version=version))

    async def list_segments(self, page_size: int = LIST_PAGE) -> list[JSON]:
        """Every active segment with its size, in id order, fetched a page (1–1000) at a time."""
        return await self._list_all("segments", page_size)

    async def delete_segment(self, segment_id: str) -> JSON:
        return await self._json("DELETE", _path("segments", segment_id))

    async def validate_segment(self, document: Mapping[str, Any]) -> JSON:
        return await self._json("POST", "/v1/segments:validate", body=document)

    async def segment_members(self, segment_id: str, page_size: int = 100) -> AsyncIterator[str]:
        """Every member, fetched a page at a time (`page_size` is a hint to the server, 1–1000)."""
        cursor = ""
        while True:
            page = await self._json(
                "GET", _path("segments", segment_id, "members"), query=_query(cursor=cursor or None, limit=page_size)
            )
            for member in page["members"]:
                yield str(member)
            cursor = str(page.get("cursor") or "")
            if not cursor:
                return

    async def estimate_segment(
        self,
        where: Mapping[str, Any] | None = None,
        *,
        segment: Mapping[str, Any] | None = None,
        exact_limit: int | None = None,
    ) -> JSON:
        """Size a condition (or a whole segment document) over the stored users now."""
        if (where is None) == (segment is None):
            raise ValueError("give exactly one of where= and segment=")
        body = _body(where=where, segment=segment, exact_limit=exact_limit)
        return await self._json("POST", "/v1/segments:estimate", body=body)

    # -- users and actions

    async def get_user(self, user_id: str) -> JSON:
        """Profile, tags and per-rule and per-journey state (the "why didn't it fire?" view)."""
        return await self._json("GET", _path("users", user_id))

    async def patch_user(
        self,
        user_id: str,
        *,
        attrs: Mapping[str, Any] | None = None,
        add_tags: Sequence[str] | None = None,
        remove_tags: Sequence[str] | None = None,
    ) -> JSON:
        """Set attributes (None deletes one) and tags in order with the user's events: the profile once
        applied, or `{"status": "queued"}` (HTTP 202) when not applied within the server's wait."""
        body = _body(
            attrs=attrs,
            add_tags=None if add_tags is None else list(add_tags),
            remove_tags=None if remove_tags is None else list(remove_tags),
        )
        return await self._json("PATCH", _path("users", user_id), body=body)

    async def user_trace(self, user_id: str, limit: int | None = None) -> JSON:
        """The user's evaluations, newest first."""
        return await self._json("GET", _path("users", user_id, "trace"), query=_query(limit=limit))

    async def list_actions(
        self, *, user_id: str | None = None, rule: str | None = None, limit: int | None = None
    ) -> list[JSON]:
        """The action ledger, newest first (one user's, or across users)."""
        query = _query(user_id=user_id, rule=rule, limit=limit)
        return list((await self._json("GET", "/v1/actions", query=query))["actions"])

    # -- dead letters (admin scope)

    async def list_dead_letters(self, *, connector: str | None = None, limit: int | None = None) -> list[JSON]:
        query = _query(connector=connector, limit=limit)
        return list((await self._json("GET", "/v1/dead-letters", query=query))["dead_letters"])

    async def replay_dead_letters(
        self, ids: Sequence[str] | None = None, *, all: bool = False, connector: str | None = None
    ) -> JSON:
        """Redeliver the given dead letters, or with `all=True` every one (of `connector`); idempotent."""
        if (ids is None) == (not all):
            raise ValueError("give ids or all=True")
        body = _body(ids=list(ids)) if ids is not None else _body(all=True, connector=connector)
        return await self._json("POST", "/v1/dead-letters:replay", body=body)

    # -- the request

    async def _list_all(self, collection: str, page_size: int) -> list[JSON]:
        """Every item of a document list: the server answers a page at a time, each naming the next (`next`)."""
        items: list[JSON] = []
        after: str | None = None
        while True:
            page = await self._json("GET", f"/v1/{collection}", query=_query(limit=page_size, after=after))
            items.extend(page[collection])
            after = page.get("next")
            if not after:
                return items

    async def _json(self, method: str, path: str, *, body: Any = None, query: Mapping[str, str] | None = None) -> JSON:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = self._base.with_path(self._prefix + path, encoded=True).with_query(query or None)
        async with self._session.request(
            method, url, json=body, headers=self._headers, timeout=self._timeout
        ) as response:
            text = await response.text(errors="replace")
            status = response.status
        try:
            decoded: Any = json.loads(text)
        except ValueError:
            decoded = None
        if status >= 400:
            raise _api_error(method, url, status, decoded, text)
        if not isinstance(decoded, dict):
            raise BeaconAPIError(method, url, status, "bad_response", f"not a JSON object: {text[:200]!r}", None)
        return decoded


def _api_error(method: str, url: URL, status: int, decoded: Any, text: str) -> BeaconAPIError:
    error = decoded.get("error") if isinstance(decoded, dict) else None
    if isinstance(error, dict):
        path = error.get("path")
        return BeaconAPIError(
            method,
            url,
            status,
            str(error.get("code") or "error"),
            str(error.get("message") or ""),
            None if path is None else str(path),
        )
    # Not Beacon's error body (a proxy's page, say): keep its start as the message.
    return BeaconAPIError(method, url, status, "http_error", " ".join(text.split())[:200] or "(empty body)", None)


def _path(collection: str, item_id: str, sub: str | None = None, *, action: str | None = None) -> str:
    """`/v1/<collection>/<id>[/<sub>][:<action>]`, the id percent-encoded (a `/` in it cannot split the path)."""
    path = f"/v1/{collection}/{quote(item_id, safe='')}"
    if sub is not None:
        path += f"/{sub}"
    if action is not None:
        path += f":{action}"
    return path


def _id_of(document: Mapping[str, Any], given: str | None) -> str:
    found = given if given is not None else document.get("id")
    if not isinstance(found, str) or not found:
        raise ValueError('give the id, or a document with an "id"')
    return found


def _query(**params: object) -> dict[str, str]:
    return {name: str(value) for name, value in params.items() if value is not None}


def _body(**fields: object) -> JSON:
    return {name: value for name, value in fields.items() if value is not None}
