"""Settings models read from environment variables: msgspec Structs whose fields declare their variables.

A settings model is a frozen `msgspec.Struct`. Each field is one variable, `BEACON_<FIELD>` unless its
`setting(...)` metadata names others, and carries its description, its bounds and, for a value in a small
language of its own (API keys, host lists), the function that parses it. `read` turns the variables' text
into the model: msgspec converts and checks each value against the field's type and bounds
(`strict=False` accepts `"8080"` for an int), and every refusal becomes one `ValidationError` naming the
variable. The same declarations give the configuration tables (`variables`, `markdown_table`), so the
documentation cannot drift from what is read.

Text conventions msgspec does not have are applied before it converts: an empty value means unset, a boolean
may also be `yes`/`on`/`no`/`off`, a choice matches in any case, and `_` may separate digits.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

from beacon.errors import ValidationError
from beacon.logs import REDACTED

PREFIX = "BEACON_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
M = TypeVar("M")
# A parser of a variable's text; its ValueError is the message the variable is refused with.
Parse = Callable[[str], Any]


def setting(
    description: str,
    *,
    env: str | tuple[str, ...] | None = None,
    parse: Parse | None = None,
    secret: bool = False,
    default: str | None = None,
    group: bool = False,
    ge: int | float | None = None,
    le: int | float | None = None,
) -> msgspec.Meta:
    """A field's metadata: what the variable means, its full name(s) when not `<prefix><FIELD>` (the first one set
    wins), a parser for a value in a language of its own, whether it is a secret (never quoted in an error), how
    to show its default when the field's value would mislead, and its bounds.

    A `group` field holds a model of its own (a Struct or a dataclass) whose variables are named
    `<prefix><FIELD>_<ITS FIELD>` (`env` names another prefix); unset ones keep the values of the group field's
    default."""
    names = (env,) if isinstance(env, str) else env
    extra = {"env": names, "parse": parse, "secret": secret, "default": default, "group": group}
    return msgspec.Meta(ge=ge, le=le, description=description, extra=extra)


@dataclass(frozen=True, slots=True)
class Variable:
    """One variable of a settings model."""

    path: tuple[str, ...]  # the fields it fills: a model's field, or a group's then the group model's field
    names: tuple[str, ...]  # the variable's names, the first one set wins
    description: str
    kind: str  # what the value is, in words ("a whole number from 0 to 65535")
    default: str  # the default, as the documentation shows it
    secret: bool
    parse: Parse | None
    annotation: Any  # the field's type with its constraints, as msgspec converts to


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    annotation: Any
    meta: msgspec.Meta
    default: Any  # the field's default value, or msgspec.NODEFAULT


@functools.cache
def variables(model: type, prefix: str = PREFIX) -> tuple[Variable, ...]:
    """The variables of `model` (a Struct or a dataclass), in the order its fields are declared, a group's in
    its place."""
    return _variables(model, prefix, None)


def _variables(model: type, prefix: str, defaults: Any) -> tuple[Variable, ...]:
    """The variables of `model`; `defaults` is the instance whose values a group's unset variables keep."""
    found: list[Variable] = []
    for field in _fields(model):
        extra = field.meta.extra or {}
        default = getattr(defaults, field.name) if defaults is not None else field.default
        if extra["group"]:
            inner_prefix = extra["env"][0] if extra["env"] else prefix + field.name.upper() + "_"
            for variable in _variables(_base(field.annotation), inner_prefix, default):
                description = f"{field.meta.description}: {variable.description}"
                found.append(dataclasses.replace(variable, path=(field.name, *variable.path), description=description))
            continue
        found.append(
            Variable(
                path=(field.name,),
                names=extra["env"] or (prefix + field.name.upper(),),
                description=field.meta.description or "",
                kind=_kind(field.annotation, parsed=extra["parse"] is not None),
                default=extra["default"] or _shown_default(default, field.name),
                secret=extra["secret"],
                parse=extra["parse"],
                annotation=field.annotation,
            )
        )
    return tuple(found)


@functools.cache
def _fields(model: type) -> tuple[_Field, ...]:
    """The fields of `model` that carry `setting(...)` metadata, with their defaults."""
    info = mi.type_info(model)
    assert isinstance(info, mi.StructType | mi.DataclassType), model
    hints = typing.get_type_hints(model, include_extras=True)
    found = []
    for field in info.fields:
        meta = _setting_meta(hints[field.name])
        if meta is None:
            continue  # not read from the environment (a value another field's variable fills, a test's hook)
        default = field.default_factory() if field.default_factory is not msgspec.NODEFAULT else field.default
        found.append(_Field(field.name, hints[field.name], meta, default))
    return tuple(found)


def names(model: type) -> frozenset[str]:
    """Every variable name `model` reads."""
    return frozenset(name for variable in variables(model) for name in variable.names)


def setting_in(variable: Variable, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(name, text) of the first of the variable's names that `env` sets (an empty value is unset), or None."""
    return next(((name, env[name]) for name in variable.names if (env.get(name) or "").strip()), None)


def read(model: type[M], env: Mapping[str, str], **fixed: Any) -> M:
    """`model` from the variables in `env` (`fixed` fields given as they are); a variable that is unset or empty
    keeps its field's default. Refuses the first bad variable with a `ValidationError` naming it."""
    values: dict[str, Any] = {}
    kind: type = model
    for variable in variables(kind):
        found = setting_in(variable, env)
        if found is not None:
            node = values
            for key in variable.path[:-1]:
                node = node.setdefault(key, {})
            node[variable.path[-1]] = _value(variable, found[0], found[1].strip())
    return model(**{**_assemble(model, values, None), **fixed})


def _assemble(model: type, values: dict[str, Any], defaults: Any) -> dict[str, Any]:
    """`values` with each group's set values turned into a copy of the group's default that has them."""
    for field in _fields(model):
        if (field.meta.extra or {})["group"] and field.name in values:
            default = getattr(defaults, field.name) if defaults is not None else field.default
            inner = _assemble(_base(field.annotation), values[field.name], default)
            values[field.name] = _replace(default, inner)
    return values


def _replace(instance: Any, changes: dict[str, Any]) -> Any:
    if isinstance(instance, msgspec.Struct):
        return msgspec.structs.replace(instance, **changes)
    return dataclasses.replace(instance, **changes)


def _value(variable: Variable, name: str, raw: str) -> Any:
    """The value of one variable's text, or a `ValidationError` naming the variable."""
    shown = "the value" if variable.secret else repr(raw)
    if variable.parse is not None:
        try:
            return variable.parse(raw)
        except ValueError as exc:
            # A parser may quote what it refused; a secret's text never appears in an error.
            message = str(exc).replace(raw, REDACTED) if variable.secret else str(exc)
            raise ValidationError(message or f"{shown} is not valid", path=name) from None
    base = _base(variable.annotation)
    if base in (int, float):
        # The text is read here, strictly (msgspec's lax mode would take `1e3`, `+5` or `null`); msgspec checks
        # the bounds.
        number = _number(raw, base)
        if number is None:
            raise ValidationError(f"{shown} is not {_NOUNS[base]}", path=name)
        try:
            return msgspec.convert(number, variable.annotation)
        except msgspec.ValidationError:
            bounds = _bounds(_constraints(variable.annotation), "a number")
            raise ValidationError(f"{_shown_number(number)} is out of range: use {bounds}", path=name) from None
    try:
        return msgspec.convert(_lax(raw, variable.annotation), variable.annotation, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ValidationError(_refusal(shown, variable.annotation, str(exc)), path=name) from None


_NOUNS = {int: "a whole number", float: "a decimal number"}
# Decimal digits, `_` allowed between them (ASCII only: `str.isdigit` takes other scripts' digits too).
_WHOLE = re.compile(r"-?[0-9]+(_[0-9]+)*")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?|\.[0-9]+")


def _number(text: str, base: type) -> int | float | None:
    """The number `text` spells, or None when it is not one in the form the variable takes."""
    if base is int:
        return int(text.replace("_", "")) if _WHOLE.fullmatch(text) else None
    return float(text) if _DECIMAL.fullmatch(text) else None


def _shown_number(value: int | float) -> str:
    """A number as a person writes it: `3600000`, `0.5`, never `3.6e+06`."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _lax(raw: str, annotation: Any) -> Any:
    """The text as msgspec should see it: the words Beacon takes for booleans, a choice in its declared spelling."""
    base = _base(annotation)
    if base is bool:
        word = raw.lower()
        return "true" if word in TRUE_WORDS else "false" if word in FALSE_WORDS else raw
    if typing.get_origin(base) is typing.Literal:
        return next((option for option in typing.get_args(base) if str(option).lower() == raw.lower()), raw)
    return raw


def _refusal(shown: str, annotation: Any, library_message: str) -> str:
    """Why a value was refused, in words that say what to write instead."""
    base = _base(annotation)
    if base is bool:
        return f"{shown} is not a boolean: use {', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS)}"
    if typing.get_origin(base) is typing.Literal:
        return f"{shown} is not one of {', '.join(map(str, typing.get_args(base)))}"
    # msgspec's own words, less the path (the variable is named instead).
    return f"{shown}: {library_message.split(' - at `', 1)[0]}"


def _bounds(constraints: mi.IntType | mi.FloatType | None, noun: str) -> str:
    low = constraints.ge if constraints is not None else None
    high = constraints.le if constraints is not None else None
    if low is not None and high is not None:
        return f"{noun} from {_shown_number(low)} to {_shown_number(high)}"
    if low is not None:
        return f"{noun} >= {_shown_number(low)}"
    if high is not None:
        return f"{noun} <= {_shown_number(high)}"
    return noun


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(kind)


def _setting_meta(annotation: Any) -> msgspec.Meta | None:
    """The `setting(...)` metadata of a field's annotation, if it has one."""
    for arg in typing.get_args(annotation)[1:] if typing.get_origin(annotation) is typing.Annotated else ():
        if isinstance(arg, msgspec.Meta) and arg.extra and "env" in arg.extra:
            return arg
    return None


def _base(annotation: Any) -> Any:
    """The type under `Annotated[...]` and `... | None`."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _base(args[0])
    return annotation


def _constraints(annotation: Any) -> mi.IntType | mi.FloatType | None:
    info = mi.type_info(annotation)
    if isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.UnionType):
        info = next((t for t in info.types if not isinstance(t, mi.NoneType)), info)
    return info if isinstance(info, mi.IntType | mi.FloatType) else None


def _kind(annotation: Any, *, parsed: bool) -> str:
    """What a variable's value is, in words, for the configuration tables."""
    if parsed:
        return "text"
    base = _base(annotation)
    if base is bool:
        return "boolean"
    if typing.get_origin(base) is typing.Literal:
        return "one of " + ", ".join(f"`{option}`" for option in typing.get_args(base))
    if base in (int, float):
        return _bounds(_constraints(annotation), "whole number" if base is int else "decimal number")
    return "path" if base is Path else "text"


_DURATIONS = ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1_000, "s"))


def _shown_default(default: Any, field: str) -> str:
    """A default as the documentation shows it (Markdown): unset, `true`, a number (with a duration in words for
    a `_ms` field)."""
    if default is msgspec.NODEFAULT or default is None:
        return "unset"
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if isinstance(default, int) and field.endswith("_ms") and default >= 1_000:
        unit = next((f"{default // size} {name}" for size, name in _DURATIONS if default % size == 0), None)
        return f"`{default}` ({unit})" if unit else f"`{default}`"
    return f"`{default}`"


def markdown_table(model: type) -> str:
    """The configuration table of `model`: one row per variable, as the README and docs show it."""
    rows = ["| variable | default | value | meaning |", "|---|---|---|---|"]
    for variable in variables(model):
        shown = " / ".join(f"`{name}`" for name in variable.names)
        kind = f"{variable.kind}; a secret (also `<NAME>_FILE`)" if variable.secret else variable.kind
        rows.append(f"| {shown} | {variable.default} | {kind} | {variable.description} |")
    return "\n".join(rows) + "\n"
