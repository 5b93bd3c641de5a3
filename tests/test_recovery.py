"""The ledger's recovery file (batchgen/ledger/recovery.py), on real ledger files: answers a
run could not write are applied by the next opening for writing, once, whatever order
things happened in. End to end (a real lock, a full disk): tests/test_ledger_faults.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchgen.errors import LedgerWriteFailed
from batchgen.ledger import Ledger, LedgerJob
from tests.crashing import build_ledger


def created(job: LedgerJob, attempt: int, task_id: str = "task-1") -> dict[str, Any]:
    return {
        "kind": "created",
        "campaign": job.campaign,
        "job_id": job.id,
        "attempt": attempt,
        "task_id": task_id,
        "http_status": 200,
        "answered_at": "2026-12-01T00:00:00.000000Z",
    }


def completed(job: LedgerJob, task_id: str = "task-1") -> dict[str, Any]:
    return {
        "kind": "completed",
        "campaign": job.campaign,
        "job_id": job.id,
        "task_id": task_id,
        "result_urls": ["https://cdn.example.com/v.mp4"],
        "at": "2026-12-01T00:01:00.000000Z",
    }


@pytest.fixture
def sent(tmp_path: Path) -> tuple[Path, LedgerJob, int]:
    """A ledger whose first job's submission was sent, its answer not recorded."""
    path = tmp_path / "l.db"
    build_ledger(path, 2)
    ledger = Ledger(path)
    job = ledger.unfinished_jobs()[0]
    attempt = ledger.begin_attempt(job)
    ledger.close()
    return path, job, attempt


def rows(path: Path, sql: str) -> list[dict[str, Any]]:
    ledger = Ledger(path)
    try:
        return ledger.query(sql)
    finally:
        ledger.close()


def test_an_answer_held_in_the_recovery_file_is_recorded_by_the_next_opening(sent, capsys):
    path, job, attempt = sent
    ledger = Ledger(path)
    assert ledger.hold_answer(created(job, attempt)) is None
    assert ledger.hold_answer(completed(job)) is None
    ledger.close()
    assert ledger.recovery_path == path.with_name("l.db.recovery.jsonl")
    assert ledger.recovery_path.exists()
    reopened = Ledger(path)  # any command opening it for writing
    assert "recorded 2 answer(s)" in capsys.readouterr().err
    assert not reopened.recovery_path.exists()
    (attempt_row,) = reopened.query("SELECT * FROM attempts")
    assert (attempt_row["state"], attempt_row["task_id"]) == ("completed", "task-1")
    assert attempt_row["cost_micro_usd"] == 100_000
    (job_row,) = reopened.query("SELECT * FROM jobs WHERE id = ?", [job.id])
    assert (job_row["status"], job_row["attempts"]) == ("completed", 1)
    assert json.loads(job_row["result_urls"]) == ["https://cdn.example.com/v.mp4"]
    assert reopened.query("SELECT kind FROM events WHERE kind = 'recovered'")
    reopened.close()


def test_an_answer_the_run_recorded_after_all_is_not_recorded_twice(sent, capsys):
    """The run's retry worked but it died before taking the answer out of the file."""
    path, job, attempt = sent
    ledger = Ledger(path)
    ledger.hold_answer(created(job, attempt))
    ledger.attempt_created(job, attempt, 200, "task-1")
    ledger.close()
    Ledger(path).close()
    assert "recorded 0 answer(s)" in capsys.readouterr().err
    (job_row,) = rows(path, f"SELECT * FROM jobs WHERE id = '{job.id}'")
    assert (job_row["status"], job_row["attempts"], job_row["task_id"]) == ("running", 1, "task-1")


def test_the_runs_own_write_after_another_command_applied_the_file_changes_nothing(sent):
    """Another command applied the file while the run was still retrying its write."""
    path, job, attempt = sent
    ledger = Ledger(path)
    ledger.hold_answer(created(job, attempt))
    Ledger(path).close()  # e.g. `batchgen ingest` meanwhile
    ledger.attempt_created(job, attempt, 200, "task-1")  # the run's retry now works
    ledger.release_answer(created(job, attempt))
    ledger.close()
    (job_row,) = rows(path, f"SELECT * FROM jobs WHERE id = '{job.id}'")
    assert (job_row["status"], job_row["attempts"]) == ("running", 1)
    assert len(rows(path, "SELECT * FROM attempts WHERE state = 'running'")) == 1


def test_a_task_id_settled_as_unknown_by_a_resume_that_skipped_the_file_is_taken_back(sent):
    """A batchgen without recovery files settled the attempt as unknown (the job held):
    applying the file later gives the job its task back, at no extra attempt."""
    path, job, attempt = sent
    ledger = Ledger(path)
    ledger.hold_answer(created(job, attempt))
    ledger.attempt_ended(
        job,
        attempt,
        state="unknown",
        outcome="unknown",
        counted=True,
        job_status="held",
        reason="unknown outcome",
    )
    ledger.close()
    (job_row,) = rows(path, f"SELECT * FROM jobs WHERE id = '{job.id}'")
    assert (job_row["status"], job_row["task_id"], job_row["attempts"]) == ("running", "task-1", 1)
    (attempt_row,) = rows(path, "SELECT * FROM attempts")
    assert (attempt_row["state"], attempt_row["task_id"]) == ("running", "task-1")


def test_a_line_cut_short_by_a_crash_is_skipped_and_the_rest_applied(sent, capsys):
    path, job, attempt = sent
    ledger = Ledger(path)
    with ledger.recovery_path.open("a") as f:
        f.write('{"kind": "completed", "campaign": "c", "job_')  # a crash mid-write
    ledger.hold_answer(created(job, attempt))  # a later run's answer, after it
    ledger.close()
    Ledger(path).close()
    assert "recorded 1 answer(s)" in capsys.readouterr().err
    assert rows(path, "SELECT task_id FROM attempts") == [{"task_id": "task-1"}]


def test_a_write_that_fails_is_reported_with_nothing_of_it_applied(tmp_path):
    path = tmp_path / "l.db"
    build_ledger(path, 1)
    ledger = Ledger(path)
    job = ledger.unfinished_jobs()[0]

    def half_then_fail() -> None:
        with ledger.transaction() as db:
            db.execute("UPDATE jobs SET status = 'failed'")
            db.execute("SELECT * FROM no_such_table_so_sqlite_fails")

    with pytest.raises(LedgerWriteFailed, match="no_such_table"):
        ledger.try_write(half_then_fail, 0.1)
    assert not ledger.conn.in_transaction
    assert ledger.query("SELECT status FROM jobs") == [{"status": "queued"}]
    assert ledger.try_write(lambda: ledger.begin_attempt(job), 0.1) == 1
    ledger.close()
