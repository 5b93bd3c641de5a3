"""Each progress behaviour of the sandbox (PRODUCT.md §2, §8), as the pure function the
sandbox and the pacing simulator share; and the sandbox answering by it over HTTP."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from batchgen.cli import cli
from batchgen.progress_curves import PROGRESS_MODES, RANDOM_PENDING_MAX, task_state
from batchgen.sandbox import SandboxConfig
from tests.sandbox_fixtures import ManualClock

TOTAL = 10.0
MOMENTS = [i * TOTAL / 200 for i in range(200)]  # every 1/200 of the task, before its end


def curve(mode: str, draw: float = 0.5) -> list[tuple[str, int | None]]:
    return [task_state(mode, t, TOTAL, draw) for t in MOMENTS]


def progress_at(mode: str, share: float, draw: float = 0.5) -> int | None:
    return task_state(mode, share * TOTAL, TOTAL, draw)[1]


@pytest.mark.parametrize("mode", PROGRESS_MODES)
def test_every_mode_is_pending_then_processing_never_100_and_never_going_back(mode):
    states = curve(mode)
    statuses = [s for s, _ in states]
    assert statuses[0] == "pending" and statuses[-1] == "processing"
    assert statuses == sorted(statuses, key=["pending", "processing"].index)
    values = [p for _, p in states if p is not None]
    assert values == sorted(values) and all(0 <= p <= 99 for p in values)


def test_linear_is_the_share_of_time_since_submission_after_a_tenth_pending():
    assert task_state("linear", 0.5, TOTAL, 0.5) == ("pending", 0)
    assert task_state("linear", 1.0, TOTAL, 0.5) == ("processing", 10)
    assert progress_at("linear", 0.4567) == 45 and progress_at("linear", 0.9999) == 99


def test_pending_linear_waits_a_fifth_then_rises_from_0_to_99_over_the_rest():
    assert task_state("pending-linear", 1.9, TOTAL, 0.5) == ("pending", 0)
    assert task_state("pending-linear", 2.0, TOTAL, 0.5) == ("processing", 0)
    assert progress_at("pending-linear", 0.61) == 51 and progress_at("pending-linear", 0.999) == 99


def test_random_pending_waits_a_share_drawn_per_task_like_a_queue():
    def onset(draw: float) -> float:
        return next(
            t for t in MOMENTS if task_state("random-pending", t, TOTAL, draw)[0] != "pending"
        )

    assert onset(0.0) == 0.0
    assert onset(0.5) == pytest.approx(RANDOM_PENDING_MAX * 0.5 * TOTAL, abs=TOTAL / 200)
    assert onset(0.99) == pytest.approx(RANDOM_PENDING_MAX * 0.99 * TOTAL, abs=TOTAL / 200)
    # then linear from 0 to 99 over the rest of the task
    assert progress_at("random-pending", 0.65, draw=0.5) == 50


def test_none_never_reports_a_progress_field():
    assert {p for _, p in curve("none")} == {None}


def test_steps_reports_only_0_25_50_75():
    assert {p for _, p in curve("steps")} == {0, 25, 50, 75}
    assert progress_at("steps", 0.49) == 25 and progress_at("steps", 0.99) == 75


def test_fast_start_runs_ahead_of_time_and_slow_start_behind_it():
    for share in (0.2, 0.5, 0.8):
        linear = progress_at("linear", share)
        assert progress_at("fast-start", share) > linear > progress_at("slow-start", share)
    assert progress_at("fast-start", 0.25) == 50 and progress_at("slow-start", 0.5) == 25


def test_stuck_reaches_99_at_30_percent_and_stays_there():
    assert progress_at("stuck", 0.15) == 50
    assert {progress_at("stuck", s) for s in (0.3, 0.5, 0.9, 0.999)} == {99}


def test_an_unknown_mode_is_refused_by_the_function_the_config_and_the_command():
    with pytest.raises(ValueError):
        task_state("sideways", 1.0, TOTAL, 0.5)
    with pytest.raises(ValueError, match="progress must be one of"):
        SandboxConfig(progress="sideways")
    result = CliRunner().invoke(cli, ["sandbox", "--progress", "sideways"])
    assert result.exit_code == 2 and "sideways" in result.output


# -- the sandbox answers by it ------------------------------------------------------------

GROK = {"model": "grok-video-3", "prompt": "A lighthouse", "duration": 5, "ratio": "1:1"}


@pytest.mark.parametrize("mode", PROGRESS_MODES)
def test_the_sandbox_answers_each_poll_by_its_modes_curve(make_sandbox, mode):
    clock = ManualClock()
    sb = make_sandbox(clock=clock, progress=mode, seed=4)
    http = sb.client()
    task_id = http.post("/api/video/generate", json=GROK).json()["taskId"]
    (task,) = sb.truth().submissions
    draw = sb.sim._tasks[task_id].progress_draw
    total = task.ends_at - task.submitted_at
    for share in (0.05, 0.15, 0.35, 0.55, 0.75, 0.95):
        clock.now = task.submitted_at + share * total
        status, progress = task_state(mode, clock.now - task.submitted_at, total, draw)
        expected = {"status": status, "type": "video"}
        if progress is not None:
            expected["progress"] = progress
        assert http.get(f"/api/video/tasks/{task_id}").json() == expected
    clock.now = task.ends_at
    assert http.get(f"/api/video/tasks/{task_id}").json()["status"] == "completed"


def test_random_pending_is_the_same_under_the_same_seed_and_differs_under_another(make_sandbox):
    def onsets(seed: int) -> list[int]:
        clock = ManualClock()
        sb = make_sandbox(clock=clock, progress="random-pending", seed=seed, jitter=0.0)
        with sb.client() as http:
            ids = []
            for _ in range(3):
                ids.append(http.post("/api/video/generate", json=GROK).json()["taskId"])
            total = sb.truth().submissions[0].ends_at - clock.now
            start = clock.now
            pending = []
            for task_id in ids:
                steps = 0
                clock.now = start
                while http.get(f"/api/video/tasks/{task_id}").json()["status"] == "pending":
                    steps += 1
                    clock.now = start + steps * total / 100
                pending.append(steps)
        return pending

    assert onsets(1) == onsets(1) != onsets(2)


def test_the_sandbox_command_lists_every_progress_mode():
    result = CliRunner().invoke(cli, ["sandbox", "--help"])
    assert result.exit_code == 0
    assert all(mode in result.output for mode in PROGRESS_MODES)
