"""Backoff and the adaptive poll delay, as numbers in and numbers out."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.pacing import (
    MAX_POLL_DELAY,
    Reading,
    Started,
    backoff,
    completion_window,
    next_poll_delay,
    progress_is_linear,
)

AT_ZERO = Started(sent=0.0, answered=0.0)


def test_backoff_has_full_jitter_under_an_exponential_ceiling():
    rng = random.Random(1)
    for failures, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)]:
        samples = [backoff(2.0, failures, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # the whole range is used, not a fixed delay
        assert min(samples) < ceiling * 0.2


def test_first_poll_of_a_fresh_task_waits_the_poll_interval():
    assert next_poll_delay(0.0, AT_ZERO, [], None, 5.0) == 5.0


def test_a_reading_bounds_the_end_by_the_progress_rounding():
    # 80 % after 8 s means 80-81 % done: the end is between 8/0.81 and 8/0.80 s.
    earliest, latest = completion_window(AT_ZERO, [Reading(8.0, 8.0, 80)], None)
    assert math.isclose(earliest, 800 / 81)
    assert latest == 10.0


def test_not_knowing_when_the_task_started_widens_the_window():
    # The submit left at 0 and was answered at 1: the task started in between.
    earliest, latest = completion_window(Started(0.0, 1.0), [Reading(8.0, 8.0, 80)], None)
    assert latest == 10.0  # started at 0
    assert math.isclose(earliest, 1 + 7 * 100 / 81)  # started at 1


def test_not_knowing_when_the_poll_was_answered_widens_the_window():
    # Asked at 8, answered at 8.4: the 80 % was true at some moment in between.
    earliest, latest = completion_window(AT_ZERO, [Reading(8.0, 8.4, 80)], None)
    assert math.isclose(earliest, 800 / 81)
    assert math.isclose(latest, 10.5)


def test_readings_together_bound_the_end_tighter_than_each_alone():
    # A 10 s task seen at 75 % after 7.55 s (end in [9.93, 10.07]) and at 93 % after
    # 9.3 s (end in [9.89, 10]): their rounding differs, so together it is in [9.93, 10].
    first, second = Reading(7.55, 7.55, 75), Reading(9.3, 9.3, 93)
    earliest, latest = completion_window(AT_ZERO, [first, second], None)
    assert math.isclose(earliest, 755 / 76) and math.isclose(latest, 10.0)


def test_readings_that_contradict_linear_progress_leave_the_newest_alone_believed():
    # 50 % at 5 s (end by 10 s), then 60 % at 12 s: not linear; believe the newest.
    readings = [Reading(5.0, 5.0, 50), Reading(12.0, 12.0, 60)]
    window = completion_window(AT_ZERO, readings, None)
    assert window is not None
    assert math.isclose(window[0], 1200 / 61) and math.isclose(window[1], 20.0)
    assert progress_is_linear(AT_ZERO, readings[:1]) and not progress_is_linear(AT_ZERO, readings)


def test_progress_that_proved_not_linear_is_followed_in_steps_no_longer_than_its_age():
    # Stuck at 10 %: after 1 s the end looked 9 s away; at 10 s it still says 10 %. Its
    # newest reading predicts 90 s more; wait no longer than the 10 s it has run so far.
    readings = [Reading(1.0, 1.0, 10), Reading(10.0, 10.0, 10)]
    assert next_poll_delay(10.0, AT_ZERO, readings, None, 0.1) == 10.0
    assert next_poll_delay(10.0, AT_ZERO, readings[1:], None, 0.1) == MAX_POLL_DELAY


def test_near_the_predicted_end_it_polls_at_the_latest_end():
    # Between 9.88 and 10 s; the earliest is less than two intervals away: poll at 10.
    assert next_poll_delay(8.0, AT_ZERO, [Reading(8.0, 8.0, 80)], None, 1.0) == 2.0


def test_far_from_the_end_it_refines_one_interval_before_the_earliest_end():
    # 50 % after 10 s: the end is in [19.6, 20]; a reading at 18.6 narrows it, and the
    # next poll can then be right at the end.
    delay = next_poll_delay(10.0, AT_ZERO, [Reading(10.0, 10.0, 50)], None, 1.0)
    assert math.isclose(delay, 1000 / 51 - 10 - 1)


def test_a_wide_window_is_narrowed_in_steps_no_longer_than_the_time_run_so_far():
    # Submitted at 0, answered at 3.1; polled at 3.11, 1 % done, answered at 3.7: it may
    # end in 4 s or in 370 s. Poll again after at most another 3.7 s, not at the far end.
    delay = next_poll_delay(3.7, Started(0.0, 3.1), [Reading(3.11, 3.7, 1)], None, 0.01)
    assert math.isclose(delay, 3.7)


def test_the_time_seen_for_this_model_predicts_when_no_progress_is_reported():
    # Seen to take 6 s: expected between 4.5 and 7.5 s; refine at 3.5, one interval before.
    assert math.isclose(next_poll_delay(0.0, AT_ZERO, [], 6.0, 1.0), 3.5)
    assert math.isclose(next_poll_delay(2.0, AT_ZERO, [Reading(2.0, 2.0, 0)], 30.0, 1.0), 19.5)


def test_never_sooner_than_the_poll_interval_nor_later_than_the_cap():
    assert next_poll_delay(9.9, AT_ZERO, [Reading(9.9, 9.9, 99)], None, 5.0) == 5.0
    assert next_poll_delay(100.0, AT_ZERO, [Reading(100.0, 100.0, 1)], None, 1.0) == MAX_POLL_DELAY
    assert next_poll_delay(100.0, AT_ZERO, [Reading(100.0, 100.0, 1)], None, 90.0) == 90.0


def test_with_nothing_to_go_on_it_backs_off_with_the_time_run_so_far():
    assert next_poll_delay(20.0, AT_ZERO, [], None, 1.0) == 10.0
    assert next_poll_delay(20.0, AT_ZERO, [Reading(20.0, 20.0, 0)], None, 1.0) == 10.0


def test_a_task_running_past_its_expected_end_is_polled_with_backoff_not_in_a_storm():
    # Expected to end by 7.5 s, still running without progress at 20 s: the expectation
    # was wrong, so back off as with nothing to go on.
    assert completion_window(AT_ZERO, [Reading(20.0, 20.0, 0)], 6.0) is None
    assert next_poll_delay(20.0, AT_ZERO, [Reading(20.0, 20.0, 0)], 6.0, 1.0) == 10.0


# A task whose progress is linear and rounded down, as the sandbox (and the reference's
# example) report it: the policy must see its completion soon after, with few polls.


@st.composite
def linear_tasks(draw: st.DrawFn) -> dict[str, float | None]:
    total = draw(st.floats(0.5, 600))
    answer_delay = draw(st.sampled_from([0.0, 0.01 * total, 0.1 * total]))
    return {
        "total": total,
        "answered": answer_delay,
        "start": draw(st.floats(0, 1)) * answer_delay,
        "round_trip": draw(st.floats(0, 0.02)) * total,
        "interval": draw(st.sampled_from([0.01, 0.1, 1.0, 5.0])),
        "expected": draw(st.none() | st.floats(0.85, 1.15).map(lambda f: f * total)),
    }


def follow(task: dict[str, float | None]) -> tuple[float, int]:
    """Poll a simulated task by the policy: (how late its completion was seen, polls)."""
    total, start, rtt = float(task["total"]), float(task["start"]), float(task["round_trip"])
    interval, expected = float(task["interval"]), task["expected"]
    started = Started(0.0, float(task["answered"]))
    now, readings, polls = started.answered, [], 0
    while True:
        delay = next_poll_delay(now, started, readings, expected, interval)
        assert delay >= interval
        asked = now + delay
        moment, now = asked + rtt / 2, asked + rtt  # the service answers mid-way
        polls += 1
        if moment >= start + total:
            return now - (start + total), polls
        progress = min(99, math.floor(100 * (moment - start) / total))
        readings.append(Reading(asked, now, progress))
        window = completion_window(started, readings, expected)
        if window is not None:
            assert window[0] <= start + total <= window[1]


@settings(max_examples=300, deadline=None)
@given(linear_tasks())
def test_a_linear_task_is_seen_complete_soon_after_its_end_with_few_polls(task):
    late, polls = follow(task)
    total, interval, rtt = task["total"], task["interval"], task["round_trip"]
    # Late by at most an interval, two round trips and 2 % of the task's time (the
    # naive every-interval poll is late by up to one interval and polls total/interval
    # times); polls grow with log(total / interval) only (before any progress shows, the
    # wait grows by half the time run so far).
    assert late <= interval + 2 * rtt + 0.02 * total
    assert polls <= 8 + math.log(max(total / interval, 1), 1.5)
