"""Human units in manifests: durations and sizes."""

from __future__ import annotations

import pytest

from diplo.units import parse_duration, parse_size

MIB = 1024**2
GIB = 1024**3


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("250ms", 0.25),
        ("500us", 0.0005),
        ("1.5s", 1.5),
        ("5S", 5.0),
        (" 10s ", 10.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration_accepts_unit_strings(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("number", "seconds"), [(0, 0.0), (10, 10.0), (2.5, 2.5)])
def test_parse_duration_accepts_bare_numbers_as_seconds(number, seconds):
    assert parse_duration(number) == seconds
    assert isinstance(parse_duration(number), float)


@pytest.mark.parametrize("text", ["", "10", "s", "5x", "1h 30m", "5s5", "-5s", "five seconds"])
def test_parse_duration_rejects_malformed_strings_with_examples(text):
    with pytest.raises(ValueError, match=r"is not a duration; use e\.g\. 5s, 2m, 1h30m"):
        parse_duration(text)


def test_parse_duration_rejects_negative_numbers():
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration(-1)


@pytest.mark.parametrize("value", [True, None, [5], {"s": 5}])
def test_parse_duration_rejects_other_types(value):
    with pytest.raises(ValueError, match="expected a duration like 5s"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256m", 256 * MIB),
        ("1g", GIB),
        ("1G", GIB),
        ("512MiB", 512 * MIB),
        ("1.5GB", int(1.5 * GIB)),
        ("10k", 10 * 1024),
        ("10kb", 10 * 1024),
        ("2t", 2 * 1024**4),
        ("1024", 1024),
        ("1 g", GIB),
    ],
)
def test_parse_size_accepts_binary_multiples(text, size):
    assert parse_size(text) == size


def test_parse_size_accepts_a_bare_integer_as_bytes():
    assert parse_size(4096) == 4096


@pytest.mark.parametrize("text", ["", "m", "1x", "-1m", "1mm", "one gig", "1e3"])
def test_parse_size_rejects_malformed_strings_with_examples(text):
    with pytest.raises(ValueError, match=r"is not a size; use e\.g\. 256m, 1g or 512MiB"):
        parse_size(text)


def test_parse_size_rejects_negative_integers():
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_size(-1)


@pytest.mark.parametrize("value", [True, None, 1.5, ["1g"]])
def test_parse_size_rejects_other_types(value):
    with pytest.raises(ValueError, match="expected a size like 256m or 1g"):
        parse_size(value)
