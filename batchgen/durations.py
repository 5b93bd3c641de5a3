"""DURATION values of the command line (PRODUCT.md §7): a number of seconds, or a number
with a unit `s`, `m` or `h` (`90`, `90s`, `30m`, `1.5h`). Pure: text in, seconds out."""

from __future__ import annotations

import re

UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[smh]?)")


def parse_duration(text: str) -> float:
    """Seconds from a DURATION; ValueError (saying what is accepted) for anything else,
    including zero."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: use seconds (3600) or a number with s, m or h "
            "(90s, 30m, 8h)"
        )
    seconds = float(match["number"]) * UNITS[match["unit"]]
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be longer than 0")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as a person writes it: 45s, 30m, 1h, 1h30m; a measured one rounded to
    two digits under a minute (3.2s, not 3.16038s)."""
    if seconds < 59.5:
        return f"{seconds:.2g}s"
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"{minutes}m"
    return f"{hours}h{minutes}m" if minutes else f"{hours}h"


def elapsed(seconds: float) -> str:
    """A time span as a display shows it, to the second under an hour: 45s, 3m07s, 2h05m."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
