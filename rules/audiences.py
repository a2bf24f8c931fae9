"""Audience expressions: the parsed tree of `{"union" | "intersect" | "exclude" | "sample": ...}` over
references (`"seg:<id>"`, `"aud:<id>"`) and nested expressions, checked for shape with the path of every
error. Whether a reference exists, and cycles, are checked against the stored audiences by the caller
(`api.routes_audiences`), which knows them; evaluation is `cep.audience_members`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from beacon.errors import ValidationError

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
_REF = re.compile(r"(seg|aud):(" + ID_PATTERN + ")")
MAX_DEPTH = 8
MAX_OPERANDS = 64
OPS = ("union", "intersect", "exclude", "sample")


@dataclass(frozen=True, slots=True)
class Ref:
    """A segment's (`seg`) or another audience's (`aud`) members; `path` is where it was written."""

    kind: str
    id: str
    path: str


@dataclass(frozen=True, slots=True)
class SetOp:
    """`union` / `intersect` of operands, or `exclude`: the first operand minus the others."""

    op: str
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """The users of `of` whose hash with `salt` (the defining audience's id) falls in `percent`."""

    of: Node
    percent: float
    salt: str


Node = Ref | SetOp | Sample


def parse_expression(raw: Any, audience_id: str, path: str = "expr", depth: int = 0) -> Node:
    """The expression at `path`, its shape checked (a ValidationError naming the first bad path)."""
    if isinstance(raw, str):
        match = _REF.fullmatch(raw)
        if match is None:
            raise ValidationError('a reference is "seg:<id>" or "aud:<id>"', path=path)
        return Ref(match.group(1), match.group(2), path)
    if depth >= MAX_DEPTH:
        raise ValidationError(f"expressions nest at most {MAX_DEPTH} levels", path=path)
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ValidationError(f"must be a reference or an object with exactly one of: {', '.join(OPS)}", path=path)
    ((op, body),) = raw.items()
    here = f"{path}.{op}"
    if op in ("union", "intersect"):
        return SetOp(op, _operands(body, audience_id, here, depth, minimum=1))
    if op == "exclude":
        if not isinstance(body, dict) or set(body) != {"from", "minus"}:
            raise ValidationError('must be {"from": <ref>, "minus": [<refs>]}', path=here)
        base = parse_expression(body["from"], audience_id, f"{here}.from", depth + 1)
        return SetOp(op, (base, *_operands(body["minus"], audience_id, f"{here}.minus", depth, minimum=0)))
    if op == "sample":
        if not isinstance(body, dict) or set(body) != {"of", "percent"}:
            raise ValidationError('must be {"of": <ref>, "percent": <0..100>}', path=here)
        percent = body["percent"]
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 < percent <= 100:
            raise ValidationError("must be a number above 0 and at most 100", path=f"{here}.percent")
        return Sample(parse_expression(body["of"], audience_id, f"{here}.of", depth + 1), float(percent), audience_id)
    raise ValidationError(f"unknown operation {op!r} (expected one of: {', '.join(OPS)})", path=here)


def _operands(raw: Any, audience_id: str, path: str, depth: int, minimum: int) -> tuple[Node, ...]:
    if not isinstance(raw, list) or not minimum <= len(raw) <= MAX_OPERANDS:
        raise ValidationError(f"must be a list of {minimum} to {MAX_OPERANDS} references or expressions", path=path)
    return tuple(parse_expression(item, audience_id, f"{path}[{i}]", depth + 1) for i, item in enumerate(raw))


def refs_of(node: Node) -> list[Ref]:
    """Every reference in an expression, in the order written."""
    if isinstance(node, Ref):
        return [node]
    if isinstance(node, Sample):
        return refs_of(node.of)
    return [ref for operand in node.operands for ref in refs_of(operand)]
