"""Pacing, as numbers in and numbers out: backoff, the evidence of generation times, the
poll schedule around it, progress readings as checked hints, and what a run learns."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen.pacing import (
    GROWTH_UNKNOWN,
    KEEP_READINGS,
    MAX_POLL_DELAY,
    TRUST_AFTER,
    Durations,
    Evidence,
    Follow,
    Learned,
    ProgressTrust,
    Reading,
    Started,
    backoff,
    eta_seconds,
    evidence_poll,
    hint_window,
    hypothesis_window,
    next_poll_delay,
    quantile,
    robust_window,
    slot_wait,
    verdicts,
)
from batchgen.progress_curves import task_state

AT_ZERO = Started(sent=0.0, answered=0.0)
GROK = ("grok-video-3", 5)
TEN_S = Evidence(low=9.0, typical=10.0, high=11.0, samples=20)  # tasks of 10 s ± 10 %


def test_backoff_has_full_jitter_under_an_exponential_ceiling():
    rng = random.Random(1)
    for failures, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)]:
        samples = [backoff(2.0, failures, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # the whole range is used, not a fixed delay
        assert min(samples) < ceiling * 0.2


class Edge:
    """A random source that always draws the same share of the range asked for: 0.0 its
    low end, 1.0 its high end (so a jittered wait is pinned to one end of its range)."""

    def __init__(self, share: float):
        self.share = share

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.share


def test_a_usable_retry_after_from_the_service_is_the_wait_exactly():
    assert slot_wait(7.0, 1, 2.0, Edge(0.0)) == 7.0  # not the backoff of 1-2 s
    assert slot_wait(7.0, 5, 2.0, Edge(1.0)) == 7.0  # nor of 16-30 s


def test_without_retry_after_429s_wait_between_half_and_all_of_a_ceiling_doubling_to_30_s():
    # --retry-delay 2: ceilings 2, 4, 8, 16, then 32 and 64 capped at 30 s. Half jitter:
    # the wait is at least half the ceiling (a wait near 0 would only meet the full slot).
    for waits, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (6, 30.0)]:
        assert slot_wait(None, waits, 2.0, Edge(0.0)) == ceiling / 2
        assert slot_wait(None, waits, 2.0, Edge(1.0)) == ceiling
    rng = random.Random(5)
    samples = [slot_wait(None, 3, 2.0, rng) for _ in range(200)]
    assert all(4.0 <= s <= 8.0 for s in samples) and min(samples) < 4.4 and max(samples) > 7.6


def test_with_a_zero_retry_delay_429s_still_wait_25_to_50_ms_never_a_busy_loop():
    # The first ceiling is at least SLOT_WAIT_FLOOR (50 ms), doubling from there.
    for base in (0.0, 0.01):
        assert slot_wait(None, 1, base, Edge(0.0)) == 0.025
        assert slot_wait(None, 1, base, Edge(1.0)) == 0.05
        assert slot_wait(None, 2, base, Edge(1.0)) == 0.1
    assert slot_wait(None, 1, 0.08, Edge(1.0)) == 0.08  # a base above the floor is the base


# ---------------------------------------------------------------------------- evidence


def test_the_evidence_window_spans_the_times_seen_with_a_margin_shrinking_with_samples():
    one = robust_window([10.0])
    assert one == Evidence(low=7.5, typical=10.0, high=12.5, samples=1)  # ± 25 %
    many = robust_window([9.0 + i * 0.1 for i in range(21)])  # 9..11 s
    assert many is not None and many.typical == pytest.approx(10.0)
    assert 8.5 < many.low < 9.1 and 10.9 < many.high < 11.5


def test_quantiles_interpolate_between_neighbours():
    assert quantile([100.0, 110.0], 0.5) == 105.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.25) == 1.75  # position 0.75: 1 + 0.75 x (2 - 1)
    assert quantile([1.0, 2.0, 3.0], 1.0) == 3.0 and quantile([1.0, 2.0, 3.0], 0.0) == 1.0
    assert quantile([7.0], 0.95) == 7.0  # one value: every quantile is that value


def test_the_window_runs_from_the_5th_to_the_95th_percentile_widened_by_a_quarter_over_root_n():
    # 21 times, 100..120 s in any order: the 5th percentile is at position 0.05 x 20 = 1
    # (101 s), the 95th at 19 (119 s); the margin is 0.25 / sqrt(21) on each side.
    times = [100.0 + (8 * i) % 21 for i in range(21)]
    margin = 0.25 / math.sqrt(21)
    window = robust_window(times)
    assert window is not None and window.samples == 21 and window.typical == 110.0
    assert window.low == pytest.approx(101 * (1 - margin), rel=1e-12)
    assert window.high == pytest.approx(119 * (1 + margin), rel=1e-12)
    # 11 times, 100..110 s: positions 0.5 and 9.5 fall between two times.
    eleven = robust_window([100.0 + i for i in range(11)])
    margin = 0.25 / math.sqrt(11)
    assert eleven is not None and eleven.typical == 105.0
    assert eleven.low == pytest.approx(100.5 * (1 - margin), rel=1e-12)
    assert eleven.high == pytest.approx(109.5 * (1 + margin), rel=1e-12)


def test_times_of_exactly_half_or_twice_the_median_are_kept_anything_beyond_is_an_outlier():
    kept = robust_window([5.0, 10.0, 10.0, 10.0, 20.0])
    assert kept is not None and kept.samples == 5
    dropped = robust_window([4.9, 10.0, 10.0, 10.0, 20.1])
    assert dropped == robust_window([10.0, 10.0, 10.0])


def test_a_time_of_zero_or_less_is_no_observation_but_a_fraction_of_a_second_is():
    assert robust_window([0.0]) is None and robust_window([-1.0, 0.0]) is None
    assert robust_window([0.5]) == Evidence(low=0.375, typical=0.5, high=0.625, samples=1)
    durations = Durations()
    for seconds in (0.0, -2.0, float("nan")):  # a clock step back, a broken stamp
        durations.add(GROK, seconds)
    assert durations.evidence(GROK) is None
    durations.add(GROK, 0.5)
    evidence = durations.evidence(GROK)
    assert evidence is not None and evidence.typical == 0.5


def test_only_the_50_most_recent_times_of_a_model_and_duration_count():
    # A model that became twice as fast: 50 tasks later, its old times are forgotten.
    durations = Durations()
    for seconds in [20.0] * 50 + [10.0] * 49:
        durations.add(GROK, seconds)
    evidence = durations.evidence(GROK)
    assert evidence is not None and evidence.samples == 50  # one 20 s left: twice 10, kept
    durations.add(GROK, 10.0)
    assert durations.evidence(GROK) == robust_window([10.0] * 50)


def test_a_599_s_outlier_among_10_s_tasks_does_not_move_the_estimate():
    times = [10.0 + (i % 5) * 0.1 for i in range(20)]
    assert robust_window([*times, 599.0]) == robust_window(times)
    assert robust_window([*times, 0.4]) == robust_window(times)


def test_a_model_not_seen_yet_gets_its_catalog_time_scaled_as_the_others_ran_a_wide_prior():
    catalog = {GROK: 40.0, ("grok-video-3", 15): 80.0, ("veo3.1", None): 60.0}
    durations = Durations(catalog.get)
    assert durations.evidence(("grok-video-3", 15)) is None  # nothing seen at all
    for _ in range(3):
        durations.add(GROK, 1.2)  # the service runs at 0.03 of the catalog's times
    prior = durations.evidence(("grok-video-3", 15))
    assert prior is not None and prior.samples == 0
    assert prior.typical == pytest.approx(2.4) and prior.low < 2.4 * 0.6 < 2.4 * 1.4 < prior.high
    assert durations.evidence(("unknown-model", 5)) is None  # no catalog time to scale


def test_the_prior_spans_half_to_one_and_a_half_times_the_scaled_catalog_time():
    # grok 5 s ran at 1.2 s against the catalog's 40 s (x 0.03): grok 15 s (80 s in the
    # catalog) is expected at 2.4 s, somewhere between 1.2 and 3.6 s.
    durations = Durations({GROK: 40.0, ("grok-video-3", 15): 80.0}.get)
    durations.add(GROK, 1.2)
    prior = durations.evidence(("grok-video-3", 15))
    assert prior is not None and prior.samples == 0
    assert (prior.low, prior.typical, prior.high) == pytest.approx((1.2, 2.4, 3.6))


def test_the_scale_is_the_median_over_models_of_their_time_against_the_catalogs():
    # Three models ran at 0.02, 0.03 and 0.05 of their catalog times: a fourth is expected
    # at 0.03 of its own. Times of a model the catalog does not know, and a time of 0,
    # say nothing about the scale.
    a, b, c, new = ("a", 5), ("b", 5), ("c", 5), ("new", 5)
    catalog = {a: 40.0, b: 40.0, c: 40.0, new: 100.0, GROK: 40.0}
    durations = Durations(catalog.get)
    for key, seconds in [(a, 0.8), (b, 1.2), (c, 2.0), (("unknown", 5), 100.0), (GROK, 0.0)]:
        durations.add(key, seconds)
    assert durations.scale() == pytest.approx(0.03)
    prior = durations.evidence(new)
    assert prior is not None and prior.typical == pytest.approx(3.0)


def test_times_readings_and_evidence_are_values_nothing_can_change_afterwards():
    for value in (Started(0.0, 0.1), Reading(1.0, 1.1, 10), TEN_S):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, dataclasses.fields(value)[0].name, 5.0)


# ---------------------------------------------------------------------------- the schedule


def test_a_fresh_task_with_no_evidence_is_polled_after_the_interval_not_the_catalog_time():
    # The catalog says 40 s; the sandbox at test scale takes 1.2 s: it is never waited on.
    assert next_poll_delay(0.0, AT_ZERO, None, None, 0.1) == 0.1
    assert next_poll_delay(1.0, AT_ZERO, None, None, 0.1, last_asked=0.95) == pytest.approx(0.05)


def test_with_no_evidence_the_spacing_grows_with_a_twentieth_of_the_tasks_age():
    # 200 s old at real scale: the next poll 10 s after the last one, not 5.
    delay = next_poll_delay(200.0, AT_ZERO, None, None, 5.0, last_asked=200.0)
    assert delay == pytest.approx(GROWTH_UNKNOWN * 200.0)


def test_with_no_evidence_the_age_counts_from_the_submission_not_the_clocks_origin():
    # Submitted at 1000 s on the clock, 200 s old at 1200: 10 s, as in the test above.
    started = Started(1000.0, 1000.0)
    assert next_poll_delay(1200.0, started, None, None, 5.0, last_asked=1200.0) == 10.0


def test_before_the_evidence_window_it_polls_sparsely_halving_the_distance():
    # Tasks of 9-11 s: at 1 s, wait half of the 8 s to 9 s; at 8.3 s, half of 0.7 s; at
    # 8.85 s, less than two intervals before the window, poll right at its start.
    assert next_poll_delay(1.0, AT_ZERO, TEN_S, None, 0.1, last_asked=1.0) == pytest.approx(4.0)
    assert next_poll_delay(8.3, AT_ZERO, TEN_S, None, 0.1, last_asked=8.3) == pytest.approx(0.35)
    assert next_poll_delay(8.85, AT_ZERO, TEN_S, None, 0.1, last_asked=8.8) == pytest.approx(0.15)


def test_up_to_two_intervals_before_the_window_it_polls_right_at_its_start():
    # Interval 0.5 s, the window opens at 9 s. At 8 s, exactly two intervals before: poll
    # at 9 s. At 7.75 s (2.5 intervals before): half-way, 0.625 s later.
    assert next_poll_delay(8.0, AT_ZERO, TEN_S, None, 0.5, last_asked=8.0) == 1.0
    assert next_poll_delay(7.75, AT_ZERO, TEN_S, None, 0.5, last_asked=7.75) == 0.625


def test_the_evidence_window_includes_its_start_and_its_end():
    # The evidence alone: at 9 s (its start) and at 11 s (its end) the next poll is one
    # interval after the previous one; at 12 s, 1 s past the end, a fifth of that later.
    at_start = evidence_poll(9.0, AT_ZERO, TEN_S, 0.1, previous=8.95, watching=0.0)
    at_end = evidence_poll(11.0, AT_ZERO, TEN_S, 0.1, previous=10.95, watching=0.0)
    past = evidence_poll(12.0, AT_ZERO, TEN_S, 0.1, previous=11.95, watching=0.0)
    assert (at_start, at_end, past) == pytest.approx((9.05, 11.05, 12.15))
    assert next_poll_delay(9.0, AT_ZERO, TEN_S, None, 0.1, last_asked=8.95) == pytest.approx(0.05)
    assert next_poll_delay(11.0, AT_ZERO, TEN_S, None, 0.1, last_asked=10.95) == pytest.approx(0.05)


def test_within_the_window_the_evidence_polls_one_interval_after_the_last_ask():
    assert evidence_poll(9.53, AT_ZERO, TEN_S, 0.1, previous=9.5, watching=0.0) == pytest.approx(
        9.6
    )


def test_within_the_evidence_window_it_polls_every_interval_from_the_last_ask():
    # Asked at 9.5, answered at 9.53: the next ask is 9.6, whatever the round trip took.
    delay = next_poll_delay(9.53, AT_ZERO, TEN_S, None, 0.1, last_asked=9.5)
    assert delay == pytest.approx(0.07)


def test_past_the_evidence_window_the_spacing_grows_with_the_overrun():
    # Expected by 11 s, still running at 21 s: poll 2 s (a fifth of the overrun) later.
    delay = next_poll_delay(21.0, AT_ZERO, TEN_S, None, 0.1, last_asked=21.0, watching=0.0)
    assert delay == pytest.approx(2.0)


def test_a_task_taken_over_on_resume_long_after_its_window_is_polled_at_once_then_less_often():
    # Submitted 600 s ago (the process was down); this process started watching at 600.
    first = next_poll_delay(600.0, AT_ZERO, TEN_S, None, 0.1, watching=600.0)
    later = next_poll_delay(650.0, AT_ZERO, TEN_S, None, 0.1, last_asked=650, watching=600.0)
    assert first == pytest.approx(0.0) and later == pytest.approx(10.0)


def test_a_task_long_past_its_window_or_with_no_evidence_is_still_polled_once_a_minute():
    assert next_poll_delay(5000.0, AT_ZERO, None, None, 5.0, last_asked=5000) == 60.0
    assert next_poll_delay(5000.0, AT_ZERO, TEN_S, None, 5.0, last_asked=5000) == 60.0


def test_never_later_than_the_cap_unless_the_interval_is_longer():
    assert next_poll_delay(5000.0, AT_ZERO, None, None, 5.0, last_asked=5000) == MAX_POLL_DELAY
    assert next_poll_delay(5000.0, AT_ZERO, None, None, 90.0, last_asked=5000) == 90.0


# ---------------------------------------------------------------------------- progress


def test_read_from_the_submission_a_reading_bounds_the_end_by_its_rounding():
    # 80 % after 8 s means 80-81 % done: the end is between 8/0.81 and 8/0.80 s.
    window = hypothesis_window("from-submission", AT_ZERO, [Reading(8.0, 8.0, 80)])
    assert window is not None
    assert math.isclose(window[0], 800 / 81) and window[1] == 10.0


def test_not_knowing_when_the_task_started_or_was_read_widens_the_window():
    window = hypothesis_window("from-submission", Started(0.0, 1.0), [Reading(8.0, 8.4, 80)])
    assert window is not None
    assert math.isclose(window[0], 1 + 7 * 100 / 81) and math.isclose(window[1], 10.5)


def test_readings_together_bound_the_end_tighter_than_each_alone():
    first, second = Reading(7.55, 7.55, 75), Reading(9.3, 9.3, 93)
    window = hypothesis_window("from-submission", AT_ZERO, [first, second])
    assert window is not None
    assert math.isclose(window[0], 755 / 76) and math.isclose(window[1], 10.0)


def test_a_reading_of_1_percent_already_bounds_the_end():
    # 1-2 % after 1 s: the end is between 1 + 98 / 2 and 1 + 99 / 1 s.
    assert hypothesis_window("from-submission", AT_ZERO, [Reading(1.0, 1.0, 1)]) == (50.0, 100.0)


def test_readings_of_0_and_100_percent_are_not_read():
    # 0 % is a task still pending: it is no onset, a later reading has nothing to pair with.
    pending = [Reading(1.0, 1.0, 0), Reading(5.0, 5.0, 50)]
    assert verdicts(AT_ZERO, pending, (9.0, 10.0))["from-onset"] is None
    # 100 % while still running says nothing of when the task will answer "completed".
    half = [Reading(5.0, 5.0, 50)]
    finishing = [*half, Reading(9.9, 9.9, 100)]
    assert hypothesis_window("from-submission", AT_ZERO, finishing) == hypothesis_window(
        "from-submission", AT_ZERO, half
    )


def test_a_reading_asked_as_the_submission_was_answered_bounds_nothing():
    # No time known to have passed since the start: the rate could be anything.
    reading = Reading(1.0, 1.5, 50)
    assert hypothesis_window("from-submission", Started(0.0, 1.0), [reading]) is None


def test_read_from_an_onset_the_first_reading_is_a_point_of_the_line_within_its_rounding():
    # 20-21 % at 4 s, 45-46 % at 6 s: 24 to 26 points in 2 s, 12 to 13 % a second; the
    # 54-55 points left take 54 / 13 to 55 / 12 s more.
    readings = [Reading(4.0, 4.0, 20), Reading(6.0, 6.0, 45)]
    window = hypothesis_window("from-onset", AT_ZERO, readings)
    assert window is not None
    assert window == pytest.approx((6 + 54 / 13, 6 + 55 / 12), rel=1e-12)


SENT_AT_100 = Started(100.0, 100.0)


def local(*readings: tuple[float, int]) -> tuple[float, float] | None:
    """The "local" window of readings (moment, %) of a task submitted at 100 s."""
    return hypothesis_window("local", SENT_AT_100, [Reading(t, t, p) for t, p in readings])


def test_read_locally_the_last_reading_and_the_one_before_fix_the_line():
    # 80-81 % at 108 s, 90-91 % at 109 s: 9 to 11 points a second; 9-10 points left.
    assert local((108.0, 80), (109.0, 90)) == pytest.approx((109 + 9 / 11, 109 + 10 / 9))


def test_read_locally_a_reading_less_than_5_points_below_the_last_is_skipped():
    # 87 % is too close to 90 % for whole percents to give a rate: 80 % is the anchor.
    assert local((108.0, 80), (108.7, 87), (109.0, 90)) == local((108.0, 80), (109.0, 90))
    assert local((108.5, 85), (109.0, 90)) == pytest.approx((109.75, 110.25))  # 5 below: used


def test_read_locally_a_reading_30_points_below_the_last_is_the_farthest_used():
    assert local((108.0, 60), (109.0, 90)) == pytest.approx((109 + 9 / 31, 109 + 10 / 29))
    assert local((108.0, 59), (109.0, 90)) is None


def test_read_locally_a_reading_older_than_30_percent_of_the_tasks_age_is_not_used():
    # The last reading at 110 s, 10 s after the submission: readings answered from 107 s on.
    assert local((107.0, 80), (110.0, 90)) == pytest.approx((110 + 9 / (11 / 3), 110 + 10 / 3))
    assert local((106.9, 80), (110.0, 90)) is None
    asked_earlier = [Reading(106.8, 107.0, 80), Reading(110.0, 110.0, 90)]
    assert hypothesis_window("local", SENT_AT_100, asked_earlier) is not None  # answered at 107


def test_readings_that_only_just_agree_pin_the_end_to_one_moment():
    # 49-50 % at 5 s ends at 10-10.2 s; 80-81 % at 8 s at 9.88-10 s: both allow 10 s only.
    readings = [Reading(5.0, 5.0, 49), Reading(8.0, 8.0, 80)]
    assert hypothesis_window("from-submission", AT_ZERO, readings) == (10.0, 10.0)


def test_a_prediction_touching_where_the_completion_was_seen_held():
    readings = [Reading(8.0, 8.0, 80)]
    window = hypothesis_window("from-submission", AT_ZERO, readings)
    assert window is not None  # about (9.88, 10.0)
    earliest, latest = window
    held = {
        (latest, latest + 0.5): True,  # seen completed from the predicted latest end on
        (earliest - 0.5, earliest): True,  # or until the predicted earliest end
        (latest + 0.01, latest + 0.5): False,
        (earliest - 0.5, earliest - 0.01): False,
    }
    for end, expected in held.items():
        assert verdicts(AT_ZERO, readings, end)["from-submission"] is expected, end


def test_a_way_of_reading_progress_is_trusted_after_three_tasks_not_two():
    trust = ProgressTrust()
    trust.record("m", {"local": True})
    trust.record("m", {"local": True})
    assert trust.trusted("m") == []
    trust.record("m", {"local": True})
    assert trust.trusted("m") == ["local"]


def readings_of(mode: str, total: float, moments: list[float], draw: float = 0.5) -> list[Reading]:
    """What the sandbox's own progress curve says at those moments (asked = answered)."""
    return [Reading(t, t, task_state(mode, t, total, draw)[1]) for t in moments]


def test_after_a_pending_phase_the_onset_reading_finds_the_end_and_the_submission_one_is_wrong():
    # pending-linear: pending for 2 s of a 10 s task, then 0 -> 99 % over 8 s.
    readings = readings_of("pending-linear", 10.0, [4.0, 6.0, 9.5])
    onset = hypothesis_window("from-onset", AT_ZERO, readings)
    assert onset is not None and onset[0] <= 10.0 <= onset[1] and onset[1] - onset[0] < 0.3
    submission = hypothesis_window("from-submission", AT_ZERO, readings)
    assert submission is None or not submission[0] <= 10.0 <= submission[1]


def test_near_the_end_a_curved_progress_is_read_as_locally_linear():
    readings = readings_of("slow-start", 10.0, [5.0, 8.5, 9.0, 9.4, 9.7])
    window = hypothesis_window("local", AT_ZERO, readings)
    assert window is not None and window[0] <= 10.0 <= window[1] and window[1] - window[0] < 0.5


def test_progress_stuck_at_99_contradicts_reading_it_from_the_submission():
    readings = readings_of("stuck", 10.0, [1.5, 2.5, 4.0, 6.0])  # 99 % from 3 s on
    assert hypothesis_window("from-submission", AT_ZERO, readings) is None


def test_a_way_of_reading_progress_is_judged_by_whether_it_predicted_the_completion():
    readings = readings_of("linear", 10.0, [4.0, 9.5])
    assert verdicts(AT_ZERO, readings, (9.5, 10.05)) == {
        "from-submission": True,
        "from-onset": True,
        "local": None,  # 40 -> 95 %: no reading 5 to 30 points below the last, recently
    }
    late = verdicts(AT_ZERO, readings_of("pending-linear", 10.0, [4.0, 9.5]), (9.5, 10.05))
    assert late["from-submission"] is False and late["from-onset"] is True
    assert verdicts(AT_ZERO, readings_of("none", 10.0, [4.0, 9.5]), (9.5, 10.05)) == {
        "from-submission": None,
        "from-onset": None,
        "local": None,
    }


def test_a_way_of_reading_progress_is_trusted_after_holding_three_times_running_per_model():
    trust = ProgressTrust()
    for _ in range(TRUST_AFTER - 1):
        trust.record("m", {"from-submission": True, "from-onset": None})
    assert trust.trusted("m") == []
    trust.record("m", {"from-submission": True})
    assert trust.trusted("m") == ["from-submission"]
    trust.record("m", {"from-submission": False})  # one miss and it starts over
    assert trust.trusted("m") == []


def test_a_model_borrows_the_services_record_until_it_has_its_own():
    trust = ProgressTrust()
    for model in ("a", "b", "c"):
        trust.record(model, {"from-onset": True})
    assert trust.trusted("new") == ["from-onset"]  # the service's last three held
    trust.record("new", {"from-onset": True})
    assert trust.trusted("new") == ["from-onset"]
    trust.record("odd", {"from-onset": False})  # its own task contradicted it
    assert trust.trusted("odd") == [] and trust.trusted("new") == []  # the service's too


def test_a_trusted_reading_a_task_contradicts_is_set_aside_for_that_task():
    readings = readings_of("pending-linear", 10.0, [4.0, 6.0, 9.5])
    onset = hint_window(["from-onset"], AT_ZERO, readings)
    assert onset is not None
    assert hint_window(["from-onset", "from-submission"], AT_ZERO, readings) == onset
    assert hint_window(["from-submission"], AT_ZERO, readings) is None


# ---------------------------------------------------------------------------- hints


def test_a_sharp_trusted_hint_lands_the_poll_on_the_predicted_end():
    # Evidence: poll every 0.1 s from 9 s; the hint says the end is in [9.93, 10.0].
    delay = next_poll_delay(9.8, AT_ZERO, TEN_S, (9.93, 10.0), 0.1, last_asked=9.8)
    assert delay == pytest.approx(0.2)


def test_a_hint_wider_than_an_interval_is_not_used():
    delay = next_poll_delay(9.5, AT_ZERO, TEN_S, (9.9, 10.5), 0.1, last_asked=9.5)
    assert delay == pytest.approx(0.1)


def test_stuck_at_99_still_polls_within_the_learned_window():
    readings = readings_of("stuck", 10.0, [1.5, 2.5, 5.0, 9.0])
    hint = hint_window(["from-submission", "from-onset", "local"], AT_ZERO, readings)
    for now in (9.0, 9.5, 10.9):
        delay = next_poll_delay(now, AT_ZERO, TEN_S, hint, 0.1, last_asked=now)
        assert delay <= 0.2 + 1e-9


@settings(max_examples=300, deadline=None)
@given(
    now=st.floats(0, 30),
    since_ask=st.floats(0, 1),
    hint_start=st.floats(0, 30),
    hint_width=st.floats(0, 2),
    interval=st.sampled_from([0.01, 0.1, 1.0, 5.0]),
)
def test_no_hint_holds_a_poll_more_than_one_interval_past_the_evidence_schedule(
    now, since_ask, hint_start, hint_width, interval
):
    last = now - since_ask
    plain = next_poll_delay(now, AT_ZERO, TEN_S, None, interval, last_asked=last)
    hinted = next_poll_delay(
        now, AT_ZERO, TEN_S, (hint_start, hint_start + hint_width), interval, last_asked=last
    )
    assert hinted <= plain + interval + 1e-9
    assert now + hinted >= last + interval - 1e-9  # the interval between two polls holds


# The clock's origin is arbitrary (the scheduler's is the epoch, the simulator's 0): only
# differences of times count. Each case below runs at three origins.
ORIGINS = pytest.mark.parametrize("t0", [0.0, 1000.0, -1000.0])


@ORIGINS
def test_a_hint_far_ahead_brings_the_poll_one_interval_before_its_earliest_end(t0):
    # Polled at t0 + 1 every 0.25 s; the hint says 1.625-1.7 s: refine it with a reading
    # one interval before its earliest end, at 1.375 (so the next poll can land on 1.625).
    started = Started(t0, t0)
    hint = (t0 + 1.625, t0 + 1.7)
    delay = next_poll_delay(t0 + 1.0, started, None, hint, 0.25, last_asked=t0 + 1.0)
    assert delay == pytest.approx(0.375)


@ORIGINS
def test_a_hint_that_may_end_within_two_intervals_brings_the_poll_half_way_to_its_latest(t0):
    # The hint says 1.45-1.6 s: the earliest end is closer than two intervals, the latest
    # farther: poll half-way to the latest (at 1.3), where a reading narrows it again.
    started = Started(t0, t0)
    hint = (t0 + 1.45, t0 + 1.6)
    delay = next_poll_delay(t0 + 1.0, started, None, hint, 0.25, last_asked=t0 + 1.0)
    assert delay == pytest.approx(0.3)


@ORIGINS
def test_a_hint_ending_within_two_intervals_brings_the_poll_to_its_latest_end(t0):
    # The hint says 1.4-1.5 s: one poll at 1.5 is certain to see the completion.
    started = Started(t0, t0)
    hint = (t0 + 1.4, t0 + 1.5)
    delay = next_poll_delay(t0 + 1.0, started, None, hint, 0.25, last_asked=t0 + 1.0)
    assert delay == pytest.approx(0.5)


@ORIGINS
def test_a_poll_that_cannot_reach_the_hints_end_lands_one_interval_before_it(t0):
    # Last asked at 0.875: the evidence polls at 1.125, a hint may hold that by one interval,
    # to 1.375. The hint says 1.3-1.45 s: a poll at 1.375 would miss the end, and the next
    # could not come before 1.625. Poll at 1.2 instead, so the next lands on 1.45.
    started = Started(t0, t0)
    hint = (t0 + 1.3, t0 + 1.45)
    delay = next_poll_delay(t0 + 1.0, started, None, hint, 0.25, last_asked=t0 + 0.875)
    assert delay == pytest.approx(0.2)


@ORIGINS
def test_a_hint_whose_window_has_begun_brings_the_poll_to_its_latest_end(t0):
    # The evidence (9-11 s) would poll at 7 s; the hint says 4.9375-5.125 s, and it is 5 s.
    started = Started(t0, t0)
    begun = (t0 + 4.9375, t0 + 5.125)
    last = t0 + 4.8125
    assert next_poll_delay(t0 + 5.0, started, TEN_S, None, 0.25, last_asked=last) == 2.0
    assert next_poll_delay(t0 + 5.0, started, TEN_S, begun, 0.25, last_asked=last) == 0.125
    # A hint ending right now: poll as soon as the interval allows (at 5.0625).
    ending = (t0 + 4.9375, t0 + 5.0)
    assert next_poll_delay(t0 + 5.0, started, TEN_S, ending, 0.25, last_asked=last) == 0.0625


@ORIGINS
def test_a_hint_exactly_one_interval_wide_is_used(t0):
    # As above, the evidence would poll at 7 s. A hint of 5.25-5.5 s (one interval) moves
    # the poll to its latest end; one 2^-10 s wider is not sharp enough to be used.
    started = Started(t0, t0)
    last = t0 + 4.8125
    one_interval = (t0 + 5.25, t0 + 5.5)
    wider = (t0 + 5.25, t0 + 5.5 + 2**-10)
    assert next_poll_delay(t0 + 5.0, started, TEN_S, one_interval, 0.25, last_asked=last) == 0.5
    assert next_poll_delay(t0 + 5.0, started, TEN_S, wider, 0.25, last_asked=last) == 2.0


def test_two_intervals_from_a_hints_end_means_two_intervals_give_or_take_rounding():
    # EPSILON (1e-9 s) is rounding, not time. An earliest end two intervals minus EPSILON
    # away is two intervals away: refine one interval before it (the interval allows no
    # sooner than 0.25). A latest end two intervals plus EPSILON away is two intervals away:
    # one poll there sees the end (the bound, 0.5, is that end within rounding).
    ahead = (0.5 - 1e-9, 0.5 - 1e-9)
    assert next_poll_delay(0.0, AT_ZERO, None, ahead, 0.25) == 0.25
    within = (0.3, 0.5 + 1e-9)
    assert next_poll_delay(0.0, AT_ZERO, None, within, 0.25) == 0.5


# ---------------------------------------------------------------------------- what a run learns


def test_times_from_a_task_followed_across_a_resume_are_not_learned():
    learned = Learned()
    taken_over = Follow(Started(-599.0, -599.0), watching=0.0, own=False)
    taken_over.running(0.0, 0.01, 99)
    assert learned.completed(GROK, taken_over, 0.5) is None
    assert learned.durations.evidence(GROK) is None and learned.expected(GROK) is None


def test_a_task_followed_from_its_submission_teaches_the_middle_of_where_it_ended():
    learned = Learned()
    follow = Follow(Started(0.0, 0.05), watching=0.05, own=True)
    follow.running(9.9, 9.92, None)
    assert learned.completed(GROK, follow, 10.02) == pytest.approx(9.96)
    assert learned.expected(GROK) == pytest.approx(9.96)


def test_a_task_that_never_ends_keeps_its_first_reading_and_the_most_recent_ones():
    follow = Follow(AT_ZERO, watching=0.0, own=True)
    for i in range(1000):
        follow.running(float(i), float(i), 50)
    assert len(follow.readings) == KEEP_READINGS == 200
    assert follow.readings[0].asked == 0.0 and follow.readings[1].asked == 1000 - KEEP_READINGS + 1


def test_the_time_learned_counts_from_the_submission_not_the_clocks_origin():
    learned = Learned()
    follow = Follow(Started(100.0, 100.05), watching=100.05, own=True)
    follow.running(109.9, 109.92, None)
    assert learned.completed(GROK, follow, 110.02) == pytest.approx(9.96)


def test_a_model_whose_own_task_contradicted_a_reading_gets_no_hint_from_the_services():
    # Tasks of 10 s; a reading of 95 % at 9.5 s, read from the submission, puts the end
    # at 9.90-10.0 s: trusted, it moves the poll from 9.7 to half-way to 10.0 (9.75).
    def delay_at_95_percent(learned: Learned) -> float:
        follow = Follow(AT_ZERO, watching=0.0, own=True)
        follow.running(9.5, 9.5, 95)
        return learned.delay(GROK, follow, 9.5, 0.2)

    trusting = Learned(history={GROK: [10.0] * 20})
    for _ in range(3):
        trusting.trust.record(GROK[0], {"from-submission": True})
    assert delay_at_95_percent(trusting) == pytest.approx(0.25)
    contradicted = Learned(history={GROK: [10.0] * 20})
    contradicted.trust.record(GROK[0], {"from-submission": False})
    for model in ("a", "b", "c"):  # the service's last three tasks: it held
        contradicted.trust.record(model, {"from-submission": True})
    assert contradicted.trust.trusted("new") == ["from-submission"]
    assert contradicted.trust.trusted(GROK[0]) == []
    assert delay_at_95_percent(contradicted) == pytest.approx(0.2)  # the evidence alone


def test_the_ledgers_history_is_evidence_from_the_start():
    learned = Learned(history={GROK: [10.0, 10.2, 9.8]})
    evidence = learned.durations.evidence(GROK)
    assert evidence is not None and evidence.typical == pytest.approx(10.0)


def test_the_eta_spreads_the_work_left_over_the_slots_but_waits_for_the_longest_task():
    assert eta_seconds([2.0, 4.0, 6.0], [(10.0, 3)], 3) == pytest.approx(14.0)
    assert eta_seconds([50.0], [(1.0, 3)], 3) == 50.0
    assert eta_seconds([], [], 3) == 0.0


def test_the_eta_of_one_slot_is_all_the_work_left_and_no_slot_counts_as_one():
    assert eta_seconds([1.0], [(10.0, 2)], 1) == 21.0
    assert eta_seconds([1.0], [(10.0, 2)], 0) == 21.0  # never a division by zero


# ---------------------------------------------------------------------------- whole tasks


def follow_task(mode: str, total: float, learned: Learned, interval: float, rtt: float):
    """Poll one simulated task by the real pacing: (how late its end was seen, polls)."""
    follow = Follow(Started(0.0, rtt), watching=rtt, own=True)
    now, polls = rtt, 0
    while True:
        asked = now + learned.delay(GROK, follow, now, interval)
        moment, now = asked + rtt / 2, asked + rtt
        polls += 1
        if moment >= total:
            learned.completed(GROK, follow, now)
            return now - total, polls
        follow.running(asked, now, task_state(mode, moment, total, 0.5)[1])


def test_a_pending_phase_of_20_percent_never_makes_the_wait_exceed_one_interval_more():
    # A model whose progress read linear from the submission (so that reading is trusted)
    # now answers `pending` for the first 20 % of each task: read from the submission,
    # its progress points past the real end. Kept trusted on purpose, task after task, it
    # still never holds a completion more than one interval past what the evidence allows.
    rng = random.Random(3)
    learned = Learned(history={GROK: [rng.uniform(9, 11) for _ in range(20)]})
    for _ in range(30):
        for _ in range(TRUST_AFTER):
            learned.trust.record(GROK[0], {"from-submission": True})
        assert "from-submission" in learned.trust.trusted(GROK[0])
        late, _ = follow_task("pending-linear", rng.uniform(9, 11), learned, 0.1, 0.004)
        assert late <= 2 * 0.1 + 0.004 + 1e-9


@pytest.mark.parametrize(
    "mode",
    ["linear", "pending-linear", "random-pending", "none", "steps"]
    + ["fast-start", "slow-start", "stuck"],
)
def test_in_every_progress_behaviour_a_learned_task_is_seen_soon_with_few_polls(mode):
    # Ten-second tasks (± 10 %) polled at most every 0.1 s: a script polling every
    # interval sees each end 0.05 s late on average, after ~100 polls.
    rng = random.Random(7)
    learned = Learned()
    results = [follow_task(mode, rng.uniform(9, 11), learned, 0.1, 0.004) for _ in range(40)]
    late = [lag for lag, _ in results[10:]]
    polls = [n for _, n in results[10:]]
    assert max(late) <= 0.1 + 0.004 + 1e-9  # never later than one interval and a round trip
    assert sum(late) / len(late) <= 0.06
    assert max(polls) <= 40
