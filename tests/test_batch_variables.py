"""Intake's cheap checks, held to the slow paths they replace: Jinja's render, parse_address."""

from __future__ import annotations

import pytest

from massmailer.batches.addresses import parse_recipient
from massmailer.batches.subject import SubjectRenderer
from massmailer.batches.variables import (
    MAX_VARS_BYTES,
    MAX_VARS_DEPTH,
    MAX_VARS_ITEMS,
    STRICT_FILTERS,
    TemplateVariables,
    VariablesError,
    encode_variables,
    part_variables,
)
from massmailer.templates import (
    SAFE_FILTERS,
    TemplateError,
    TemplateSource,
    compile_template,
)
from massmailer.validation import ValidationError, parse_address

# (template, required names in order of first use, optional names)
CLASSIFIED = [
    ("Hello {{ name }}", ["name"], set()),
    ("{{ user.first }} {{ user['last'] }}", ["user"], set()),
    ("{{ name|default('friend') }} {{ nick|d }}", [], {"name", "nick"}),
    ("{% if vip %}{{ perk }}{% else %}{{ other }}{% endif %}", ["vip"], {"perk", "other"}),
    ("{% for item in items %}{{ item.name }} {{ sep }}{% endfor %}", ["items"], {"sep"}),
    ("{{ a if flag else b }}", ["flag"], {"a", "b"}),
    ("{{ x and y }} {{ p or q }}", ["x", "p"], {"y", "q"}),
    ("{{ promo is defined }} {{ n is none }}", [], {"promo", "n"}),
    ("{{ name|upper }} {{ tags|join(', ') }} {{ rows|length }}", ["name", "tags", "rows"], set()),
    ("{{ code|tojson }} {{ v|abs }} {{ items|map('upper')|list }}", [], {"code", "v", "items"}),
    ("{{ a ~ b }} {{ c + 1 }} {{ -d }}", ["a", "b", "c", "d"], set()),
    ("{{ a == 1 }} {{ 2 < b }} {{ 3 in c }} {{ e in [1] }}", ["a", "b", "c"], {"e"}),
    ("{{ s.upper() }} {{ f(g) }}", ["s", "f"], {"g"}),
    ("{% set greeting = salutation %}{{ greeting }}", [], {"salutation"}),
    ("{% set local = 1 %}{{ local }}", [], set()),
    ("{% if not off %}x{% endif %}", ["off"], set()),
]


@pytest.mark.parametrize(("source", "required", "optional"), CLASSIFIED)
def test_names_are_required_only_where_a_render_would_certainly_need_them(
    source, required, optional
):
    found = part_variables("text", source)

    assert list(found.required) == required
    assert found.optional == optional


@pytest.mark.parametrize(("source", "required", "optional"), CLASSIFIED)
def test_leaving_out_a_required_name_makes_the_real_render_fail_on_that_name(
    source, required, optional
):
    compiled = compile_template(TemplateSource("s", source, None))
    values = {"name": "n", "user": {"first": "a", "last": "b"}, "items": [], "tags": ["t"]}
    every = {n: values.get(n, 1) for n in [*required, *optional]}
    every |= {"s": "text", "f": str, "rows": [1]}
    for name in required:
        without = {k: v for k, v in every.items() if k != name}
        with pytest.raises(TemplateError, match=f"'{name}' is undefined"):
            compiled.render_part("text", without)


def test_every_strict_filter_still_raises_on_an_undefined_value():
    # If templates.py changes a filter, a name passed to it must not wrongly count as required.
    for name in sorted(STRICT_FILTERS & SAFE_FILTERS):
        compiled = compile_template(TemplateSource("s", f"{{{{ x|{name} }}}}", None))
        with pytest.raises(TemplateError, match="'x' is undefined"):
            compiled.render_part("text", {})


def test_the_first_missing_name_is_reported_with_its_part():
    needed = TemplateVariables(
        TemplateSource("Hi {{ name }}", "{{ code }} {{ name }}", "<p>{{ link }}</p>")
    )

    needed.check({"name": "a", "code": 1, "link": "x"})
    with pytest.raises(VariablesError) as missing_subject:
        needed.check({"code": 1, "link": "x"})
    with pytest.raises(VariablesError) as missing_html:
        needed.check({"name": "a", "code": 1})
    assert str(missing_subject.value) == "template subject: missing variable: 'name' is undefined"
    assert str(missing_html.value) == "template html: missing variable: 'link' is undefined"


def test_names_given_by_massmailer_are_not_asked_of_the_recipient():
    source = TemplateSource("Hi", "{{ unsubscribe_url }}", None)

    TemplateVariables(source, frozenset({"unsubscribe_url"})).check({})
    with pytest.raises(VariablesError):
        TemplateVariables(source).check({})


# --- bounds ----------------------------------------------------------------------------------


def test_variables_within_the_bounds_come_back_as_compact_json():
    assert encode_variables({"name": "Zoë", "n": [1, {"a": None}]}) == (
        '{"name":"Zoë","n":[1,{"a":null}]}'
    )


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        ({"bio": "x" * MAX_VARS_BYTES}, f"larger than {MAX_VARS_BYTES} bytes"),
        ({"bio": "é" * (MAX_VARS_BYTES // 2)}, f"larger than {MAX_VARS_BYTES} bytes"),
        # Zeros, so the list is over the item bound while still under the byte bound (an
        # object of that many keys would pass the byte bound first).
        ({"ids": [0] * (MAX_VARS_ITEMS + 1)}, f"more than {MAX_VARS_ITEMS} items"),
        ({"a": [[[["deep"]]]]}, f"deeper than {MAX_VARS_DEPTH} levels"),
        ({"n": float("nan")}, "NaN or Infinity"),
        ({"s": "\ud800"}, "valid Unicode"),
    ],
)
def test_variables_beyond_a_bound_are_refused_with_the_reason(variables, reason):
    with pytest.raises(VariablesError, match=reason):
        encode_variables(variables)


def test_the_deepest_allowed_nesting_is_accepted():
    assert encode_variables({"a": [[{"b": 1}]]}) == '{"a":[[{"b":1}]]}'


# --- the subject ---------------------------------------------------------------------------

SUBJECT_VALUES = [
    "Ann",
    "",
    "Zoë & <b>",
    42,
    -1.5,
    1e16,
    True,
    None,
    [1, "a"],
    {"k": "v"},
]


@pytest.mark.parametrize(
    "source",
    [
        "Hello {{ name }}",
        "{{ name }}",
        "{{name}}!{{ name }}",
        "Hi {{- name -}} .",
        "{# c #}{{ name }}",
    ],
)
@pytest.mark.parametrize("value", SUBJECT_VALUES, ids=repr)
def test_a_plain_subject_renders_exactly_as_jinja_renders_it(source, value):
    compiled = compile_template(TemplateSource(source, "x", None))
    fast = SubjectRenderer(compiled)

    assert fast.is_simple
    assert fast.render({"name": value}) == compiled.render_part("subject", {"name": value})


@pytest.mark.parametrize(
    "source", ["Hi {{ name|upper }}", "{% if a %}x{% endif %}", "{{ user.name }}", "{{ self }}"]
)
def test_any_other_subject_takes_the_sandboxed_render(source):
    compiled = compile_template(TemplateSource(source, "x", None))
    values = {"name": "ann", "a": 1, "user": {"name": "u"}}

    renderer = SubjectRenderer(compiled)

    assert not renderer.is_simple
    assert renderer.render(values) == compiled.render_part("subject", values)


def test_a_plain_subject_missing_its_variable_fails_like_the_render():
    compiled = compile_template(TemplateSource("Hello {{ name }}", "x", None))

    with pytest.raises(TemplateError) as fast:
        SubjectRenderer(compiled).render({})
    with pytest.raises(TemplateError) as slow:
        compiled.render_part("subject", {})
    assert str(fast.value) == str(slow.value)


# --- addresses ----------------------------------------------------------------------------

ADDRESSES = [
    "reader1@example.com",
    "First.Last+tag@Sub.Example.CO.uk",
    "o'brien@example.com",
    "a@b.c1",
    "x@1-2.example",
    "x@example.123",
    "x@localhost",
    "x@-bad.com",
    "x@bad-.com",
    ".x@example.com",
    "x..y@example.com",
    f"{'a' * 64}@example.com",
    f"{'a' * 65}@example.com",
    f"a@{'b' * 63}.com",
    f"a@{'b' * 64}.com",
    f"a@{'.'.join(['b' * 60] * 4)}.com",
    f"{'a' * 60}@{'.'.join(['b' * 61] * 3)}.com",
    "Ann <ann@example.com>",
    '"A, B" <ab@example.com>',
    " padded@example.com ",
    "user@exämple.com",
    "üser@example.com",
    '"quoted local"@example.com',
    "two@example.com,three@example.com",
    "line\n@example.com",
    "",
    42,
    None,
]


@pytest.mark.parametrize("value", ADDRESSES, ids=repr)
def test_the_fast_address_path_agrees_with_parse_address(value):
    try:
        expected = parse_address(value, "to")
    except ValidationError as exc:
        with pytest.raises(ValidationError) as fast:
            parse_recipient(value, "to")
        assert fast.value.message == exc.message
        return
    assert parse_recipient(value, "to") == expected


def test_variables_nested_beyond_the_interpreters_stack_are_refused_not_crashed():
    deep: dict = {}
    inner = deep
    for _ in range(100_000):
        inner["a"] = {}
        inner = inner["a"]

    with pytest.raises(VariablesError, match="nested deeper"):
        encode_variables(deep)
