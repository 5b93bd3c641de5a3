"""Pacing, as numbers in and numbers out: backoff, the evidence of generation times, the
poll schedule around it, progress readings as checked hints, and what a run learns."""

from __future__ import annotations

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
    hint_window,
    hypothesis_window,
    next_poll_delay,
    robust_window,
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


# ---------------------------------------------------------------------------- evidence


def test_the_evidence_window_spans_the_times_seen_with_a_margin_shrinking_with_samples():
    one = robust_window([10.0])
    assert one == Evidence(low=7.5, typical=10.0, high=12.5, samples=1)  # ± 25 %
    many = robust_window([9.0 + i * 0.1 for i in range(21)])  # 9..11 s
    assert many is not None and many.typical == pytest.approx(10.0)
    assert 8.5 < many.low < 9.1 and 10.9 < many.high < 11.5


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


# ---------------------------------------------------------------------------- the schedule


def test_a_fresh_task_with_no_evidence_is_polled_after_the_interval_not_the_catalog_time():
    # The catalog says 40 s; the sandbox at test scale takes 1.2 s: it is never waited on.
    assert next_poll_delay(0.0, AT_ZERO, None, None, 0.1) == 0.1
    assert next_poll_delay(1.0, AT_ZERO, None, None, 0.1, last_asked=0.95) == pytest.approx(0.05)


def test_with_no_evidence_the_spacing_grows_with_a_twentieth_of_the_tasks_age():
    # 200 s old at real scale: the next poll 10 s after the last one, not 5.
    delay = next_poll_delay(200.0, AT_ZERO, None, None, 5.0, last_asked=200.0)
    assert delay == pytest.approx(GROWTH_UNKNOWN * 200.0)


def test_before_the_evidence_window_it_polls_sparsely_halving_the_distance():
    # Tasks of 9-11 s: at 1 s, wait half of the 8 s to 9 s; at 8.3 s, half of 0.7 s; at
    # 8.85 s, less than two intervals before the window, poll right at its start.
    assert next_poll_delay(1.0, AT_ZERO, TEN_S, None, 0.1, last_asked=1.0) == pytest.approx(4.0)
    assert next_poll_delay(8.3, AT_ZERO, TEN_S, None, 0.1, last_asked=8.3) == pytest.approx(0.35)
    assert next_poll_delay(8.85, AT_ZERO, TEN_S, None, 0.1, last_asked=8.8) == pytest.approx(0.15)


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
    assert len(follow.readings) == KEEP_READINGS
    assert follow.readings[0].asked == 0.0 and follow.readings[1].asked == 1000 - KEEP_READINGS + 1


def test_the_ledgers_history_is_evidence_from_the_start():
    learned = Learned(history={GROK: [10.0, 10.2, 9.8]})
    evidence = learned.durations.evidence(GROK)
    assert evidence is not None and evidence.typical == pytest.approx(10.0)


def test_the_eta_spreads_the_work_left_over_the_slots_but_waits_for_the_longest_task():
    assert eta_seconds([2.0, 4.0, 6.0], [(10.0, 3)], 3) == pytest.approx(14.0)
    assert eta_seconds([50.0], [(1.0, 3)], 3) == 50.0
    assert eta_seconds([], [], 3) == 0.0


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
