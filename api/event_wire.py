"""Validation of events at the edge (HTTP body, WebSocket frame, dry-run), into `cep.events.Event`."""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

from beacon.errors import ValidationError
from cep.events import Event
from cep.identities import ALIAS_TYPES, Alias

EVENT_FIELDS = ("user_id", "alias", "type", "ts", "event_id", "attrs")
ALIAS_FIELDS = ("type", "id")
# `<type>:<id>` names the user an unlinked alias's first event creates: it must fit a user id (128).
MAX_ALIAS_ID = 100
_EVENT_FIELD_SET = frozenset(EVENT_FIELDS)
# Braces would break the {u:<user>} Redis Cluster hash tag; control characters break logs.
_NOT_IN_ID = re.compile(r"[\x00-\x1f{}\ud800-\udfff]")
# A lone surrogate (JSON "\ud800") decodes to a str that cannot be encoded as UTF-8: the stream append
# would fail after validation. Checked only for non-ASCII strings.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_TYPE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_MIN_TS = 946_684_800_000  # 2000-01-01: anything earlier is a seconds-for-ms mistake
_MAX_TS = 4_102_444_800_000  # 2100-01-01
MAX_ATTRS = 64
# What msgpack (the stream's codec) can carry: a bigger integer would fail the append after validation.
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1


def check_identifier(value: Any, path: str, what: str, limit: int = 128) -> str:
    """A non-empty id of at most `limit` characters, safe inside a Redis hash tag."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{what} must be a non-empty string", path=path)
    if len(value) > limit:
        raise ValidationError(f"{what} longer than {limit} characters", path=path)
    if _NOT_IN_ID.search(value):
        raise ValidationError(f"{what} must not contain braces, control characters or lone surrogates", path=path)
    return value


def check_json_value(value: Any, path: str, depth: int = 0) -> None:
    """A JSON-compatible value (finite numbers, string keys, at most 4 levels deep)."""
    if not _json_ok(value, depth):
        _json_error(value, path, depth)


def _json_ok(value: Any, depth: int) -> bool:
    """check_json_value's test without building a path per value (paths are only for the error)."""
    kind = type(value)
    if kind is str:
        return value.isascii() or not _SURROGATE.search(value)
    if kind is bool or value is None:
        return True
    if kind is int:
        return bool(_MIN_INT <= value <= _MAX_INT)
    if kind is float:
        return math.isfinite(value)
    if depth >= 4:
        return False
    if kind is dict:
        return all(
            type(key) is str and _json_ok(key, depth) and _json_ok(item, depth + 1) for key, item in value.items()
        )
    if kind is list:
        return all(_json_ok(item, depth + 1) for item in value)
    return False


def _json_error(value: Any, path: str, depth: int) -> None:
    """Raise the error check_json_value reports, with the path of the first offending value."""
    if depth > 4:
        raise ValidationError("nested deeper than 4 levels", path=path)
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise ValidationError("must be valid Unicode (a lone surrogate is not)", path=path)
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _MIN_INT <= value <= _MAX_INT:
            raise ValidationError("integer out of range (-2**63 to 2**64 - 1)", path=path)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError("must be a finite number", path=path)
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _json_error(item, f"{path}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError("object keys must be strings", path=path)
            if _SURROGATE.search(key):
                raise ValidationError("object keys must be valid Unicode (a lone surrogate is not)", path=path)
            _json_error(item, f"{path}.{key}", depth + 1)
        return
    raise ValidationError(f"unsupported value of type {type(value).__name__}", path=path)


def parse_alias(obj: Any, path: str) -> Alias:
    """An alias `{"type": "openid" | "unionid" | "phone" | "member_id", "id": "..."}`."""
    if not isinstance(obj, dict):
        raise ValidationError('an alias must be an object {"type", "id"}', path=path)
    unknown = sorted(set(obj) - set(ALIAS_FIELDS), key=str)
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r} (expected: type, id)", path=f"{path}.{unknown[0]}")
    for required in ALIAS_FIELDS:
        if required not in obj:
            raise ValidationError("is required", path=f"{path}.{required}")
    if obj["type"] not in ALIAS_TYPES:
        raise ValidationError(f"type must be one of: {', '.join(ALIAS_TYPES)}", path=f"{path}.type")
    return Alias(obj["type"], check_identifier(obj["id"], f"{path}.id", "an alias id", MAX_ALIAS_ID))


def parse_event(obj: Any, path: str, now_ms: int, max_ahead_ms: int | None = None) -> Event:
    """Validate one wire event naming its user by `user_id` (dry-runs, backtests, item events); `ts` defaults
    to `now_ms`, `event_id` to a fresh UUID.

    With `max_ahead_ms`, a `ts` further ahead of `now_ms` is refused: one event stamped in 2099 would
    move its rules' watermarks there and make every real event of the user late.
    """
    event, alias = parse_ingest_event(obj, path, now_ms, max_ahead_ms)
    if alias is not None:
        prefix = f"{path}." if path else ""
        message = "only ingest (/v1/events, /v1/ingest) resolves aliases: give user_id"
        raise ValidationError(message, path=f"{prefix}alias")
    return event


def parse_ingest_event(obj: Any, path: str, now_ms: int, max_ahead_ms: int | None = None) -> tuple[Event, Alias | None]:
    """Validate one wire event that names its user by `user_id` or by `alias`; with an alias, the event's
    user_id is "" until the caller resolves the alias (`cep.identities.resolve`)."""
    if not isinstance(obj, dict):
        raise ValidationError("an event must be an object", path=path or None)
    prefix = f"{path}." if path else ""
    unknown = [] if obj.keys() <= _EVENT_FIELD_SET else sorted(set(obj) - _EVENT_FIELD_SET, key=str)
    if unknown:
        raise ValidationError(
            f"unknown field {unknown[0]!r} (expected one of: {', '.join(EVENT_FIELDS)})",
            path=f"{prefix}{unknown[0]}",
        )
    alias: Alias | None = None
    if "alias" in obj:
        if "user_id" in obj:
            raise ValidationError("give user_id or alias, not both", path=f"{prefix}alias")
        alias = parse_alias(obj["alias"], f"{prefix}alias")
        user_id = ""
    elif "user_id" not in obj:
        raise ValidationError("is required (or alias)", path=f"{prefix}user_id")
    else:
        user_id = check_identifier(obj["user_id"], f"{prefix}user_id", "user_id")
    if "type" not in obj:
        raise ValidationError("is required", path=f"{prefix}type")
    event_type = obj["type"]
    if not isinstance(event_type, str) or not _TYPE.fullmatch(event_type):
        raise ValidationError("type must be 1-64 characters of letters, digits, _ . : -", path=f"{prefix}type")
    ts = obj.get("ts", now_ms)
    if isinstance(ts, float) and ts.is_integer():
        ts = int(ts)
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise ValidationError("ts must be an integer (ms since the epoch)", path=f"{prefix}ts")
    if not _MIN_TS <= ts <= _MAX_TS:
        raise ValidationError("ts must be ms since the epoch between 2000 and 2100", path=f"{prefix}ts")
    if max_ahead_ms is not None and ts > now_ms + max_ahead_ms:
        raise ValidationError(
            f"ts is {ts - now_ms} ms ahead of the server clock (at most {max_ahead_ms} allowed: BEACON_MAX_FUTURE_MS)",
            path=f"{prefix}ts",
        )
    event_id = obj.get("event_id")
    event_id = uuid.uuid4().hex if event_id is None else check_identifier(event_id, f"{prefix}event_id", "event_id")
    attrs = obj.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise ValidationError("attrs must be an object", path=f"{prefix}attrs")
    if len(attrs) > MAX_ATTRS:
        raise ValidationError(f"more than {MAX_ATTRS} attributes", path=f"{prefix}attrs")
    check_json_value(attrs, f"{prefix}attrs")
    event = Event(event_id=event_id, user_id=user_id, type=event_type, ts=ts, attrs=attrs, received_ms=now_ms)
    return event, alias
