"""DURATION values of the command line (PRODUCT.md §7): `--lost-after`."""

from __future__ import annotations

import pytest

from batchgen.durations import elapsed, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3600", 3600.0),
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("8h", 28800.0),
        ("1.5h", 5400.0),
        (" 2 m ", 120.0),
        ("1H", 3600.0),
        ("0.5", 0.5),
    ],
)
def test_a_duration_is_seconds_or_a_number_with_s_m_or_h(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5", "1d", "h", "1h30m", "abc", "1e3", "inf"])
def test_anything_else_is_refused_saying_what_is_accepted(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_the_refusal_quotes_the_text_and_says_what_is_accepted():
    with pytest.raises(ValueError) as refused:
        parse_duration("1d")
    assert str(refused.value) == (
        "'1d' is not a duration: use seconds (3600) or a number with s, m or h (90s, 30m, 8h)"
    )
    with pytest.raises(ValueError) as refused:
        parse_duration("0m")
    assert str(refused.value) == "'0m': a duration must be longer than 0"


@pytest.mark.parametrize(
    ("seconds", "text"), [(45, "45s"), (1800, "30m"), (3600, "1h"), (5400, "1h30m")]
)
def test_a_duration_is_shown_as_a_person_writes_it(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (3.16038, "3.2s"),
        (1.0004, "1s"),
        (0.05, "0.05s"),
        (12.7, "13s"),
        (59.5, "1m"),
        (59.7, "1m"),
        (92, "2m"),
    ],
)
def test_a_measured_duration_is_shown_rounded(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.9, "59s"),  # to the second, not rounded up
        (60, "1m00s"),
        (187, "3m07s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (7530, "2h05m"),
        (7140, "1h59m"),  # 59 whole minutes past the hour
        (90061, "25h01m"),
    ],
)
def test_a_time_span_is_shown_to_the_second_under_an_hour(seconds, text):
    assert elapsed(seconds) == text
