"""Audience endpoints: PUT a static list (JSON ids, CSV or NDJSON, streamed) or an expression over segments
and audiences, GET (with size), list, members, DELETE. Storage and evaluation: `cep.audience_members`;
the expression language: `rules.audiences`. See docs/audiences.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

from api import keys, paging
from api.bodies import MSGPACK_TYPES, decode_bytes, object_with_fields, read_body
from api.event_wire import check_identifier
from api.middleware import requires
from api.routes_rulesets import ruleset_id_of
from beacon.errors import ConflictError, NotFoundError, TooLargeError, UnsupportedMediaError, ValidationError
from cep import audience_members
from cep.audience_members import EXPR, LIST, ListWriter
from rules.audiences import Node, Ref, parse_expression, refs_of
from rules.store import SEGMENTS, index_key

MEMBERS_PAGE_DEFAULT = 100
CSV_TYPES = ("text/csv",)
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")
READ_CHUNK = 1 << 16
MAX_LINE = 4096  # bytes in one uploaded line (an id is at most 128 characters)


@requires("rules")
async def put_audience(request: web.Request) -> web.Response:
    """Replace an audience: a static list or an expression, by content type."""
    audience_id = ruleset_id_of(request)
    settings = request.app[keys.SETTINGS]
    redis, now_ms = keys.redis(request), request.app[keys.CLOCK].now_ms()
    content_type = request.content_type
    if content_type in CSV_TYPES or content_type in NDJSON_TYPES:
        ids = _csv_ids(request) if content_type in CSV_TYPES else _ndjson_ids(request)
        size = await _write_list(request, audience_id, ids)
        return web.json_response({"id": audience_id, "kind": LIST, "size": size})
    if content_type not in ("application/json", *MSGPACK_TYPES):
        message = f"takes application/json, text/csv or application/x-ndjson, not {content_type!r}"
        raise UnsupportedMediaError(message, path="Content-Type")
    body = object_with_fields(await read_body(request), ("id", "ids", "expr"))
    if "id" in body and body["id"] != audience_id:
        raise ValidationError("must match the id in the URL", path="id")
    given = [name for name in ("ids", "expr") if name in body]
    if len(given) != 1:
        raise ValidationError('takes exactly one of "ids" (a list of user ids) or "expr" (an expression)', path="body")
    if given[0] == "ids":
        size = await _write_list(request, audience_id, _json_ids(body["ids"]))
        return web.json_response({"id": audience_id, "kind": LIST, "size": size})
    node = parse_expression(body["expr"], audience_id)
    stored = await audience_members.definitions(redis)
    await _check_refs(request, audience_id, node, stored)
    await audience_members.put_expression(redis, settings.partitions, audience_id, body["expr"], now_ms)
    stored[audience_id] = {"kind": EXPR, "expr": body["expr"]}
    size = await audience_members.size(redis, settings.partitions, audience_id, stored)
    return web.json_response({"id": audience_id, "kind": EXPR, "size": size})


async def _write_list(request: web.Request, audience_id: str, ids: AsyncIterator[str]) -> int:
    writer = ListWriter(keys.redis(request), request.app[keys.SETTINGS].partitions, audience_id)
    try:
        async for user_id in ids:
            if writer.received >= audience_members.MAX_IDS:
                raise TooLargeError(f"more than {audience_members.MAX_IDS} ids", path="body")
            await writer.add(user_id)
        return await writer.commit(request.app[keys.CLOCK].now_ms())
    except BaseException:
        await writer.abort()
        raise


async def _json_ids(raw: Any) -> AsyncIterator[str]:
    if not isinstance(raw, list):
        raise ValidationError("must be a list of user ids", path="ids")
    for index, value in enumerate(raw):
        yield check_identifier(value, f"ids[{index}]", "a user id")


async def _lines(request: web.Request) -> AsyncIterator[tuple[int, str]]:
    """The body's non-empty lines with their 1-based numbers, read in chunks (never whole)."""
    number, carry = 0, b""
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        carry += chunk
        *lines, carry = carry.split(b"\n")
        for line in lines:
            number += 1
            if text := _decoded(line, number):
                yield number, text
        if len(carry) > MAX_LINE:
            raise ValidationError(f"line {number + 1} is longer than {MAX_LINE} bytes", path=f"line[{number + 1}]")
    if text := _decoded(carry, number + 1):
        yield number + 1, text


def _decoded(line: bytes, number: int) -> str:
    if number == 1 and line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]  # a byte order mark, as spreadsheets write
    try:
        return line.rstrip(b"\r").decode()
    except UnicodeDecodeError:
        raise ValidationError(f"line {number} is not UTF-8", path=f"line[{number}]") from None


async def _csv_ids(request: web.Request) -> AsyncIterator[str]:
    """One id per line, optionally quoted; a first line `user_id` is a header."""
    first = True
    async for number, line in _lines(request):
        value = line
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
            if '"' in value.replace('""', ""):
                raise ValidationError(f"line {number}: a stray quote inside a quoted id", path=f"line[{number}]")
            value = value.replace('""', '"')
        elif "," in value or '"' in value:
            message = f"line {number}: one id per line (quote an id that holds a comma or a quote)"
            raise ValidationError(message, path=f"line[{number}]")
        if first and value == "user_id":
            first = False
            continue
        first = False
        yield check_identifier(value, f"line[{number}]", f"line {number}: a user id")


async def _ndjson_ids(request: web.Request) -> AsyncIterator[str]:
    """One `{"user_id": ...}` object per line."""
    async for number, line in _lines(request):
        path = f"line[{number}]"
        obj = object_with_fields(decode_bytes(line, binary=False, path=path, what=f"line {number}"), ("user_id",), path)
        if "user_id" not in obj:
            raise ValidationError(f'line {number}: an object with "user_id"', path=f"{path}.user_id")
        yield check_identifier(obj["user_id"], f"{path}.user_id", f"line {number}: user_id")


async def _check_refs(request: web.Request, audience_id: str, node: Node, stored: Mapping[str, Any]) -> None:
    """Every reference names a stored segment or audience, and none leads back to this audience."""
    redis = keys.redis(request)
    for ref in refs_of(node):
        if ref.kind == "seg":
            if not await redis.hexists(index_key(SEGMENTS), ref.id):
                raise ValidationError(f"no segment {ref.id!r}", path=ref.path)
            continue
        if ref.id == audience_id:
            raise ValidationError(f"aud:{audience_id} refers to itself", path=ref.path)
        if ref.id not in stored:
            raise ValidationError(f"no audience {ref.id!r}", path=ref.path)
        chain = _chain_to(ref.id, audience_id, stored, ())
        if chain is not None:
            loop = " -> ".join(f"aud:{step}" for step in (audience_id, *chain))
            raise ValidationError(f"a cycle: {loop}", path=ref.path)


def _chain_to(start: str, target: str, stored: Mapping[str, Any], seen: tuple[str, ...]) -> list[str] | None:
    """The audiences from `start` to `target` through stored expressions, or None."""
    if start == target:
        return [start]
    meta = stored.get(start)
    if start in seen or meta is None or meta["kind"] != EXPR:
        return None
    for ref in refs_of(parse_expression(meta["expr"], start)):
        if ref.kind == "aud":
            rest = _chain_to(ref.id, target, stored, (*seen, start))
            if rest is not None:
                return [start, *rest]
    return None


def _referrers(audience_id: str, stored: Mapping[str, Any]) -> list[str]:
    return sorted(
        other
        for other, meta in stored.items()
        if meta["kind"] == EXPR
        and any(r == Ref("aud", audience_id, r.path) for r in refs_of(parse_expression(meta["expr"], other)))
    )


@requires("rules")
async def list_audiences(request: web.Request) -> web.Response:
    """One page of the audiences, by id, with their kinds and sizes (an expression's computed now; `api.paging`)."""
    redis, partitions = keys.redis(request), request.app[keys.SETTINGS].partitions
    # Every definition is read (small metadata; an expression's size needs the audiences it names), but only
    # the page's sizes are computed.
    stored = await audience_members.definitions(redis)
    page = paging.page_of(stored, paging.page_request(request))
    items = [
        {
            "id": audience_id,
            "kind": stored[audience_id]["kind"],
            "size": await audience_members.size(redis, partitions, audience_id, stored),
            "updated_ms": stored[audience_id]["updated_ms"],
        }
        for audience_id in page.ids
    ]
    return paging.page_reply("audiences", items, page)


async def _stored(request: web.Request, audience_id: str) -> dict[str, dict[str, Any]]:
    stored = await audience_members.definitions(keys.redis(request))
    if audience_id not in stored:
        raise NotFoundError(f"no audience {audience_id!r}", path="id")
    return stored


@requires("rules")
async def get_audience(request: web.Request) -> web.Response:
    """One audience: its kind, its expression (if one), when stored, and its size now."""
    audience_id = ruleset_id_of(request)
    stored = await _stored(request, audience_id)
    meta = stored[audience_id]
    size = await audience_members.size(keys.redis(request), request.app[keys.SETTINGS].partitions, audience_id, stored)
    body: dict[str, Any] = {"id": audience_id, "kind": meta["kind"], "size": size}
    if meta["kind"] == EXPR:
        body["expr"] = meta["expr"]
    body.update(created_ms=meta["created_ms"], updated_ms=meta["updated_ms"])
    return web.json_response(body)


@requires("rules")
async def delete_audience(request: web.Request) -> web.Response:
    """Forget an audience and its lists; refused while another audience's expression names it."""
    audience_id = ruleset_id_of(request)
    stored = await _stored(request, audience_id)
    referrers = _referrers(audience_id, stored)
    if referrers:
        named = ", ".join(f"aud:{other}" for other in referrers)
        raise ConflictError(f"still referred to by {named}: change or delete them first", path="id")
    if not await audience_members.delete(keys.redis(request), request.app[keys.SETTINGS].partitions, audience_id):
        raise NotFoundError(f"no audience {audience_id!r}", path="id")
    return web.json_response({"id": audience_id, "deleted": True})


@requires("rules")
async def audience_members_page(request: web.Request) -> web.Response:
    """One page of an audience's members: `?cursor=` (from the previous page; none to start) and `?limit=`
    (1..1000, default 100; a hint)."""
    audience_id = ruleset_id_of(request)
    limit = paging.query_limit(request, MEMBERS_PAGE_DEFAULT, audience_members.MEMBERS_PAGE_MAX)
    cursor = request.query.get("cursor", "")
    stored = await _stored(request, audience_id)
    try:
        members, after = await audience_members.members_page(
            keys.redis(request), request.app[keys.SETTINGS].partitions, audience_id, stored, cursor, limit
        )
    except ValueError as exc:
        raise ValidationError(f"{exc}: pass the previous page's cursor, or none to start", path="cursor") from None
    return web.json_response({"members": members, "cursor": after})


def add_routes(app: web.Application) -> None:
    """Register the audience endpoints."""
    app.router.add_get("/v1/audiences", list_audiences)
    app.router.add_put("/v1/audiences/{id:[^/:]+}", put_audience)
    app.router.add_get("/v1/audiences/{id:[^/:]+}", get_audience)
    app.router.add_delete("/v1/audiences/{id:[^/:]+}", delete_audience)
    app.router.add_get("/v1/audiences/{id:[^/:]+}/members", audience_members_page)
