"""An interrupted `run --sandbox` goes on with the command it advises, like a real run
(PRODUCT.md §8): the in-process sandbox keeps its state beside the ledger, so its tasks
outlive the process that ran them.

Real processes, real signals: `batchgen run --sandbox` is stopped by SIGINT (Ctrl-C) or
killed with SIGKILL, then the advised command (or `run --sandbox` again) finishes the
batch. The service's truth is read from the state file the sandbox left.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from batchgen.ledger.db import companion, database_errors, is_url
from batchgen.sandbox import DEFAULT_KEY, Sandbox, Truth
from tests.crashing import audit, run_crashing
from tests.e2e import (
    StderrWatch,
    batchgen,
    command_env,
    grok_batch,
    ledger_written,
    rows,
    spawn,
    status_json,
    wait_for,
)

JOBS = 6  # two rounds of the demo key's 3 slots: about 2 s each


def state_path(ledger: Path | str) -> Path:
    """Where the sandbox of a ledger keeps its state: beside a SQLite file; for a PostgreSQL
    ledger, in the state directory (XDG_STATE_HOME, in tmp_path: conftest)."""
    if is_url(ledger):
        return companion(ledger, ".sandbox.json")
    return Path(ledger).with_name(Path(ledger).name + ".sandbox.json")


def service_truth(ledger: Path | str) -> Truth:
    """What the sandbox of this ledger did, from its state file."""
    return Sandbox(state=state_path(ledger)).truth()


def tasks_running(ledger: Path | str) -> int:
    if not ledger_written(ledger):
        return 0
    try:
        found = rows(
            ledger,
            "SELECT COUNT(*) AS n FROM attempts WHERE state = 'running' AND task_id IS NOT NULL",
        )
    except database_errors():  # not created yet
        return 0
    return int(found[0]["n"])


def interrupted_demo(ledger: Path | str, tmp_path: Path) -> tuple[Path | str, Path, str]:
    """(ledger, manifest, the command the run advised) after a Ctrl-C while tasks ran."""
    manifest = grok_batch(tmp_path / "m.yaml", JOBS, "demo")
    process = spawn("run", str(manifest), "--sandbox", ledger=ledger)
    watch = StderrWatch(process)
    wait_for(lambda: tasks_running(ledger) > 0, what="tasks running")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130, watch.text()
    lines = watch.text().splitlines()
    assert tasks_running(ledger) > 0, "the Ctrl-C came after the last task ended"
    advice = next(line for line in lines if line.startswith("interrupted: "))
    advised = re.findall(r"`(batchgen [^`]*)`", advice)
    assert len(advised) == 1, advice
    return ledger, manifest, advised[0]


def assert_finished_once(ledger: Path | str) -> None:
    """Every job completed, each by one task: none submitted twice, nothing unknown."""
    truth = service_truth(ledger)
    assert len(truth.submissions) == JOBS, "a task was submitted twice"
    audit(ledger, truth, [f"clip-{n}" for n in range(1, JOBS + 1)])
    status = status_json(ledger)
    assert status["counts"]["completed"] == JOBS
    assert status["unknown_usd"] == "0.00" and status["in_flight_usd"] == "0.00"


def test_after_ctrl_c_a_sandbox_run_goes_on_with_the_command_it_advises(ledger_at, tmp_path):
    ledger, _, advised = interrupted_demo(ledger_at, tmp_path)
    assert advised == "batchgen resume --sandbox --campaign demo"

    resumed = batchgen(*shlex.split(advised)[1:], ledger=ledger, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert_finished_once(ledger)


def test_after_ctrl_c_run_sandbox_again_finishes_without_waiting_for_lost_after(
    ledger_at, tmp_path
):
    """The tasks of the stopped run still hold the demo key's slots: they are polled to
    their end (default --lost-after: 1 h), not waited out."""
    ledger, manifest, _ = interrupted_demo(ledger_at, tmp_path)

    again = batchgen("run", str(manifest), "--sandbox", ledger=ledger, timeout=60)
    assert again.returncode == 0, again.stderr
    assert_finished_once(ledger)


def test_after_kill_9_a_sandbox_run_goes_on_with_resume_sandbox(ledger_at, tmp_path):
    """Killed just after the ledger recorded the third task id (the three slots full, no
    submission on the wire): the tasks the sandbox created are all known and followed."""
    ledger, manifest = ledger_at, grok_batch(tmp_path / "m.yaml", JOBS, "demo")
    env = command_env(ledger, None, None)
    killed = run_crashing("task_id_committed", 3, "run", str(manifest), "--sandbox", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(service_truth(ledger).submissions) == 3

    resumed = batchgen("resume", "--sandbox", ledger=ledger, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert_finished_once(ledger)


def test_resume_without_sandbox_on_a_sandbox_ledger_says_to_add_sandbox(ledger_at, tmp_path):
    ledger, _, advised = interrupted_demo(ledger_at, tmp_path)
    status = batchgen("status", ledger=ledger)
    assert "`batchgen resume --sandbox` goes on with them" in status.stdout

    without = batchgen("resume", "--campaign", "demo", ledger=ledger)
    assert without.returncode == 4  # no key: PRODUCT §7
    assert "add --sandbox" in without.stderr and "Traceback" not in without.stderr
    assert batchgen(*shlex.split(advised)[1:], ledger=ledger, timeout=60).returncode == 0


def test_a_second_sandbox_runner_on_the_ledger_is_refused_while_the_first_serves_it(
    ledger_at, tmp_path
):
    """Several runners may share a ledger, but not its sandbox: a second one, loaded from
    the same state, would not know the tasks the first creates."""
    ledger, manifest = ledger_at, grok_batch(tmp_path / "m.yaml", JOBS, "demo")
    first = spawn("run", str(manifest), "--sandbox", ledger=ledger)
    watch = StderrWatch(first)
    wait_for(lambda: tasks_running(ledger) > 0, what="tasks running")

    second = batchgen("resume", "--sandbox", ledger=ledger)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"served by another batchgen process (pid {first.pid})" in second.stderr
    assert first.wait(timeout=60) == 0, watch.text()
    assert_finished_once(ledger)


def test_a_sandbox_state_that_is_not_one_stops_the_run_naming_the_file(ledger_at, tmp_path):
    ledger, manifest = ledger_at, grok_batch(tmp_path / "m.yaml", 1, "demo")
    state_path(ledger).parent.mkdir(parents=True, exist_ok=True)
    state_path(ledger).write_text("{garbage")

    result = batchgen("run", str(manifest), "--sandbox", ledger=ledger)
    assert result.returncode == 1
    assert str(state_path(ledger)) in result.stderr and "Traceback" not in result.stderr
    assert state_path(ledger).read_text() == "{garbage"


@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no-state"])
def test_the_standalone_sandbox_keeps_its_tasks_in_a_state_file_when_asked(tmp_path, with_state):
    state = tmp_path / "sandbox.json"
    args = ["--state", str(state)] if with_state else []

    def started() -> tuple[subprocess.Popen[str], str]:
        server = spawn("sandbox", "--port", "0", *args, ledger=tmp_path / "unused.db")
        assert server.stdout is not None
        base_url = server.stdout.readline().strip().split("=", 1)[1]
        return server, base_url

    auth = {"Authorization": f"Bearer {DEFAULT_KEY}"}
    body = {"model": "grok-video-3", "prompt": "a lighthouse", "duration": 5, "ratio": "1:1"}
    server, base_url = started()
    try:
        task_id = httpx.post(f"{base_url}/api/video/generate", json=body, headers=auth).json()[
            "taskId"
        ]
    finally:
        server.terminate()
        server.wait(timeout=10)
    server, base_url = started()
    try:
        poll = httpx.get(f"{base_url}/api/video/tasks/{task_id}", headers=auth)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert poll.status_code == (200 if with_state else 404)
    assert state.exists() == with_state
