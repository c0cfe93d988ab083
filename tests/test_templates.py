"""Batch templates: rendering, escaping, strict variables and the sandbox (pure, no services)."""

from __future__ import annotations

import time

import pytest

from massmailer.templates import (
    MAX_VALUE_CHARS,
    TemplateBudgetError,
    TemplateError,
    TemplateSource,
    compile_template,
)


def render(subject="", text=None, html=None, max_output_chars=1_000_000, **variables):
    compiled = compile_template(TemplateSource(subject, text, html), max_output_chars)
    return compiled.render(variables)


def test_each_part_is_filled_in_with_the_recipients_variables():
    rendered = render(
        "Hi {{ name }}",
        "Your order {{ order.id }}: {% for i in items %}{{ i }}{% if not loop.last %}, {% endif %}"
        "{% endfor %}",
        "<p>{{ name|upper }}</p>",
        name="Ann",
        order={"id": 7},
        items=["tea", "cake"],
    )

    assert rendered.subject == "Hi Ann"
    assert rendered.text == "Your order 7: tea, cake"
    assert rendered.html == "<p>ANN</p>"


def test_html_escapes_variables_and_text_keeps_them_as_given():
    rendered = render(
        "{{ v }}", "{{ v }}", '<a title="{{ v }}">{{ v }}</a>', v='<b onclick="x">&</b>'
    )

    assert rendered.subject == '<b onclick="x">&</b>'
    assert rendered.text == '<b onclick="x">&</b>'
    assert rendered.html == (
        '<a title="&lt;b onclick=&#34;x&#34;&gt;&amp;&lt;/b&gt;">'
        "&lt;b onclick=&#34;x&#34;&gt;&amp;&lt;/b&gt;</a>"
    )


def test_only_the_asked_parts_are_rendered():
    compiled = compile_template(TemplateSource("{{ a }}", "{{ b }}", None))

    rendered = compiled.render({"b": 1}, ("text", "html"))

    assert (rendered.subject, rendered.text, rendered.html) == (None, "1", None)


@pytest.mark.parametrize(
    ("template", "variables", "message"),
    [
        ("{{ name }}", {}, "missing variable: 'name' is undefined"),
        (
            "{{ user.name }}",
            {"user": {}},
            "missing variable: 'dict object' has no attribute 'name'",
        ),
        ("{% for x in items %}{% endfor %}", {}, "missing variable: 'items' is undefined"),
        ("{{ name ~ '!' }}", {}, "missing variable: 'name' is undefined"),
    ],
)
def test_a_missing_variable_is_an_error_naming_it(template, variables, message):
    with pytest.raises(TemplateError) as caught:
        render(text=template, **variables)

    assert (caught.value.part, caught.value.message) == ("text", message)


def test_a_missing_variable_with_a_default_is_fine():
    assert render(text="Hi {{ name|default('there') }}").text == "Hi there"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ x.__class__ }}",
        "{{ x.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ lipsum.__globals__ }}",
        "{{ namespace }}",
        "{{ range(10) }}",
        "{{ config }}",
        "{{ request }}",
        "{{ items.append(1) }}",
        "{{ items.pop() }}",
        "{{ d.update({'a': 1}) }}",
        "{{ d.clear() }}",
        "{{ 'x'.ljust(1000000000) }}",
        "{{ 'x'.zfill(1000000000) }}",
        "{{ 'x'.replace('x', 'yy') }}",
        "{{ 'x'.format(x) }}",
        "{{ '{:>1000000000}'.format(x) }}",
        "{{ '{}'.format_map(d) }}",
        "{{ (5).to_bytes(1000000000, 'big') }}",
        "{{ 'x' * 1000000000 }}",
        "{{ items * 1000000000 }}",
        "{{ 9 ** 999999 }}",
        "{{ ('a' * 1000)|replace('a', 'b' * 1000) }}",
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    ],
)
def test_the_sandbox_refuses_internals_mutation_and_huge_values(template):
    with pytest.raises(TemplateError):
        render(text=template, x="s", items=[1, 2], d={"k": 1})


@pytest.mark.parametrize(
    "template",
    [
        "{{ x|center(1000000000) }}",
        "{{ x|indent(1000000000) }}",
        "{{ '%s'|format(x) }}",
        "{{ items|batch(1000000000, 'fill') }}",
        "{{ items|random }}",
        "{{ x|attr('__class__') }}",
        "{% if %}",
        "{{ x",
        "{% for %}",
    ],
)
def test_unsafe_filters_and_bad_syntax_are_refused_when_compiled(template):
    with pytest.raises(TemplateError) as caught:
        compile_template(TemplateSource("ok", template, None))

    assert caught.value.part == "text"


def test_a_syntax_error_names_the_part_and_line():
    with pytest.raises(TemplateError) as caught:
        compile_template(TemplateSource("fine", None, "<p>\n{% if x %}"))

    assert caught.value.part == "html"
    assert caught.value.message.startswith("syntax error on line 2:")


def test_output_beyond_the_limit_is_stopped_while_it_is_produced():
    template = "{% for a in items %}{% for b in items %}{{ big }}{% endfor %}{% endfor %}"

    with pytest.raises(TemplateError, match="renders to more than 5000 characters"):
        render(text=template, max_output_chars=5000, items=list(range(100)), big="x" * 100)


def test_repetition_up_to_the_limit_is_allowed():
    assert len(render(text=f"{{{{ 'x' * {MAX_VALUE_CHARS} }}}}").text) == MAX_VALUE_CHARS


def test_replace_filter_works_within_the_limit_in_text_and_html():
    rendered = render(text="{{ s|replace('a', 'b') }}", html="{{ s|replace('a', '<') }}", s="aXa")

    assert (rendered.text, rendered.html) == ("bXb", "&lt;X&lt;")


def test_variables_lists_the_names_a_part_uses():
    compiled = compile_template(
        TemplateSource("{{ a }}", "{% for i in items %}{{ i }}{{ b.c }}{% endfor %}", None)
    )

    assert compiled.variables("subject") == {"a"}
    assert compiled.variables("text") == {"items", "b"}
    assert compiled.variables("html") == set()


# --- the render budget, enforced inside the render ------------------------------------------

BUDGET_BOMBS = [
    "{% set a = 'xxxxxxxxxx' %}" + "{% set a = a ~ a %}" * 30 + "{{ a|length }}",
    "{% set a = 'xxxxxxxxxx' %}" + "{% set a = a + a %}" * 30 + "{{ a|length }}",
    "{% set a = ['x'] %}" + "{% set a = a + a %}" * 30 + "{{ a|length }}",
    "{% for a in xs %}{% for b in xs %}{{ '' }}{% endfor %}{% endfor %}",
    "{% for a in xs %}{% for b in xs if b < 0 %}{% endfor %}{% endfor %}",
    "{% for a in xs %}{% for b in xs %}{% set c = a %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "{% set x %}{{ 'y' * 100000 }}{% endset %}"
    + "{% set x %}{{ x }}{{ x }}{% endset %}" * 20
    + "{{ x|length }}",
    "{% set s = 'x' * 100000 %}{{ ([s] * 100000)|join }}",
    "{% set s = 'x' * 100000 %}{{ [s] * 100000 }}",
    "{% set s = 'x' * 100000 %}{{ ([s] * 100000)|string|length }}",
    "{% set s = 'x' * 100000 %}{{ (([s] * 100000) ~ '')|length }}",
    "{{ xs|join('-' * 100000) }}",
    "{% set a = 'ab' * 50000 %}" + "{% set b = a|upper %}" * 200,
    "{% set s = 'x ' * 50000 %}{% for i in xs %}{% set p = s.split() %}{% endfor %}",
]


@pytest.mark.parametrize("template", BUDGET_BOMBS)
def test_a_template_over_its_budget_is_stopped_inside_the_render_within_a_second(template):
    started = time.process_time()
    with pytest.raises(TemplateBudgetError) as caught:
        render(text=template, xs=list(range(3000)))
    cpu = time.process_time() - started

    assert caught.value.part == "text"
    assert caught.value.message.startswith("too costly to render")
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"


@pytest.mark.parametrize(
    "template",
    [
        "{{ '%999999999s' % 'x' }}",
        "{% set a = 10 ** 64 %}{{ a ** 64 ** 64 }}",
        "{% set a = 10 ** 60 %}" + "{% set a = a * a %}" * 20,
        "{{ ([[1] * 1000] * 1000)|sum(start=[]) }}",
        "{{ items|sum(attribute='x') }}",
    ],
)
def test_amplifiers_outside_the_sandbox_operators_are_refused(template):
    with pytest.raises(TemplateError, match="not allowed"):
        render(text=template, items=[{"x": 1}])


def test_a_recursive_loop_is_refused_when_compiled():
    with pytest.raises(TemplateError, match="recursive loops are not allowed"):
        compile_template(TemplateSource("", "{% for x in xs recursive %}{% endfor %}", None))


def test_ordinary_templates_stay_well_inside_the_budget():
    rendered = render(
        "{{ name|title }}",
        "{% for i in items %}{{ loop.index }}. {{ i.name ~ ' x' ~ i.qty }} = {{ i.qty * 2 }}\n"
        "{% endfor %}{{ items|map(attribute='name')|join(', ') }} {{ [1, 2]|sum }} {{ 7 % 3 }}",
        "{% macro row(i) %}<li>{{ i.name }}</li>{% endmacro %}"
        "<ul>{% for i in items %}{{ row(i) }}{% endfor %}</ul>{{ name ~ '<b>' }}",
        name="ann <b>",
        items=[{"name": f"item{n}", "qty": n} for n in range(3000)],
    )

    assert rendered.subject == "Ann <B>"
    assert rendered.text.startswith("1. item0 x0 = 0\n2. item1 x1 = 2\n")
    assert rendered.text.endswith("item2998, item2999 3 1")
    assert rendered.html.count("<li>") == 3000
    assert rendered.html.endswith("ann &lt;b&gt;&lt;b&gt;")


def test_each_render_starts_with_a_fresh_budget():
    compiled = compile_template(
        TemplateSource("", "{% for a in xs %}{% for b in xs %}{% endfor %}{% endfor %}", None)
    )

    # 400 x 400 steps fits once; a budget carried over would refuse the later renders.
    for _ in range(5):
        assert compiled.render({"xs": list(range(400))}).text == ""
