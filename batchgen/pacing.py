"""When to try again and when to poll next: pure functions of numbers, no clock inside."""

from __future__ import annotations

import random

MAX_BACKOFF = 60.0
MAX_POLL_DELAY = 60.0


def backoff(base: float, failures: int, rng: random.Random, cap: float = MAX_BACKOFF) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(failures-1))]."""
    ceiling = min(cap, base * 2 ** max(failures - 1, 0))
    return rng.uniform(0, ceiling)


def next_poll_delay(
    elapsed: float, progress: int | None, expected_total: float | None, poll_interval: float
) -> float:
    """Seconds until the next poll of a task that has been generating for `elapsed` s.

    Completion is predicted from the reported progress (linear), or else from the
    generation time seen for the same model and length. Far from the predicted end we
    poll at half the remaining time (refining the prediction); near it, right at it.
    With nothing to go on we back off gently. Never sooner than `poll_interval`.
    """
    remaining: float | None = None
    if progress is not None and 0 < progress < 100:
        remaining = elapsed * (100 - progress) / progress
    elif expected_total is not None and expected_total > elapsed:
        remaining = expected_total - elapsed
    if remaining is None:
        delay = elapsed / 2
    elif remaining > 4 * poll_interval:
        delay = remaining / 2
    else:
        delay = remaining
    return max(min(delay, MAX_POLL_DELAY), poll_interval)
