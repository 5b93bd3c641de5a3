"""Backoff and the adaptive poll delay, as numbers in and numbers out."""

from __future__ import annotations

import random

from batchgen.pacing import MAX_POLL_DELAY, backoff, next_poll_delay


def test_backoff_has_full_jitter_under_an_exponential_ceiling():
    rng = random.Random(1)
    for failures, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)]:
        samples = [backoff(2.0, failures, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # the whole range is used, not a fixed delay
        assert min(samples) < ceiling * 0.2


def test_first_poll_of_a_fresh_task_waits_the_poll_interval():
    assert next_poll_delay(0.0, None, None, 5.0) == 5.0


def test_near_the_predicted_end_it_polls_right_at_it():
    # 80% after 8 s: 2 s left; with a 1 s interval that is close, so poll in 2 s.
    assert next_poll_delay(8.0, 80, None, 1.0) == 2.0


def test_far_from_the_end_it_polls_at_half_the_remaining_time():
    # 10% after 10 s: 90 s left -> poll in 45 s to refine the prediction.
    assert next_poll_delay(10.0, 10, None, 1.0) == 45.0


def test_the_time_seen_for_this_model_predicts_when_no_progress_is_reported():
    assert next_poll_delay(2.0, None, 6.0, 1.0) == 4.0
    assert next_poll_delay(2.0, 0, 30.0, 1.0) == 14.0


def test_never_sooner_than_the_poll_interval_nor_later_than_the_cap():
    assert next_poll_delay(9.9, 99, None, 5.0) == 5.0
    assert next_poll_delay(100.0, 1, None, 1.0) == MAX_POLL_DELAY
    assert next_poll_delay(100.0, 1, None, 90.0) == 90.0


def test_with_nothing_to_go_on_it_backs_off_with_the_elapsed_time():
    assert next_poll_delay(20.0, None, None, 1.0) == 10.0
    assert next_poll_delay(20.0, 0, None, 1.0) == 10.0
