"""How a simulated task reports progress: one pure function per behaviour PRODUCT.md §2
allows, shared by the sandbox and the pacing simulator (bench/simulate.py).

`task_state(mode, elapsed, total, draw)` is what a task `elapsed` seconds into its
`total` answers while running: ("pending" | "processing", progress or None for no
`progress` field). `draw` is the task's own random number in [0, 1) (random-pending uses
it). Progress is an integer percent rounded down, never 100 before completion; the caller
answers `completed` or `failed` once `elapsed >= total`.

| mode | pending (progress 0) | then `processing`, progress = |
|---|---|---|
| linear | the first 10 % | the share of the task's time since submission (at least 1) |
| pending-linear | the first 20 % | rising linearly from 0 to 99 over the remaining 80 % |
| random-pending | a random 0-60 % (a queue) | rising linearly from 0 to 99 over the rest |
| none | the first 10 % | no `progress` field at all, pending or processing |
| steps | the first 10 % | 25, 50, 75: the share since submission in steps of 25 |
| fast-start | the first 10 % | 100·√share: quick at first, slow near the end |
| slow-start | the first 10 % | 100·share²: slow at first, quick near the end |
| stuck | the first 10 % | reaches 99 at 30 % of the task's time and stays there |
"""

from __future__ import annotations

import math

PROGRESS_MODES = (
    "linear",
    "pending-linear",
    "random-pending",
    "none",
    "steps",
    "fast-start",
    "slow-start",
    "stuck",
)
DEFAULT_MODE = "linear"

PENDING_FRACTION = 0.10  # every mode but the two below: pending for the first tenth
PENDING_LINEAR_FRACTION = 0.20
RANDOM_PENDING_MAX = 0.60  # random-pending: pending for draw x 60 % of the task
STEP = 25
STUCK_AT = 0.30  # stuck: 99 % once 30 % of the task's time has passed


def pending_fraction(mode: str, draw: float) -> float:
    """The share of a task's time it answers `pending`."""
    if mode == "pending-linear":
        return PENDING_LINEAR_FRACTION
    if mode == "random-pending":
        return RANDOM_PENDING_MAX * min(max(draw, 0.0), 1.0)
    return PENDING_FRACTION


def task_state(mode: str, elapsed: float, total: float, draw: float) -> tuple[str, int | None]:
    """(status, progress) of a task still running; progress None means no field at all."""
    if mode not in PROGRESS_MODES:
        raise ValueError(f"unknown progress mode {mode!r} (one of {', '.join(PROGRESS_MODES)})")
    share = min(max(elapsed / total, 0.0), 1.0) if total > 0 else 1.0
    pending = pending_fraction(mode, draw)
    if share < pending:
        return "pending", None if mode == "none" else 0
    if mode == "none":
        return "processing", None
    if mode == "linear":
        return "processing", max(1, _percent(share))
    if mode in ("pending-linear", "random-pending"):
        return "processing", _percent((share - pending) / (1 - pending))
    if mode == "steps":
        return "processing", min(STEP * math.floor(share * 100 / STEP), 100 - STEP)
    if mode == "fast-start":
        return "processing", _percent(math.sqrt(share))
    if mode == "slow-start":
        return "processing", _percent(share * share)
    return "processing", _percent(share / STUCK_AT)  # stuck


def _percent(share: float) -> int:
    """A share of the way as a whole percent rounded down, within 0..99."""
    return min(99, max(0, math.floor(100 * share)))
