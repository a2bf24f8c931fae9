"""Correlation values: how events (and journey instances) are grouped by equal attribute values."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def correlation_key(fields: tuple[str, ...], attrs: Mapping[str, Any]) -> str | None:
    """The correlation value of an event, or None when it lacks a field (it cannot correlate).

    A single short printable string or an integral number is kept as it is (readable in the user view,
    no hashing); anything else is hashed. The prefixes keep "3" and 3 apart; 3 and 3.0 meet.
    """
    if not fields:
        return "_"
    if len(fields) == 1:
        value = attrs.get(fields[0])
        if value is None:
            return None
        kind: type = type(value)
        if kind is str and len(value) <= 32 and value.isprintable():
            return "s" + str(value)
        if kind is int or (kind is float and value.is_integer()):
            return "i" + str(int(value))
    values = []
    for name in fields:
        value = attrs.get(name)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        values.append(value)
    return "h" + hashlib.blake2b(json.dumps(values, sort_keys=True).encode(), digest_size=8).hexdigest()
