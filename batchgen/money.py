"""Exact money: amounts are integer micro-dollars everywhere; text only at the edges."""

from __future__ import annotations

from decimal import Decimal

MICROS_PER_USD = 1_000_000


def to_micros(usd: str | int | Decimal) -> int:
    """'0.12' -> 120000. Refuses fractions of a micro-dollar rather than rounding them away."""
    value = Decimal(str(usd)) * MICROS_PER_USD
    if value != value.to_integral_value():
        raise ValueError(f"{usd!r} is not a whole number of micro-dollars")
    return int(value)


def usd(micros: int) -> str:
    """120000 -> '0.12'; 1234 -> '0.001234'. Two or more decimals, exact."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    digits = f"{frac:06d}".rstrip("0")
    digits = digits.ljust(2, "0")
    return f"{sign}{whole}.{digits}"
