"""Template rendering: sandboxed, lenient about missing data, escaped in HTML."""

from __future__ import annotations

import pytest

from channels.templates import RenderError, Template, check_syntax, render

CONTEXT = {"user": {"first_name": "Ada", "id": "u1"}, "event": {"properties": {"total": 12.5}}}


def test_renders_every_field() -> None:
    fields = {
        "subject": "Hi {{ user.first_name }}",
        "data": {"total": "{{ event.properties.total }}"},
    }
    assert render(fields, CONTEXT) == {"subject": "Hi Ada", "data": {"total": "12.5"}}


def test_missing_values_render_empty() -> None:
    assert render({"title": "Hi {{ user.nickname }}!"}, CONTEXT) == {"title": "Hi !"}


def test_html_is_escaped_and_text_is_not() -> None:
    context = {"user": {"first_name": "<b>Ada</b>"}}
    out = render({"html": "{{ user.first_name }}", "text": "{{ user.first_name }}"}, context)
    assert out == {"html": "&lt;b&gt;Ada&lt;/b&gt;", "text": "<b>Ada</b>"}


def test_errors_name_the_field_and_line() -> None:
    with pytest.raises(RenderError) as raised:
        render({"body": "one\n{{ user.first_name + 1 }}"}, CONTEXT)
    assert (raised.value.field, raised.value.line) == ("body", 2)
    [err] = check_syntax({"data": {"x": "{% if %}"}})
    assert err.field == "data.x"


def test_sandbox_blocks_internals() -> None:
    with pytest.raises(RenderError, match=r"SecurityError|unsafe"):
        render({"text": "{{ user.first_name.__class__.__mro__[1].__subclasses__() }}"}, CONTEXT)


def test_a_template_needs_a_channel_and_valid_sections() -> None:
    with pytest.raises(ValueError, match="at least one channel"):
        Template.model_validate({})
    with pytest.raises(ValueError, match="html"):
        Template.model_validate({"email": {"subject": "x"}})
    template = Template.model_validate({"push": {"title": "t", "body": "b"}})
    assert template.channels() == ["push"]
    assert template.fields("push") == {"title": "t", "body": "b", "data": {}}
