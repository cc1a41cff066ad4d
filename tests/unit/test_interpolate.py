"""Compose-style `${VAR}` interpolation."""

from __future__ import annotations

import pytest

from diplo.manifest.interpolate import InterpolationError, interpolate

ENV = {"NAME": "shop", "EMPTY": "", "B": "bee"}


def test_plain_dollar_name_is_replaced():
    assert interpolate("app-$NAME-1", ENV) == "app-shop-1"


def test_dollar_name_stops_at_the_first_non_name_character():
    assert interpolate("$NAME.local/$NAME-x", ENV) == "shop.local/shop-x"


def test_braced_name_is_replaced():
    assert interpolate("${NAME}x", ENV) == "shopx"


def test_text_without_dollar_is_unchanged():
    assert interpolate("plain {text} here", ENV) == "plain {text} here"


def test_a_lookup_function_may_be_given_instead_of_a_mapping():
    assert interpolate("${X}", lambda name: name.lower()) == "x"


def test_unset_braced_variable_raises_and_says_how_to_fix_it():
    with pytest.raises(InterpolationError, match=r"\$\{MISSING\} is not set") as exc:
        interpolate("${MISSING}", ENV)
    assert ".env" in str(exc.value)
    assert "${MISSING:-value}" in str(exc.value)


def test_unset_plain_variable_raises():
    with pytest.raises(InterpolationError, match=r"\$\{MISSING\} is not set"):
        interpolate("$MISSING", ENV)


def test_empty_variable_is_substituted_as_empty():
    assert interpolate("[${EMPTY}]", ENV) == "[]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${UNSET:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${NAME:-dflt}", "shop"),
        ("${UNSET:-}", ""),
    ],
)
def test_colon_dash_default_applies_when_unset_or_empty(text, expected):
    assert interpolate(text, ENV) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${UNSET-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${NAME-dflt}", "shop"),
    ],
)
def test_dash_default_applies_only_when_unset(text, expected):
    assert interpolate(text, ENV) == expected


def test_colon_question_raises_the_given_message_when_unset():
    with pytest.raises(InterpolationError, match=r"^\$\{UNSET\}: please set UNSET$"):
        interpolate("${UNSET:?please set UNSET}", ENV)


def test_colon_question_raises_when_empty():
    with pytest.raises(InterpolationError, match="must not be empty"):
        interpolate("${EMPTY:?must not be empty}", ENV)


def test_colon_question_without_message_says_the_variable_is_required():
    with pytest.raises(InterpolationError, match="UNSET is required"):
        interpolate("${UNSET:?}", ENV)


def test_colon_question_passes_a_set_value_through():
    assert interpolate("${NAME:?needed}", ENV) == "shop"


def test_question_raises_when_unset():
    with pytest.raises(InterpolationError, match="needed"):
        interpolate("${UNSET?needed}", ENV)


def test_question_accepts_an_empty_value():
    assert interpolate("[${EMPTY?needed}]", ENV) == "[]"


def test_double_dollar_is_a_literal_dollar():
    assert interpolate("cost: $$5 and $$NAME", ENV) == "cost: $5 and $NAME"


def test_double_dollar_before_brace_is_not_a_substitution():
    assert interpolate("$${NAME}", ENV) == "${NAME}"


def test_lone_dollar_is_kept():
    assert interpolate("5$ or $1 or end$", ENV) == "5$ or $1 or end$"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "x"),
        ({"B": "bee"}, "bee"),
        ({"A": "ay", "B": "bee"}, "ay"),
    ],
)
def test_nested_defaults(env, expected):
    assert interpolate("${A:-${B:-x}}", env) == expected


def test_default_is_not_evaluated_when_the_variable_is_set():
    # The default names an unset variable, but it is never needed.
    assert interpolate("${NAME:-${UNSET}}", ENV) == "shop"


def test_default_that_needs_an_unset_variable_raises():
    with pytest.raises(InterpolationError, match=r"\$\{UNSET\} is not set"):
        interpolate("${OTHER:-${UNSET}}", ENV)


def test_default_may_contain_a_literal_dollar():
    assert interpolate("${UNSET:-$$}", ENV) == "$"


def test_several_substitutions_in_one_string():
    assert interpolate("$NAME/${B}/${UNSET:-z}", ENV) == "shop/bee/z"


@pytest.mark.parametrize("text", ["${NAME", "x ${A:-${B}", "${"])
def test_unclosed_substitution_raises(text):
    with pytest.raises(InterpolationError, match="unclosed substitution"):
        interpolate(text, ENV)


@pytest.mark.parametrize("text", ["${}", "${1ABC}", "${NA ME}", "${NAME:+alt}", "${-x}"])
def test_invalid_substitution_raises_with_the_accepted_forms(text):
    with pytest.raises(InterpolationError, match="invalid substitution") as exc:
        interpolate(text, ENV)
    assert "$$ for a literal $" in str(exc.value)


def test_interpolation_error_is_a_value_error():
    assert issubclass(InterpolationError, ValueError)
