"""`KEY=value` files (`.env`, `env_file:`)."""

from __future__ import annotations

from diplo.manifest.envfile import parse_env_text


def values(text: str) -> dict[str, str]:
    parsed, problems = parse_env_text(text)
    assert problems == []
    return parsed


def test_simple_assignments():
    assert values("A=1\nB=two\n") == {"A": "1", "B": "two"}


def test_comments_and_blank_lines_are_skipped():
    assert values("# a comment\n\n   \n  # indented comment\nA=1\n") == {"A": "1"}


def test_export_prefix_is_accepted():
    assert values("export A=1\nexport  B=2") == {"A": "1", "B": "2"}


def test_spaces_around_key_and_value_are_trimmed():
    assert values("  A = hello world  ") == {"A": "hello world"}


def test_empty_value():
    assert values("A=") == {"A": ""}


def test_value_may_contain_equals_signs():
    assert values("URL=postgres://u:p@db/x?sslmode=off") == {
        "URL": "postgres://u:p@db/x?sslmode=off"
    }


def test_key_may_contain_dots_and_dashes():
    assert values("log.level=debug\nmy-key=1") == {"log.level": "debug", "my-key": "1"}


def test_later_assignment_wins():
    assert values("A=1\nA=2") == {"A": "2"}


def test_double_quotes_are_removed():
    assert values('A="hello world"') == {"A": "hello world"}


def test_single_quotes_are_removed():
    assert values("A='hello world'") == {"A": "hello world"}


def test_double_quoted_value_expands_newline_and_quote_escapes():
    assert values(r'A="line1\nline2 \"q\""') == {"A": 'line1\nline2 "q"'}


def test_single_quoted_value_is_literal():
    assert values(r"A='line1\nline2'") == {"A": r"line1\nline2"}


def test_inline_comment_after_space_ends_an_unquoted_value():
    assert values("A=value # the comment\nB=v\t# tab comment") == {"A": "value", "B": "v"}


def test_hash_without_preceding_space_is_part_of_the_value():
    assert values("COLOR=#fff\nTAG=a#b") == {"COLOR": "#fff", "TAG": "a#b"}


def test_hash_inside_quotes_is_part_of_the_value():
    assert values("A='x # not a comment'") == {"A": "x # not a comment"}


def test_inline_comment_after_a_quoted_value():
    assert values('A="a b" # comment') == {"A": "a b"}


def test_bad_lines_are_reported_with_their_line_numbers():
    text = "A=1\n\n# comment\nnot an assignment\nB=2\n1BAD=x\n=nokey\n"
    parsed, problems = parse_env_text(text)
    assert parsed == {"A": "1", "B": "2"}
    assert problems == [
        (4, "expected KEY=value"),
        (6, "expected KEY=value"),
        (7, "expected KEY=value"),
    ]


def test_empty_text_gives_nothing():
    assert parse_env_text("") == ({}, [])
