"""Template checking and rendering for action params."""

from __future__ import annotations

import pytest

from rules.templates import find_template_errors, has_link, is_whole_template, render_text, render_value

CONTEXT = {
    "event": {"type": "pay", "ts": 1_700_000_000_000, "event_id": "e-1", "sku": "A1", "amount": 120.5, "ok": True},
    "profile": {"name": "Li", "tags": ["vip", "new"]},
    "user_id": "u-42",
    "rule_id": "r-1",
    "ruleset_id": "rs-1",
}


@pytest.mark.parametrize(
    "text",
    [
        "plain text",
        "{{event.sku}}",
        "{{ event.sku }}",
        "Hi {{profile.name}}, your order {{event.event_id}} at {{event.ts}}",
        "{{user_id}}/{{rule_id}}/{{ruleset_id}}/{{event.type}}",
        "{{event.商品}}",
        "closing braces alone }} are text",
    ],
)
def test_valid_templates_have_no_errors(text: str) -> None:
    assert find_template_errors(text) == []


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        ("{{foo}}", ['"{{foo}}" is not a template']),
        ("{{ user.name }}", ['"{{ user.name }}" is not a template']),
        ("{{event}}", ['"{{event}}" is not a template']),
        ("{{event.}}", ['"{{event.}}" is not a template']),
        ("{{}}", ['"{{}}" is not a template']),
        ("{{event.a b}}", ['"{{event.a b}}" is not a template']),
        ("{{user_id.x}}", ['"{{user_id.x}}" is not a template']),
        ("{{__class__}}", ['"{{__class__}}" is not a template']),
        ("hello {{event.sku", ['malformed template: "{{" without a matching "}}"']),
        ("{{event.sku}} and {{profile.x", ['malformed template: "{{" without a matching "}}"']),
        ("{{a}} {{b}}", ['"{{a}}" is not a template', '"{{b}}" is not a template']),
    ],
)
def test_invalid_templates_are_named(text: str, errors: list[str]) -> None:
    found = find_template_errors(text)
    assert [message.split(" (")[0] for message in found] == errors


def test_error_message_lists_the_allowed_roots() -> None:
    assert find_template_errors("{{x}}") == [
        '"{{x}}" is not a template (expected event.<name>, profile.<name>, user_id, rule_id, ruleset_id or link "https://...")'
    ]


def test_whole_template_renders_to_the_raw_value() -> None:
    assert render_text("{{event.amount}}", CONTEXT) == 120.5
    assert render_text("{{ event.ok }}", CONTEXT) is True
    assert render_text("{{profile.tags}}", CONTEXT) == ["vip", "new"]
    assert render_text("{{event.ts}}", CONTEXT) == 1_700_000_000_000


def test_whole_template_of_a_missing_value_renders_null() -> None:
    assert render_text("{{event.nope}}", CONTEXT) is None
    assert render_text("{{profile.nope}}", {"event": {}}) is None


def test_text_substitutes_values_as_text() -> None:
    text = "Hi {{profile.name}} ({{user_id}}): {{event.sku}} x {{event.amount}} ok={{event.ok}} tags={{profile.tags}}"
    assert render_text(text, CONTEXT) == 'Hi Li (u-42): A1 x 120.5 ok=true tags=["vip","new"]'


def test_missing_values_render_empty_inside_text() -> None:
    assert render_text("[{{event.nope}}]-[{{profile.nope}}]", CONTEXT) == "[]-[]"


def test_render_value_walks_objects_and_lists() -> None:
    params = {
        "amount": "{{event.amount}}",
        "lines": ["{{event.sku}}", "rule {{rule_id}} of {{ruleset_id}}", 7],
        "nested": {"who": "{{user_id}}", "flag": False, "none": None},
    }
    assert render_value(params, CONTEXT) == {
        "amount": 120.5,
        "lines": ["A1", "rule r-1 of rs-1", 7],
        "nested": {"who": "u-42", "flag": False, "none": None},
    }


def test_render_value_leaves_the_input_unchanged() -> None:
    params = {"sku": "{{event.sku}}", "list": ["{{user_id}}"]}
    render_value(params, CONTEXT)
    assert params == {"sku": "{{event.sku}}", "list": ["{{user_id}}"]}


def test_unknown_expressions_render_as_missing_not_as_attribute_access() -> None:
    # Regression guard: rendering must never reach Python attributes of context objects.
    assert render_text("{{event.__class__}}", {"event": object()}) is None
    assert render_text("x{{foo}}y", CONTEXT) == "xy"
    assert render_text("{{event.sku}}", {"event": "not a mapping"}) is None


def test_literal_text_and_non_strings_pass_through() -> None:
    assert render_value("no templates }} here", CONTEXT) == "no templates }} here"
    assert render_value(42, CONTEXT) == 42
    assert render_value(None, CONTEXT) is None


def test_is_whole_template() -> None:
    assert is_whole_template("{{event.x}}")
    assert not is_whole_template("{{event.x}} ")
    assert not is_whole_template("{{event.x}}{{event.y}}")


def test_links_are_literal_http_urls_and_render_through_the_maker() -> None:
    assert find_template_errors('go {{link "https://shop.example/x?a=1&b=2"}} now') == []
    assert find_template_errors('{{ link "http://shop.example" }}') == []
    for bad in ('{{link "ftp://x"}}', '{{link "https://"}}', "{{link https://x.example}}", '{{link "https://a b"}}'):
        assert find_template_errors(bad), bad
    minted: list[str] = []

    def maker(url: str) -> str:
        minted.append(url)
        return f"S{len(minted)}"

    text = 'a {{link "https://x.example/1"}} b {{link "https://x.example/2"}}'
    assert render_text(text, {"$link": maker}) == "a S1 b S2"
    assert minted == ["https://x.example/1", "https://x.example/2"]
    assert render_text(text, {}) == "a https://x.example/1 b https://x.example/2"  # nothing tracks: the URL
    assert has_link({"params": [text]}) and not has_link({"params": ["{{event.x}}"]})
