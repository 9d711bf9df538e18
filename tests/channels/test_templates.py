"""Template rendering: sandboxed, lenient about missing data, escaped in HTML."""

from __future__ import annotations

import copy

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


# ---- the bounded sandbox: user data cannot make a template change it or blow it up --

BIO = "b" * 32_000
DATA = {
    "user": {"first_name": "Ada", "bio": BIO, "tags": ["a", "b"], "score": 4.256},
    "recommendations": [{"name": "Boots", "price": 80}, {"name": "Hat", "price": 12.5}],
}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ user.update({'x': 1}) }}{{ user.x }}", "'update' of 'dict' object is unsafe"),
        ("{{ user.tags.append('x') }}", "unsafe"),
        ("{{ 'a' * 10**8 }}", "'\\*' would make 100,000,000 characters"),
        ("{{ 10 ** (10 ** 10) }}", "'\\*\\*' would make an integer"),
        ("{{ 10 ** 10 ** 10 }}", "integer of 333 bits"),
        ("{{ user.first_name * 10**9 }}", "'\\*' would make 3,000,000,000"),
        ("{{ '%0999999999d' % 1 }}", "'%' would make 1,000,000,012"),
        ("{{ '%0999999999d' | format(1) }}", "'%' would make 1,000,000,012"),
        ("{{ 'x' | center(10**9) }}", "center would make 1,000,000,000"),
        ("{{ 'x' | indent(10**9) }}", "indent would make"),
        ("{{ user.bio | wordwrap(1, wrapstring='y' * 1000) }}", "wordwrap would make"),
        ("{{ user.bio | replace('', user.bio) }}", "replace would make 1,024,064,000"),
        ("{{ user.bio | join(user.bio) }}", "join would make"),
        ("{{ [1] | batch(10**9, 'x') | list }}", "batch would make"),
        ("{{ [1] | slice(10**9) | list }}", "slice would make"),
        ("{{ user.bio ~ user.bio ~ user.bio ~ user.bio }}", None),  # 128 KB: fine here
        ("{{ '{:>999999999}'.format(1) }}", "'format' of 'str' object is unsafe"),
        ("{{ user.first_name.ljust(10**9) }}", "'ljust' of 'str' object is unsafe"),
        ("{{ lipsum(10**9) }}", "'lipsum' is undefined"),
        ("{{ namespace(a=1) }}", "'namespace' is undefined"),
        # the rendered field: a loop printing a 32 KB trait 100,000 times
        ("{% for i in range(100000) %}{{ user.bio }}{% endfor %}", "the output would make"),
        (
            "{% set s %}{% for i in range(100000) %}{{ user.bio }}{% endfor %}{% endset %}{{ s }}",
            "the output would make",
        ),
        # nesting a value in itself, in a recursive macro, doubles it at each call
        (
            "{% macro f(x, n) %}{% if n %}{{ f([x, x], n - 1) }}{% else %}{{ x }}{% endif %}"
            "{% endmacro %}{{ f(user.bio, 60) }}",
            "a literal would make",
        ),
    ],
)
def test_templates_cannot_change_their_data_or_make_huge_values(
    text: str, message: str | None
) -> None:
    data = copy.deepcopy(DATA)
    for field in ("text", "html"):
        if message is None:
            assert len(render({field: text}, data)[field]) == 4 * len(BIO)
            continue
        with pytest.raises(RenderError, match=message) as raised:
            render({field: text}, data)
        assert raised.value.field == field
    assert data == DATA


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ user.first_name | default('friend') | title }}", "Ada"),
        ("{{ '%.2f' | format(user.score) }} {{ user.score | round(1) }}", "4.26 4.3"),
        ("{{ '%(first_name)s!' % user }}", "Ada!"),
        ("{{ user.bio | truncate(10) }}", "bbbbbbb..."),
        ("{{ user.tags | join(', ') }}|{{ 'ab' | center(6) }}|", "a, b|  ab  |"),
        ("{{ 'a\nb' | indent(2) }}", "a\n  b"),
        ("{{ 'one two three' | wordwrap(7) }}", "one two\nthree"),
        ("{{ '<b>' | e }}", "&lt;b&gt;"),
        (
            "{% for row in recommendations | batch(1) %}{% for item in row %}"
            "{{ item.name }} £{{ '%.2f' | format(item.price) }}{{ ', ' if not loop.last }}"
            "{% endfor %}{{ cycler('', ';').next() }}{% endfor %}",
            "Boots £80.00Hat £12.50",
        ),
        ("{% for i in range(3) %}{{ i }}{% endfor %}", "012"),
        ("{{ user.first_name ~ '!' }} {{ user.first_name[:2] }}", "Ada! Ad"),
        ("{{ (user.bio * 30) | length }}", "960000"),  # an HTML email's worth is fine
    ],
)
def test_ordinary_templates_still_render(text: str, expected: str) -> None:
    assert render({"text": text}, DATA) == {"text": expected}


def test_deploy_reports_filters_templates_do_not_offer() -> None:
    [error] = check_syntax({"body": "{{ user | pprint }}", "title": "{{ user.first_name | e }}"})
    assert (error.field, error.reason) == ("body", "No filter named 'pprint'.")
