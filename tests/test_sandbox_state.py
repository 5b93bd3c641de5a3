"""A sandbox with a state file: its tasks, balances and ids outlive the process that ran
them (PRODUCT §8). Each "process" here is a new `Sandbox` on the same file; time moves
with a ManualClock, including while no sandbox runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchgen.sandbox import DEFAULT_KEY, Response, Sandbox, SandboxConfig
from batchgen.sandbox.state import StateUnusable
from tests.sandbox_fixtures import ManualClock

AUTH = {"Authorization": f"Bearer {DEFAULT_KEY}"}
GROK = {"model": "grok-video-3", "prompt": "A lighthouse", "duration": 5, "ratio": "1:1"}


def submit(sim: Sandbox, n: int = 0) -> Response:
    body = {**GROK, "prompt": f"A lighthouse, take {n}"}
    return sim.handle("POST", "/api/video/generate", AUTH, json.dumps(body).encode())


def answer(response: Response) -> dict[str, Any]:
    assert isinstance(response.body, bytes)
    return json.loads(response.body)


def poll(sim: Sandbox, task_id: str) -> dict[str, Any]:
    response = sim.handle("GET", f"/api/video/tasks/{task_id}", AUTH)
    assert response.status == 200, response
    return answer(response)


def test_tasks_created_before_a_crash_answer_the_next_sandbox_and_end_on_their_own_time(
    tmp_path,
):
    state, clock = tmp_path / "ledger.db.sandbox.json", ManualClock()
    first = Sandbox(SandboxConfig(seed=3), clock=clock, state=state)
    task_ids = [answer(submit(first, n))["taskId"] for n in range(3)]
    ends = {s.task_id: s.ends_at for s in first.truth().submissions}
    balance = first.balance(DEFAULT_KEY)
    del first  # the process dies: nothing is written at its end

    clock.advance(1)  # time passes with no sandbox running
    second = Sandbox(SandboxConfig(seed=99), clock=clock, state=state)
    assert [poll(second, t)["status"] for t in task_ids] == ["pending"] * 3
    assert second.active_tasks(DEFAULT_KEY) == 3
    assert submit(second, 3).status == 429  # the three slots are still taken
    assert second.balance(DEFAULT_KEY) == balance

    clock.advance(max(ends.values()))  # they end on the schedule they were given
    assert [poll(second, t)["status"] for t in task_ids] == ["completed"] * 3
    fourth = answer(submit(second, 3))["taskId"]
    assert fourth not in task_ids  # ids are never handed out twice
    truth = second.truth()
    assert [s.task_id for s in truth.submissions] == [*task_ids, fourth]
    assert {s.task_id: s.ends_at for s in truth.submissions[:3]} == ends
    assert truth.charged_micros() == 4 * 100_000 and truth.peak_active == {DEFAULT_KEY: 3}


def test_a_reloaded_sandbox_hands_out_the_ids_and_decisions_one_process_would_have(tmp_path):
    """Its seed is the saved one, and its dice go on where they were: stopping and starting
    a sandbox does not change what it does."""
    clock = ManualClock()
    whole = Sandbox(SandboxConfig(seed=5, fail_rate=0.5), clock=clock)
    state = tmp_path / "state.json"
    halves = Sandbox(SandboxConfig(seed=5, fail_rate=0.5), clock=clock, state=state)
    for n in range(8):
        if n == 4:
            halves = Sandbox(SandboxConfig(seed=6, fail_rate=0.5), clock=clock, state=state)
        assert submit(halves, n) == submit(whole, n)
        clock.advance(1000)
    assert halves.truth().submissions == whole.truth().submissions


def test_a_failed_task_that_ends_while_no_sandbox_runs_is_refunded_once(tmp_path):
    state, clock = tmp_path / "state.json", ManualClock()
    first = Sandbox(SandboxConfig(fail_rate=1.0), clock=clock, state=state)
    task_id = answer(submit(first))["taskId"]
    start = first.balance(DEFAULT_KEY)

    clock.advance(1000)
    second = Sandbox(SandboxConfig(fail_rate=1.0), clock=clock, state=state)
    assert poll(second, task_id)["status"] == "failed"
    assert second.balance(DEFAULT_KEY) == start + 100_000
    third = Sandbox(SandboxConfig(fail_rate=1.0), clock=clock, state=state)
    assert third.balance(DEFAULT_KEY) == start + 100_000
    assert third.truth().refunded_micros() == 100_000


def test_a_top_up_is_kept_and_a_key_the_state_does_not_know_starts_from_the_config(tmp_path):
    state, clock = tmp_path / "state.json", ManualClock()
    Sandbox(SandboxConfig(), clock=clock, state=state).top_up(DEFAULT_KEY, 5_000_000)
    keys = {DEFAULT_KEY: 0, "okpk_other": 7_000_000}
    again = Sandbox(SandboxConfig(keys=keys), clock=clock, state=state)
    assert again.balance(DEFAULT_KEY) == 105_000_000
    assert again.balance("okpk_other") == 7_000_000


def test_a_write_cut_short_leaves_the_last_whole_state(tmp_path):
    """The file is replaced by a rename: a process killed while writing leaves a partial
    temporary file, never a partial state."""
    state, clock = tmp_path / "state.json", ManualClock()
    task_id = answer(submit(Sandbox(SandboxConfig(), clock=clock, state=state)))["taskId"]
    (tmp_path / "state.json.tmp").write_text('{"format": "batchgen-sandbox-st')

    again = Sandbox(SandboxConfig(), clock=clock, state=state)
    assert [s.task_id for s in again.truth().submissions] == [task_id]
    submit(again, 1)
    assert len(Sandbox(SandboxConfig(), clock=clock, state=state).truth().submissions) == 2


@pytest.mark.parametrize(
    "text",
    ["", "{not json", "[]", '{"format": "something else"}', '{"format": "batchgen-sandbox-state"}'],
)
def test_a_file_that_is_not_a_sandbox_state_is_refused_naming_it(tmp_path, text):
    state = tmp_path / "state.json"
    state.write_text(text)
    with pytest.raises(StateUnusable, match=str(state)):
        Sandbox(SandboxConfig(), clock=ManualClock(), state=state)
    assert state.read_text() == text  # left as it was, for a person to look at


def test_without_a_state_file_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    submit(Sandbox(SandboxConfig(), clock=ManualClock()))
    assert list(Path(tmp_path).iterdir()) == []


def test_a_task_refused_for_its_output_is_refused_still_after_the_sandbox_restarts(tmp_path):
    """Its refusal is kept with it: the next sandbox answers it failed with the content
    message (a plain "Generation failed" would have it submitted again)."""
    state, clock = tmp_path / "state.json", ManualClock()
    first = Sandbox(SandboxConfig(refuse_rate=1.0), clock=clock, state=state)
    answers = [submit(first, n) for n in range(8)]
    accepted = [answer(a)["taskId"] for a in answers if a.status == 200]
    assert accepted and len(accepted) < 8  # some refused at submit, some for their output
    del first

    clock.advance(1000)
    second = Sandbox(SandboxConfig(), clock=clock, state=state)
    for task_id in accepted:
        polled = poll(second, task_id)
        assert polled["status"] == "failed" and "SAFETY.OUTPUT" in polled["errorMessage"]
    assert second.truth().refusals() == len(accepted)  # the 400s were the first process's
