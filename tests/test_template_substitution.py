"""A text-and-names template is filled in without Jinja, with exactly Jinja's result."""

from __future__ import annotations

import pytest

from massmailer.template_substitution import substitution_pieces
from massmailer.templates import (
    _HTML,
    _PLAIN,
    TemplateError,
    TemplateSource,
    compile_template,
)

VALUES = [
    "Ada",
    "",
    "<b>Bold</b> & 'quoted' \"double\"",
    "{{ not_a_tag }} {% if x %}",
    "line\nbreak\r\n\ttab",
    "Zoë 😀 \u202e",
    "x" * 5000,
]

SOURCES = [
    "Hello {{ name }},\n\nbye\n",
    "{{ name }}",
    "{{name}}{{ other }}",
    '<p>{{ name }}</p><a href="{{ other }}">&amp; raw</a>',
    "no names at all",
    "",
    "{{ name }} and {{ name }} again",
    "{%- raw %}{{ kept }}{% endraw %} {{ name }}",
]


def jinja_render(part: str, source: str, variables: dict) -> str:
    environment = _HTML if part == "html" else _PLAIN
    return "".join(environment.from_string(source).generate(variables))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("value", VALUES)
def test_the_result_is_jinjas_in_text_and_escaped_html(source: str, value: str) -> None:
    variables = {"name": value, "other": value[::-1]}
    template = compile_template(TemplateSource(subject=source, text=source, html=source))
    assert all(substitution_pieces(env, source) is not None for env in (_HTML, _PLAIN)), (
        "these sources are plain substitutions"
    )
    rendered = template.render(variables)
    assert rendered.subject == jinja_render("subject", source, variables)
    assert rendered.text == jinja_render("text", source, variables)
    assert rendered.html == jinja_render("html", source, variables)


@pytest.mark.parametrize(
    "source",
    [
        "{{ name | upper }}",
        "{{ user.name }}",
        "{{ name ~ '!' }}",
        "{% if name %}{{ name }}{% endif %}",
        "{% for x in items %}{{ x }}{% endfor %}",
        "{{ self }}",
        "{{ loop }}",
        "{{ 'literal' }}",
        "{% set name = 'x' %}{{ name }}",
    ],
)
def test_anything_more_than_names_goes_to_jinja(source: str) -> None:
    assert substitution_pieces(_PLAIN, source) is None


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"name": 3}, "Hi 3"),
        ({"name": 2.5}, "Hi 2.5"),
        ({"name": True}, "Hi True"),
        ({"name": None}, "Hi None"),
        ({"name": ["a", "b"]}, "Hi ['a', 'b']"),
    ],
)
def test_a_value_that_is_not_a_string_is_rendered_by_jinja(variables, expected) -> None:
    template = compile_template(TemplateSource(subject=None, text="Hi {{ name }}", html=None))
    assert template.render_part("text", variables) == expected


def test_a_missing_name_is_jinjas_error_naming_it() -> None:
    template = compile_template(TemplateSource(subject=None, text="Hi {{ name }}", html=None))
    with pytest.raises(TemplateError, match="missing variable: 'name' is undefined"):
        template.render_part("text", {"other": "x"})


def test_the_output_limit_holds_on_a_substitution() -> None:
    template = compile_template(
        TemplateSource(subject=None, text="{{ a }}{{ a }}", html=None), max_output_chars=10
    )
    assert template.render_part("text", {"a": "12345"}) == "1234512345"
    with pytest.raises(TemplateError, match="renders to more than 10 characters"):
        template.render_part("text", {"a": "123456"})
