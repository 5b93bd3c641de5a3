"""A ledger that cannot be written while the service answers (PRODUCT.md §6, §10): another
program holding its lock (a real second process in `BEGIN IMMEDIATE`), or a full disk
(SQLite's own "database or disk is full", tests/faulty.py). Nothing the service answered
is lost: the run stops submitting, holds the answer in the recovery file, retries the
write; if it must end first, the next batchgen command applies the file before anything
else. Money and tasks are checked against the sandbox's truth.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchgen.sandbox import Response, serve
from tests.builders import PRICE, build_ledger
from tests.crashing import audit, query
from tests.e2e import FAST, StderrWatch, batchgen, command_env, spawn, wait_for
from tests.faulty import run_faulty, spawn_faulty
from tests.hostile import HostileSandbox

KEY = "okpk_sandbox_demo"
JOBS = 3
HOLD = 5.0  # seconds the other program keeps the lock: twenty times the run's wait for it

LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


class Locker:
    """Another program holding the ledger's write lock until `release()`."""

    def __init__(self, ledger: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(ledger)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("\n")
            self.process.stdin.close()
            self.process.wait(timeout=10)


class HeldAnswer:
    """A sandbox whose first created task's answer waits until `answer()`: the submission
    is in flight while the test takes the lock."""

    def __init__(self) -> None:
        self.created, self.release = threading.Event(), threading.Event()
        self.sim = HostileSandbox(on_created=self._first_waits)
        self.served = serve(self.sim)
        self.base_url = self.served.base_url

    def _first_waits(self, n: int, task_id: str, real: Response) -> Response:
        if n == 1:
            self.created.set()
            self.release.wait(timeout=60)
        return real

    def stop(self) -> None:
        self.release.set()
        self.served.stop()


@pytest.fixture
def held_answer() -> Iterator[HeldAnswer]:
    service = HeldAnswer()
    yield service
    service.stop()


def recovery_file(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".recovery.jsonl")


def first_task(truth: Any) -> str:
    return str(truth.submissions[0].task_id)


def no_task_lost_or_paid_twice(ledger: Path, truth: Any, job_ids: list[str]) -> None:
    checked = audit(ledger, truth, job_ids)
    assert len(truth.submissions) == JOBS and truth.duplicate_payloads() == {}
    assert checked.unknown == 0
    assert truth.net_charged_micros() == checked.spent == JOBS * PRICE
    assert not recovery_file(ledger).exists()


def test_a_ledger_locked_by_another_program_while_a_submit_is_in_flight_loses_nothing(
    held_answer, tmp_path
):
    """The lock is taken while the first submission waits for its answer, and kept well
    past the run's own wait: the run says it cannot write, submits nothing more, and
    records the task id once the lock is released; every job completes, each paid once."""
    ledger = tmp_path / "l.db"
    job_ids = build_ledger(ledger, JOBS)
    process = spawn("resume", *FAST, ledger=ledger, base_url=held_answer.base_url, key=KEY)
    watch = StderrWatch(process)
    locker = None
    try:
        wait_for(held_answer.created.is_set, what="the first task to be created")
        locker = Locker(ledger)
        held_answer.release.set()  # the answer arrives while the ledger is locked
        watch.wait_for_line("cannot write the ledger", timeout=40)
        time.sleep(HOLD)  # how long the other program keeps it
        assert len(held_answer.sim.truth().submissions) == 1, "submitted while unrecorded"
        held = json.loads(recovery_file(ledger).read_text())
        assert held["task_id"] == first_task(held_answer.sim.truth())
        locker.release()
        process.wait(timeout=60)
    finally:
        if locker is not None:
            locker.release()
        if process.poll() is None:
            process.kill()
    stderr = watch.text()
    assert process.returncode == 0, stderr
    assert "database is locked" in stderr and "Traceback" not in stderr
    no_task_lost_or_paid_twice(ledger, held_answer.sim.truth(), job_ids)


def test_ctrl_c_while_the_ledger_is_locked_leaves_the_task_id_for_the_next_command(
    held_answer, tmp_path
):
    """Interrupted while the lock is still held: exit 130 at once, the unrecorded task id
    named on stderr and kept in the recovery file beside the ledger; the next `resume`
    records it first, polls that task and never submits it again."""
    ledger = tmp_path / "l.db"
    job_ids = build_ledger(ledger, JOBS)
    process = spawn("resume", *FAST, ledger=ledger, base_url=held_answer.base_url, key=KEY)
    watch = StderrWatch(process)
    locker = None
    try:
        wait_for(held_answer.created.is_set, what="the first task to be created")
        locker = Locker(ledger)
        held_answer.release.set()
        watch.wait_for_line("cannot write the ledger", timeout=40)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        process.wait(timeout=60)
        assert time.monotonic() - sent < 2.0
    finally:
        if locker is not None:
            locker.release()
        if process.poll() is None:
            process.kill()
    stderr = watch.text()
    task_id = first_task(held_answer.sim.truth())
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert any("NOT RECORDED" in line and task_id in line for line in stderr.splitlines())
    assert json.loads(recovery_file(ledger).read_text())["task_id"] == task_id

    result = batchgen("resume", *FAST, ledger=ledger, base_url=held_answer.base_url, key=KEY)
    assert result.returncode == 0, result.stderr
    assert "recorded 1 answer(s)" in result.stderr
    no_task_lost_or_paid_twice(ledger, held_answer.sim.truth(), job_ids)


@pytest.fixture
def sandbox_service() -> Iterator[Any]:
    sim = HostileSandbox()
    served = serve(sim)
    served.sim = sim  # type: ignore[attr-defined]
    yield served
    served.stop()


def test_a_full_disk_when_the_answer_arrives_is_retried_until_space_is_freed(
    sandbox_service, tmp_path
):
    """The ledger is full when the first task id comes back ("database or disk is full"):
    the run keeps the answer, retries, and once space is freed (2 s later) records it and
    finishes; no task lost, none paid twice."""
    ledger = tmp_path / "l.db"
    job_ids = build_ledger(ledger, JOBS)
    result = run_faulty(
        ["--fill-ledger", "submit_answered", "1", "--free-after", "2"],
        "resume",
        *FAST,
        env=command_env(ledger, sandbox_service.base_url, KEY),
    )
    assert result.returncode == 0, result.stderr
    assert "database or disk is full" in result.stderr
    assert "Traceback" not in result.stderr
    no_task_lost_or_paid_twice(ledger, sandbox_service.sim.truth(), job_ids)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_run_ended_while_the_disk_is_full_leaves_a_recovery_file_the_next_command_applies(
    sandbox_service, tmp_path, signum
):
    """The disk stays full; the run is interrupted (or killed) while it retries. The task
    id is in the recovery file (written when the write first failed, so even kill -9
    keeps it); the next command that opens the ledger for writing (`retry` here, which
    has nothing to do with it) records it before anything else; `resume` then polls the
    task and never submits it again."""
    ledger = tmp_path / "l.db"
    job_ids = build_ledger(ledger, JOBS)
    process = spawn_faulty(
        ["--fill-ledger", "submit_answered", "1"],
        "resume",
        *FAST,
        env=command_env(ledger, sandbox_service.base_url, KEY),
    )
    watch = StderrWatch(process)
    try:
        watch.wait_for_line("cannot write the ledger")
        process.send_signal(signum)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    task_id = first_task(sandbox_service.sim.truth())
    assert process.returncode == (130 if signum == signal.SIGINT else -signal.SIGKILL)
    assert "Traceback" not in watch.text()
    lines = recovery_file(ledger).read_text().splitlines()
    held = [json.loads(line) for line in lines if line.strip()]
    assert [(h["kind"], h["task_id"]) for h in held] == [("created", task_id)]
    assert query(ledger, "SELECT task_id FROM attempts WHERE task_id IS NOT NULL") == []

    applied = batchgen("retry", ledger=ledger)
    assert applied.returncode == 0, applied.stderr
    assert "recorded 1 answer(s)" in applied.stderr
    assert not recovery_file(ledger).exists()
    assert query(ledger, "SELECT state, task_id FROM attempts WHERE task_id IS NOT NULL") == [
        {"state": "running", "task_id": task_id}
    ]
    result = batchgen("resume", *FAST, ledger=ledger, base_url=sandbox_service.base_url, key=KEY)
    assert result.returncode == 0, result.stderr
    no_task_lost_or_paid_twice(ledger, sandbox_service.sim.truth(), job_ids)


def test_a_full_disk_that_takes_the_recovery_file_too_never_says_answers_are_kept(
    sandbox_service, tmp_path
):
    """The disk is full for every file, not only the ledger: the recovery file cannot be
    written either. The run says so and never that an answer is kept in it; once space
    is freed it records everything (exit 0) and leaves no recovery file, not even an
    empty one, and no closing line about one."""
    ledger = tmp_path / "l.db"
    job_ids = build_ledger(ledger, JOBS)
    result = run_faulty(
        ["--fill-disk", "submit_answered", "1", "--free-after", "2"],
        "resume",
        *FAST,
        env=command_env(ledger, sandbox_service.base_url, KEY),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot write {recovery_file(ledger)} either" in result.stderr
    assert "kept in this run's memory only" in result.stderr
    assert "answer(s) kept in" not in result.stderr
    assert f"kept in {recovery_file(ledger)}" not in result.stderr
    assert "recorded in the ledger after all" in result.stderr
    no_task_lost_or_paid_twice(ledger, sandbox_service.sim.truth(), job_ids)


def test_ctrl_c_while_no_file_can_be_written_shows_the_task_id_as_its_only_record(
    sandbox_service, tmp_path
):
    ledger = tmp_path / "l.db"
    build_ledger(ledger, JOBS)
    process = spawn_faulty(
        ["--fill-disk", "submit_answered", "1"],
        "resume",
        *FAST,
        env=command_env(ledger, sandbox_service.base_url, KEY),
    )
    watch = StderrWatch(process)
    try:
        watch.wait_for_line("cannot write the ledger")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    task_id = first_task(sandbox_service.sim.truth())
    assert process.returncode == 130
    err = watch.text()
    assert "Traceback" not in err
    assert f"NOT RECORDED in the ledger: task {task_id} of c/clip-1" in err
    assert f"not in {recovery_file(ledger)} either (it could not be written)" in err
    assert f"kept in {recovery_file(ledger)}" not in err
    assert "answers the ledger could not record yet are kept" not in err
    assert not recovery_file(ledger).exists()
