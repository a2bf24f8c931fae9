"""`{{event.sku}}`-style templates in action params: checked when a ruleset loads, rendered per firing.

The engine is a regex and dictionary look-ups only: no expressions, filters, code or attribute access
on Python objects, so a ruleset author can read nothing but the firing's own context:

- `{{event.<name>}}` — an attribute of the event that completed the pattern; `event.type`,
  `event.ts` and `event.event_id` name the event's own fields;
- `{{profile.<name>}}` — an attribute of the user's profile;
- `{{user_id}}`, `{{rule_id}}`, `{{ruleset_id}}`;
- `{{link "https://shop.example/sale"}}` — a tracked link: live, a short Beacon link per action and link
  whose click redirects there and records a `click` event (`cep.links`); the URL is a literal of the
  template (no template inside it), so a click can only ever go where the author wrote.

Spaces inside the braces are allowed (`{{ event.sku }}`). A string that is exactly one template renders
to the raw value (`"{{event.amount}}"` stays a number; a missing value becomes null); inside longer text
a value renders as text (strings as is, booleans `true`/`false`, lists and objects as JSON) and a
missing one as the empty string. There is no escape for a literal `{{`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

_TOKEN = re.compile(r"\{\{([^{}]*)\}\}")
_LINK = re.compile(r'link\s+"(https?://[^"\s/]+[^"\s]*)"', re.IGNORECASE)
_EXPRESSION = re.compile(r'(?:event|profile)\.[^\s{}]+|user_id|rule_id|ruleset_id|link\s+"[^"]*"')
_EXPECTED = 'expected event.<name>, profile.<name>, user_id, rule_id, ruleset_id or link "https://..."'
LINK_MAKER = "$link"  # the context entry that turns a link's URL into a tracked one (absent: the URL itself)
MAX_LINK = 2_048


def find_template_errors(text: str) -> list[str]:
    """Why `text` holds a template that cannot render (empty when it is fine)."""
    errors = []
    for token in _TOKEN.finditer(text):
        expression = token.group(1).strip()
        if not _EXPRESSION.fullmatch(expression):
            errors.append(f'"{token.group(0)}" is not a template ({_EXPECTED})')
        elif expression.startswith("link") and (_LINK.fullmatch(expression) is None or len(expression) > MAX_LINK):
            errors.append(f'"{token.group(0)}": a link is link "http(s)://host/..." (a literal URL, no spaces)')
    if "{{" in _TOKEN.sub("", text):
        errors.append('malformed template: "{{" without a matching "}}"')
    return errors


def has_link(value: Any) -> bool:
    """Whether any string in `value` (at any depth) holds a `{{link "..."}}` template."""
    if isinstance(value, str):
        return any(token.group(1).strip().startswith("link") for token in _TOKEN.finditer(value))
    if isinstance(value, Mapping):
        return any(has_link(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_link(item) for item in value)
    return False


def is_whole_template(text: str) -> bool:
    """Whether `text` is exactly one `{{...}}`, which renders to the raw value rather than text."""
    return _TOKEN.fullmatch(text) is not None


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """`value` with every template in its strings (at any depth of lists and objects) filled from `context`."""
    if isinstance(value, str):
        return render_text(value, context)
    if isinstance(value, Mapping):
        return {key: render_value(item, context) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [render_value(item, context) for item in value]
    return value


def render_text(text: str, context: Mapping[str, Any]) -> Any:
    """One string rendered: the raw value when `text` is exactly one template, else text."""
    whole = _TOKEN.fullmatch(text)
    if whole is not None:
        return _lookup(whole.group(1).strip(), context)
    if "{{" not in text:
        return text
    return _TOKEN.sub(lambda token: _as_text(_lookup(token.group(1).strip(), context)), text)


def _lookup(expression: str, context: Mapping[str, Any]) -> Any:
    # Unknown expressions render as missing: load-time validation reports them, rendering never fails.
    if not _EXPRESSION.fullmatch(expression):
        return None
    if expression.startswith("link"):
        found = _LINK.fullmatch(expression)
        if found is None:
            return None
        maker = context.get(LINK_MAKER)
        return maker(found.group(1)) if callable(maker) else found.group(1)
    root, _, name = expression.partition(".")
    if not name:
        return context.get(root)
    scope = context.get(root)
    return scope.get(name) if isinstance(scope, Mapping) else None


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


def compile_value(value: Any) -> Callable[[Mapping[str, Any]], Any]:
    """`render_value` specialised once per action: values without templates are returned as they are
    (shared, never mutated by the caller), so a firing renders only the strings that hold templates."""
    if isinstance(value, str):
        if "{{" not in value:
            return lambda context: value
        return lambda context: render_text(value, context)
    if isinstance(value, Mapping):
        if not _has_template(value):
            return lambda context: value
        parts = [(key, compile_value(item)) for key, item in value.items()]
        return lambda context: {key: part(context) for key, part in parts}
    if isinstance(value, (list, tuple)):
        if not _has_template(value):
            return lambda context: value
        items = [compile_value(item) for item in value]
        return lambda context: [item(context) for item in items]
    return lambda context: value


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value
    if isinstance(value, Mapping):
        return any(_has_template(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_template(item) for item in value)
    return False
