"""`{name}` templates (batchgen/templates.py): the syntax alone, case by case."""

from __future__ import annotations

import dataclasses
import re

import pytest

from batchgen.templates import (
    TEMPLATE_PATTERN,
    Template,
    as_text,
    parse_template,
    uses_variable_pattern,
)


@pytest.mark.parametrize(
    "text, pattern, names",
    [
        ("plain text", "plain text", ()),
        ("", "", ()),
        ("{product}", "{product}", ("product",)),
        ("a {product} on {light}", "a {product} on {light}", ("product", "light")),
        ("{a}{a}{b}", "{a}{a}{b}", ("a", "b")),  # each name once, in order of use
        ("{_x-1}", "{_x-1}", ("_x-1",)),
        ("{{literal}} {x}", "{{literal}} {x}", ("x",)),  # kept escaped for format_map
        ("{{literal}}", "{literal}", ()),  # no variables: the final text
        ("a }} b {{", "a } b {", ()),
        ("x{{}}y", "x{}y", ()),
    ],
)
def test_a_template_is_parsed_into_a_pattern_and_its_names(text, pattern, names):
    template = parse_template(text)
    assert template == Template(pattern, names)
    assert template.error is None


@pytest.mark.parametrize(
    "text, error",
    [
        ("a { b", "unmatched '{' in 'a { b' (write {{ for a {)"),
        ("a } b", "unmatched '}' in 'a } b' (write }} for a })"),
        ("{x} }", "unmatched '}' in '{x} }' (write }} for a })"),
        ("{}", "{} in '{}' is not a variable name"),
        ("{1st}", "{1st} in '{1st}' is not a variable name"),
        ("{a b}", "{a b} in '{a b}' is not a variable name"),
        ("{a.b}", "{a.b} in '{a.b}' is not a variable name"),
        ("{-a}", "{-a} in '{-a}' is not a variable name"),
    ],
)
def test_a_malformed_template_says_what_is_wrong(text, error):
    assert parse_template(text) == Template("", (), error)


def test_rendering_fills_the_variables_and_unescapes_braces():
    template = parse_template("{{id}} {product}-{take}")
    assert template.render({"product": "sneaker", "take": "2"}) == "{id} sneaker-2"
    assert parse_template("no {{vars}}").render({}) == "no {vars}"


def test_rendering_without_a_variable_raises_key_error_naming_it():
    with pytest.raises(KeyError) as missing:
        parse_template("{product} {light}").render({"product": "x"})
    assert missing.value.args == ("light",)


def test_a_template_cannot_be_changed_after_parsing():
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_template("{x}").pattern = "other"  # type: ignore[misc]


def test_parsing_is_cached():
    assert parse_template("{cached}") is parse_template("{cached}")


@pytest.mark.parametrize(
    "value, text",
    [
        ("text", "text"),
        ("", ""),
        (True, "true"),
        (False, "false"),
        (5, "5"),
        (0, "0"),
        (5.0, "5"),
        (2.5, "2.5"),
        (-1.0, "-1"),
        (["a", 1], '["a",1]'),
        ({"b": 1, "a": None}, '{"a":null,"b":1}'),
        (None, "null"),
    ],
)
def test_a_value_appears_in_text_as_a_person_would_write_it(value, text):
    assert as_text(value) == text


@pytest.mark.parametrize(
    "text, well_formed",
    [
        ("plain", True),
        ("", True),
        ("{x}-{take_2}-{a-b}", True),
        ("{{literal}} and }}", True),
        ("a { b", False),
        ("a } b", False),
        ("{}", False),
        ("{1st}", False),
        ("{a b}", False),
    ],
)
def test_the_schemas_template_pattern_agrees_with_the_parser(text, well_formed):
    assert bool(re.fullmatch(TEMPLATE_PATTERN, text)) is well_formed
    assert (parse_template(text).error is None) is well_formed


@pytest.mark.parametrize(
    "text, found",
    [
        ("{variant}", True),
        ("a {duration}s", True),
        ("{{variant}}", False),  # literal braces, not a variable
        ("{{{variant}}}", True),  # a literal brace, then the variable
        ("{{{{variant}}}}", False),
        ("{variants}", False),
        ("{ratio}", True),
        ("{other}", False),
    ],
)
def test_a_variable_naming_a_field_is_found_only_where_it_is_one(text, found):
    pattern = uses_variable_pattern(["variant", "duration", "ratio"])
    assert bool(re.search(pattern, text)) is found


@pytest.mark.parametrize("names", [["a-b"], ["1x"], [""]])
def test_only_plain_field_names_make_a_variable_pattern(names):
    with pytest.raises(AssertionError):
        uses_variable_pattern(names)
