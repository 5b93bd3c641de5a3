"""Exact money (batchgen/money.py): integer micro-dollars inside, decimal text at the edges."""

from __future__ import annotations

from decimal import Decimal

import pytest

from batchgen.money import MICROS_PER_USD, to_micros, usd


def test_a_dollar_is_a_million_micro_dollars():
    assert MICROS_PER_USD == 1_000_000


@pytest.mark.parametrize(
    "text, micros",
    [
        ("0.12", 120_000),
        ("40", 40_000_000),
        ("40.00", 40_000_000),
        ("0.000001", 1),
        ("-1.5", -1_500_000),
        ("0", 0),
        (3, 3_000_000),
        (Decimal("2.25"), 2_250_000),
    ],
)
def test_to_micros_is_exact(text, micros):
    assert to_micros(text) == micros
    assert isinstance(to_micros(text), int)


@pytest.mark.parametrize("text", ["0.0000001", "0.1234567", "1e-7"])
def test_to_micros_refuses_fractions_of_a_micro_dollar(text):
    with pytest.raises(ValueError) as refused:
        to_micros(text)
    assert str(refused.value) == f"{text!r} is not a whole number of micro-dollars"


@pytest.mark.parametrize(
    "micros, text",
    [
        (120_000, "0.12"),
        (1_234, "0.001234"),
        (1, "0.000001"),
        (0, "0.00"),
        (40_000_000, "40.00"),
        (15_080_000, "15.08"),
        (100_000, "0.10"),
        (1_500_000, "1.50"),
        (-1, "-0.000001"),
        (-1_500_000, "-1.50"),
        (-120_000, "-0.12"),
        (999_999, "0.999999"),
    ],
)
def test_usd_has_two_or_more_decimals_exactly(micros, text):
    assert usd(micros) == text


def test_usd_and_to_micros_are_inverses():
    for micros in (0, 1, 10, 99, 100_000, 123_456_789, -5, -1_000_000):
        assert to_micros(usd(micros)) == micros
