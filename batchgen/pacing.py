"""When to try again and when to poll next: pure functions of numbers, no clock inside.

Polling predicts when a task will complete and polls right then. A task that reported
`p` % at some moment between a poll's `asked` and `answered` times, having started
somewhere between its submission's `sent` and `answered` times, completes (if its
progress is linear) within a window that `completion_window` computes, accounting for
each of those uncertainties and intersecting what every reading says. A poll at the
window's latest end sees the completion, late by at most the window's width; readings
close to the end give narrow windows, so while the end is more than two poll intervals
away the next poll is a refinement one interval before the earliest end, and the one
after it is the final one, at the latest end.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

MAX_BACKOFF = 60.0
SLOT_WAIT_CAP = 30.0  # longest wait between two submissions refused with 429
SLOT_WAIT_FLOOR = 0.05  # the first wait's ceiling even with --retry-delay 0: never a busy loop
MAX_POLL_DELAY = 60.0
# A task of a model and length seen before takes its typical time within +-this fraction.
EXPECTED_SPREAD = 0.25


def backoff(base: float, failures: int, rng: random.Random, cap: float = MAX_BACKOFF) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(failures-1))]."""
    ceiling = min(cap, base * 2 ** max(failures - 1, 0))
    return rng.uniform(0, ceiling)


def slot_wait(retry_after: float | None, waits: int, base: float, rng: random.Random) -> float:
    """How long to wait after the `waits`-th 429 in a row: the service's Retry-After when
    it sent a usable one (outcomes.parse_retry_after), else an exponential backoff with
    half jitter from `base` (at least SLOT_WAIT_FLOOR) up to SLOT_WAIT_CAP. Half jitter,
    not full: a wait near 0 would only meet the same full slot again."""
    if retry_after is not None:
        return retry_after
    ceiling = min(SLOT_WAIT_CAP, max(base, SLOT_WAIT_FLOOR) * 2 ** max(waits - 1, 0))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Started:
    """When a task started generating: after its submission was `sent`, and before its
    answer came back (`answered`)."""

    sent: float
    answered: float


@dataclass(frozen=True)
class Reading:
    """What one poll said: the task was `progress` % done (not finished) at some moment
    between the poll's `asked` and `answered` times."""

    asked: float
    answered: float
    progress: int


def _reading_window(started: Started, reading: Reading) -> tuple[float, float] | None:
    """From p % (1 <= p <= 99): the fraction done was in [p, p+1) %, so with linear
    progress end = start + (moment - start) / fraction: at its latest for the earliest
    start, the latest moment and the lowest fraction; at its earliest conversely."""
    p = reading.progress
    if not 1 <= p <= 99:
        return None
    latest = started.sent + (reading.answered - started.sent) * 100 / p
    earliest = started.answered + (reading.asked - started.answered) * 100 / (p + 1)
    return earliest, latest


def _together(windows: list[tuple[float, float]]) -> tuple[float, float]:
    """The intersection of the windows, or the newest alone when they contradict."""
    earliest = max(w[0] for w in windows)
    latest = min(w[1] for w in windows)
    return (earliest, latest) if earliest <= latest else windows[-1]


def progress_is_linear(started: Started, readings: Sequence[Reading]) -> bool:
    """Whether every reading so far agrees with one linear progress."""
    windows = [w for w in (_reading_window(started, r) for r in readings) if w is not None]
    return not windows or max(w[0] for w in windows) <= min(w[1] for w in windows)


def completion_window(
    started: Started, readings: Sequence[Reading], expected_total: float | None
) -> tuple[float, float] | None:
    """(earliest, latest) moment the task can complete, or None with nothing to go on.

    Every reading with progress bounds the end; together they bound it tighter (their
    rounding errors differ), unless they contradict each other, when progress is not
    linear after all and the newest reading alone is believed. Without any, the time
    seen for the same model and length (`expected_total`) give or take EXPECTED_SPREAD.
    A task seen unfinished cannot end before it was last asked; one still running after
    its latest expected end has nothing left to go on.
    """
    not_before = readings[-1].asked if readings else started.answered
    windows = [w for w in (_reading_window(started, r) for r in readings) if w is not None]
    if windows:
        earliest, latest = _together(windows)
    elif expected_total is not None and expected_total > 0:
        latest = started.sent + expected_total * (1 + EXPECTED_SPREAD)
        earliest = started.answered + expected_total * (1 - EXPECTED_SPREAD)
    else:
        return None
    if latest < not_before:
        return None
    return max(earliest, not_before), latest


def next_poll_delay(
    now: float,
    started: Started,
    readings: Sequence[Reading],
    expected_total: float | None,
    poll_interval: float,
) -> float:
    """Seconds from `now` until the next poll of a task still running; never sooner than
    `poll_interval`, never later than MAX_POLL_DELAY (unless the interval is longer).

    - End more than two intervals away: refine, one interval before the earliest end.
    - Earliest end close but the window wide (an early reading, an uncertain start):
      narrow it in steps no longer than the time the task has run so far.
    - Otherwise poll at the latest end, where the completion is certain to be seen.
    - Nothing to go on (or running past its latest expected end): back off gently with
      the time the task has been running.
    - Readings that contradict linear progress make every prediction doubtful: then
      never wait longer than the time the task has run so far.
    """
    window = completion_window(started, readings, expected_total)
    if window is None:
        delay = (now - started.answered) / 2
    else:
        earliest, latest = window
        if earliest - now >= 2 * poll_interval:
            delay = earliest - now - poll_interval
        elif latest - now > 2 * poll_interval:
            delay = min((latest - now) / 2, now - started.sent)
        else:
            delay = latest - now
        if not progress_is_linear(started, readings):
            delay = min(delay, now - started.sent)
    return max(min(delay, MAX_POLL_DELAY), poll_interval)
