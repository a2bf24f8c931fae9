"""Request bodies: JSON or msgpack by Content-Type, size-limited, decode errors as DecodeError."""

from __future__ import annotations

import json
from typing import Any

import msgpack
from aiohttp import web

from beacon.errors import DecodeError, TooLargeError, ValidationError

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


async def read_body(request: web.Request) -> Any:
    """The decoded body; JSON unless the Content-Type names msgpack."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise TooLargeError(f"body larger than {request.app._client_max_size} bytes", path="body") from exc
    if not raw:
        raise DecodeError("empty body", path="body")
    return decode_payload(raw, request.content_type)


def object_with_fields(body: Any, allowed: tuple[str, ...], path: str = "") -> dict[str, Any]:
    """`body` (or the object at `path` inside it) holding no field outside `allowed` (a 422 naming the first
    stray one)."""
    if not isinstance(body, dict):
        raise ValidationError(f"{path or 'body'} must be an object", path=path or "body")
    unknown = sorted(set(body) - set(allowed), key=str)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise ValidationError(f"unknown field {unknown[0]!r} (expected one of: {', '.join(allowed)})", path=where)
    return body


def decode_payload(raw: bytes | str, content_type: str) -> Any:
    """Decode a body as msgpack (by content type) or JSON."""
    return decode_bytes(raw, binary=content_type in MSGPACK_TYPES, path="body", what="body")


def decode_bytes(raw: bytes | str, *, binary: bool, path: str, what: str) -> Any:
    """msgpack when `binary`, else JSON (NaN and Infinity refused); DecodeError naming `what` failed."""
    if binary:
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:
            raise DecodeError(f"{what} is not valid msgpack: {exc}", path=path) from exc
    try:
        if not isinstance(raw, str):
            raw = raw.decode(json.detect_encoding(raw), "surrogatepass")  # what json.loads does with bytes
        return _JSON.decode(raw)
    except DecodeError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{what} is not valid JSON: {exc}", path=path) from exc
    except RecursionError:
        # The parser recurses per nesting level: a 10,000-deep array must be a 400, not a 500.
        raise DecodeError(f"{what} is nested too deeply", path=path) from None


def _reject_constant(name: str) -> Any:
    # Raised as ValueError's sibling: decode_bytes re-labels it with the caller's path.
    raise ValueError(f"{name} is not valid JSON")


# One decoder: json.loads with any keyword builds a JSONDecoder per call (a backtest decodes a line per event).
_JSON = json.JSONDecoder(parse_constant=_reject_constant)
