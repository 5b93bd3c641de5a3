"""When to try again and when to poll next: pure functions of numbers, no clock inside.

A task's completion is noticed at the first poll after it; the only cost of polling late
is that lag (a slot idles), the only cost of polling early is a request. The schedule
rests on **evidence**: the generation times this batchgen saw, per (model, duration),
from tasks it followed itself from submission to completion (`Durations`: a median and
quantiles, so an outlier moves nothing). Around them:

- before the earliest time the evidence allows, poll sparsely (halving the distance);
- within the evidence window, poll every `--poll-interval`;
- past it, poll with a spacing growing with the overrun (the evidence was wrong);
- with no evidence at all, poll every interval, the spacing growing with 5 % of the
  task's age: the catalog's typical times are guesses (the sandbox's time scale makes
  them 30x too long) and are not waited on.

**Progress is a hint, never a clock.** Each way of reading it (`HYPOTHESES`: linear from
the submission, linear from an unknown onset after a `pending` phase, locally linear near
the end) predicts a completion window from a task's readings; it is used for a model
only once it has held for the last `TRUST_AFTER` tasks of that model that completed (or,
until the model has that many, of the service's: `ProgressTrust`), for a task only while
its readings agree with it, and only once its window is at most an interval wide. Even
then it may move a poll earlier freely, but later by at most one poll interval beyond
the evidence schedule: a wrong hint costs at most that much.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

MAX_BACKOFF = 60.0
SLOT_WAIT_CAP = 30.0  # longest wait between two submissions refused with 429
SLOT_WAIT_FLOOR = 0.05  # the first wait's ceiling even with --retry-delay 0: never a busy loop
MAX_POLL_DELAY = 60.0

# Evidence: how the generation times seen for one (model, duration) become a window.
KEEP_SAMPLES = 50  # the most recent observed times kept per (model, duration)
OUTLIER_FACTOR = 2.0  # a time beyond median x/÷ this is an outlier, ignored
LOW_QUANTILE, HIGH_QUANTILE = 0.05, 0.95
MARGIN = 0.25  # the window widens by MARGIN / sqrt(samples) on each side
PRIOR_SPREAD = 0.5  # a prior from other models' times: typical x (1 ± this)

# The schedule.
APPROACH = 0.5  # before the window: wait this share of the distance to it
GROWTH_UNKNOWN = 0.05  # no evidence: spacing grows with this share of the task's age
GROWTH_BEYOND = 0.2  # past the window: spacing grows with this share of the overrun
SHARP = 1.0  # a hint is used once its window is at most this many intervals wide
KEEP_READINGS = 200  # readings kept per task
TRUST_AFTER = 3  # a way of reading progress is trusted after holding this many times running

EPSILON = 1e-9  # seconds: rounding, not time
Key = tuple[str, int | None]  # (model, duration)
Window = tuple[float, float]


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
    """What one poll of a running task said: `progress` % (None: no usable field) at some
    moment between the poll's `asked` and `answered` times."""

    asked: float
    answered: float
    progress: int | None


# ---------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class Evidence:
    """What is known of a task's generation time, in seconds from its submission: it
    ends after `low` and before `high`, typically at `typical`; `samples` is how many
    observed times of the same model and duration this rests on (0: a prior)."""

    low: float
    typical: float
    high: float
    samples: int


def quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated between neighbours."""
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def robust_window(samples: Iterable[float]) -> Evidence | None:
    """The evidence window of observed times: outliers (beyond median x/÷ OUTLIER_FACTOR)
    dropped, then the LOW..HIGH quantiles widened by MARGIN / sqrt(n)."""
    values = sorted(s for s in samples if s > 0)
    if not values:
        return None
    median = quantile(values, 0.5)
    kept = [v for v in values if median / OUTLIER_FACTOR <= v <= median * OUTLIER_FACTOR]
    margin = MARGIN / math.sqrt(len(kept))
    return Evidence(
        low=quantile(kept, LOW_QUANTILE) * (1 - margin),
        typical=quantile(kept, 0.5),
        high=quantile(kept, HIGH_QUANTILE) * (1 + margin),
        samples=len(kept),
    )


class Durations:
    """Observed generation times per (model, duration), the KEEP_SAMPLES most recent of
    each, and what they say about a (model, duration) not seen yet: its catalog typical
    time scaled as the others ran against theirs (a wide prior)."""

    def __init__(self, typical: Callable[[Key], float | None] = lambda key: None):
        self.typical = typical
        self.samples: dict[Key, deque[float]] = {}
        self._windows: dict[Key, Evidence | None] = {}
        self._scale: float | None = None

    def add(self, key: Key, seconds: float) -> None:
        if not seconds > 0:
            return
        self.samples.setdefault(key, deque(maxlen=KEEP_SAMPLES)).append(seconds)
        self._windows.pop(key, None)
        self._scale = None

    def evidence(self, key: Key) -> Evidence | None:
        if key not in self._windows:
            self._windows[key] = robust_window(self.samples.get(key, ()))
        own = self._windows[key]
        if own is not None:
            return own
        typical, scale = self.typical(key), self.scale()
        if typical is None or scale is None:
            return None
        expected = typical * scale
        return Evidence(expected * (1 - PRIOR_SPREAD), expected, expected * (1 + PRIOR_SPREAD), 0)

    def scale(self) -> float | None:
        """Median over the keys seen of (their median time / their catalog typical time)."""
        if self._scale is None:
            ratios = []
            for key, times in self.samples.items():
                typical = self.typical(key)
                if typical and times:
                    ratios.append(quantile(sorted(times), 0.5) / typical)
            self._scale = quantile(sorted(ratios), 0.5) if ratios else 0.0
        return self._scale or None


# ---------------------------------------------------------------------------- progress


def _pair_window(
    anchor: tuple[float, float, int, int], reading: Reading
) -> tuple[float, float] | None:
    """Where linear progress through an anchor and a reading reaches 100 %.

    The anchor is (earliest, latest moment, progress, width): its true progress was in
    [progress, progress + width) (width 0: exactly); the reading's in [p, p + 1). The
    rate lies between the least progress over the longest time and the most over the
    shortest; the end is the reading's moment plus what is left at that rate.
    """
    a_lo, a_hi, p_a, width = anchor
    p = _percent(reading)
    gained_least, gained_most = p - p_a - width, p + 1 - p_a
    shortest, longest = reading.asked - a_hi, reading.answered - a_lo
    if gained_least <= 0 or shortest <= 0:
        return None
    slowest, fastest = gained_least / longest, gained_most / shortest
    return reading.asked + (99 - p) / fastest, reading.answered + (100 - p) / slowest


def _usable(readings: Sequence[Reading]) -> list[Reading]:
    return [r for r in readings if r.progress is not None and 1 <= r.progress <= 99]


def _percent(reading: Reading) -> int:
    """The progress of a reading `_usable` kept (so never None): what the hypotheses read."""
    assert reading.progress is not None
    return reading.progress


def _from_submission(started: Started, usable: list[Reading]) -> list[Window | None]:
    """Progress is the share of the time since the task started (0 % at its start)."""
    start = (started.sent, started.answered, 0, 0)
    return [_pair_window(start, r) for r in usable]


def _from_onset(started: Started, usable: list[Reading]) -> list[Window | None]:
    """Progress rises linearly from some unknown moment (after a `pending` phase): the
    first reading and each later one fix the line."""
    if not usable:
        return []
    first = usable[0]
    anchor = (first.asked, first.answered, _percent(first), 1)
    return [_pair_window(anchor, r) for r in usable[1:]]


# "Locally linear": the last reading and the latest one LOCAL_GAIN to LOCAL_SPAN points
# below it, taken at most LOCAL_AGE of the task's age before it (a curve is nearly straight
# over a short stretch; a long stall at 99 % is not a stretch of it).
LOCAL_GAIN, LOCAL_SPAN, LOCAL_AGE = 5, 30, 0.3


def _local(started: Started, usable: list[Reading]) -> list[Window | None]:
    """Progress is linear over its last few points (any smooth curve, near the end)."""
    if not usable:
        return []
    last = usable[-1]
    p = _percent(last)
    oldest = last.asked - LOCAL_AGE * (last.asked - started.sent)
    anchor = next(
        (
            r
            for r in reversed(usable[:-1])
            if p - LOCAL_SPAN <= _percent(r) <= p - LOCAL_GAIN and r.answered >= oldest
        ),
        None,
    )
    if anchor is None:
        return []
    return [_pair_window((anchor.asked, anchor.answered, _percent(anchor), 1), last)]


HYPOTHESES: dict[str, Callable[[Started, list[Reading]], list[Window | None]]] = {
    "from-submission": _from_submission,
    "from-onset": _from_onset,
    "local": _local,
}


def _intersection(windows: Iterable[Window | None]) -> tuple[Window | None, bool]:
    """(the windows' intersection, None if empty; whether there was any window)."""
    present = [w for w in windows if w is not None]
    if not present:
        return None, False
    earliest, latest = max(w[0] for w in present), min(w[1] for w in present)
    return ((earliest, latest) if earliest <= latest else None), True


def hypothesis_window(name: str, started: Started, readings: Sequence[Reading]) -> Window | None:
    """The end window one way of reading progress gives: every pair of readings it uses
    bounds the end, so the window is their intersection; None when it has nothing to go
    on or its readings contradict it (the intersection is empty)."""
    return _intersection(HYPOTHESES[name](started, _usable(readings)))[0]


def verdicts(started: Started, readings: Sequence[Reading], end: Window) -> dict[str, bool | None]:
    """Did each way of reading progress predict this completion, seen to happen within
    `end` (after the last poll that said running, before the one that said completed)?
    None: it had nothing to say (no pair of readings it could use)."""
    usable = _usable(readings)
    result: dict[str, bool | None] = {}
    for name, windows_of in HYPOTHESES.items():
        window, said = _intersection(windows_of(started, usable))
        result[name] = (
            None if not said else window is not None and window[0] <= end[1] and window[1] >= end[0]
        )
    return result


class ProgressTrust:
    """Which ways of reading progress held for the last TRUST_AFTER completed tasks of a
    model; a model with fewer tasks of its own borrows the service-wide record (the
    service reports progress the same way for all its models, most likely), unless one
    of its own tasks already contradicted it."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], deque[bool]] = {}
        self._service: dict[str, deque[bool]] = {}

    def record(self, model: str, outcome: Mapping[str, bool | None]) -> None:
        for name, held in outcome.items():
            if held is not None:
                self._held.setdefault((model, name), deque(maxlen=TRUST_AFTER)).append(held)
                self._service.setdefault(name, deque(maxlen=TRUST_AFTER)).append(held)

    def trusted(self, model: str) -> list[str]:
        return [name for name in HYPOTHESES if self._trusts(model, name)]

    def _trusts(self, model: str, name: str) -> bool:
        own = self._held.get((model, name), ())
        if not all(own):
            return False
        if len(own) == TRUST_AFTER:
            return True
        service = self._service.get(name, ())
        return len(service) == TRUST_AFTER and all(service)


def hint_window(
    names: Sequence[str], started: Started, readings: Sequence[Reading]
) -> Window | None:
    """What the trusted ways of reading progress agree on for this task: the intersection
    of the windows of those its readings still agree with; None if they disagree."""
    return _intersection(hypothesis_window(n, started, readings) for n in names)[0]


# ---------------------------------------------------------------------------- the schedule


def evidence_poll(
    now: float,
    started: Started,
    evidence: Evidence | None,
    interval: float,
    previous: float,
    watching: float,
) -> float:
    """When the evidence alone would poll next (`previous`: when the last poll was sent).
    Spacings count from one poll's sending to the next, so polling every interval keeps
    that pace whatever the round trip."""
    if evidence is None:
        return previous + max(interval, GROWTH_UNKNOWN * (now - started.sent))
    low, high = started.sent + evidence.low, started.sent + evidence.high
    if now < low:
        left = low - now
        return low if left <= 2 * interval else now + max(interval, APPROACH * left)
    if now <= high:
        return previous + interval
    return previous + max(interval, GROWTH_BEYOND * (now - max(high, watching)))


def next_poll_delay(
    now: float,
    started: Started,
    evidence: Evidence | None,
    hint: Window | None,
    poll_interval: float,
    *,
    last_asked: float | None = None,
    watching: float | None = None,
) -> float:
    """Seconds from `now` until the next poll of a task still running.

    `evidence` is what the times seen say (None: nothing); `hint` the completion window
    trusted progress readings give (None: none); `last_asked` when the previous poll was
    sent (the next is never sooner than `poll_interval` after it, nor after the submit's
    answer); `watching` since when this process follows the task (a task taken over on
    resume may be long past its evidence window: it is polled soon, then less often).
    Never later than MAX_POLL_DELAY (unless the interval is longer).
    """
    interval = poll_interval
    previous = started.answered if last_asked is None else last_asked
    soonest = max(0.0, previous + interval - now)
    at = evidence_poll(
        now, started, evidence, interval, previous, started.sent if watching is None else watching
    )
    delay = at - now
    if hint is not None and hint[1] >= now and hint[1] - hint[0] <= SHARP * interval:
        earliest, latest = max(hint[0], now), hint[1]
        if earliest - now >= 2 * interval - EPSILON:
            wanted = earliest - now - interval  # refine one interval before the earliest end
        elif latest - now > 2 * interval + EPSILON:
            wanted = (latest - now) / 2  # refine halfway
        else:
            wanted = latest - now  # the completion is certain to be seen then
        bound = max(delay, soonest) + interval  # what a wrong hint can cost: one interval
        delay = min(wanted, bound)
        # A poll just before the predicted end forces the next one an interval later:
        # land on the end itself, or an interval before it.
        if latest - interval < now + delay < latest - EPSILON:
            if latest - now <= bound + EPSILON:
                delay = latest - now
            elif latest - interval - now >= soonest:
                delay = latest - interval - now
    return min(max(delay, soonest), max(MAX_POLL_DELAY, interval))


# ---------------------------------------------------------------------------- one task, all tasks


@dataclass
class Follow:
    """What one process knows of one task it follows: when it started, what polls said."""

    started: Started
    watching: float  # when this process began following it
    own: bool  # this process saw its submission answered: its generation time may be learned
    readings: list[Reading] = field(default_factory=list)
    last_asked: float | None = None
    last_running: float | None = None  # when the last poll that said "running" was sent

    def running(self, asked: float, answered: float, progress: int | None) -> None:
        self.readings.append(Reading(asked, answered, progress))
        if len(self.readings) > KEEP_READINGS:  # a task that never ends: keep the first
            del self.readings[1]  # (the onset's anchor) and the most recent
        self.last_asked = self.last_running = asked

    def unanswered(self, asked: float) -> None:
        """A poll that got no usable answer (it still counts for the spacing)."""
        self.last_asked = asked

    def end(self, answered: float) -> Window:
        """Where its completion, seen in a poll answered at `answered`, happened."""
        after = self.last_running if self.last_running is not None else self.started.sent
        return after, answered


class Learned:
    """Everything a run learns about generation times and progress, and the poll delays
    that follow from it: the one object the scheduler and the simulator both use."""

    def __init__(
        self,
        typical: Callable[[Key], float | None] = lambda key: None,
        history: Mapping[Key, Iterable[float]] | None = None,
    ):
        self.durations = Durations(typical)
        self.trust = ProgressTrust()
        for key, times in (history or {}).items():
            for seconds in times:
                self.durations.add(key, seconds)

    def delay(self, key: Key, follow: Follow, now: float, poll_interval: float) -> float:
        hint = hint_window(self.trust.trusted(key[0]), follow.started, follow.readings)
        return next_poll_delay(
            now,
            follow.started,
            self.durations.evidence(key),
            hint,
            poll_interval,
            last_asked=follow.last_asked,
            watching=follow.watching,
        )

    def completed(self, key: Key, follow: Follow, answered: float) -> float | None:
        """Learn from a task seen completed in a poll answered at `answered`; returns its
        observed generation time, or None when it was not followed from its submission
        by this process (a task taken over on resume teaches nothing)."""
        if not follow.own:
            return None
        end = follow.end(answered)
        self.trust.record(key[0], verdicts(follow.started, follow.readings, end))
        seconds = (end[0] + end[1]) / 2 - follow.started.sent
        self.durations.add(key, seconds)
        return seconds

    def expected(self, key: Key) -> float | None:
        """The typical generation time of a (model, duration), as far as known."""
        evidence = self.durations.evidence(key)
        return evidence.typical if evidence is not None else None


def eta_seconds(
    running_left: Sequence[float], queued: Iterable[tuple[float, int]], slots: int
) -> float:
    """When the batch should end: the work left (what the tasks in flight have left, and
    (typical seconds, how many) of the queued jobs) spread over the slots, but no sooner
    than the longest task in flight."""
    work = sum(running_left) + sum(seconds * count for seconds, count in queued)
    return max(max(running_left, default=0.0), work / max(slots, 1))
