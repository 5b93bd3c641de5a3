"""The ledger's recovery file (batchgen/ledger/recovery.py), on real ledgers of each kind (a
SQLite file, a PostgreSQL database): answers a run could not write are applied by the next
opening for writing, once, whatever order things happened in. End to end (a real lock, a
full disk): tests/test_ledger_faults.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from batchgen.errors import LedgerWriteFailed
from batchgen.ledger import Ledger, LedgerJob
from batchgen.ledger.db import is_url
from tests.builders import build_ledger


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
def sent(ledger_at: Path | str) -> tuple[Path | str, LedgerJob, int]:
    """A ledger whose first job's submission was sent, its answer not recorded."""
    build_ledger(ledger_at, 2)
    ledger = Ledger(ledger_at)
    job = ledger.unfinished_jobs()[0]
    attempt = ledger.begin_attempt(job)
    ledger.close()
    return ledger_at, job, attempt


def recovery_file(ledger: Ledger) -> Path:
    """The ledger's recovery file, for a test to write as a crash or a full disk left it
    (its folder made, as the run's first held answer makes it)."""
    ledger.recovery_path.parent.mkdir(parents=True, exist_ok=True)
    return ledger.recovery_path


def rows(path: Path | str, sql: str) -> list[dict[str, Any]]:
    ledger = Ledger(path)
    try:
        return ledger.query(sql)
    finally:
        ledger.close()


def test_the_recovery_file_is_beside_a_sqlite_ledger_and_in_the_state_directory_for_postgresql(
    sent,
):
    """What it keeps (answers not yet recorded) is this machine's: a PostgreSQL ledger's is
    in the user's state directory ($XDG_STATE_HOME/batchgen), named after its database."""
    path, job, attempt = sent
    ledger = Ledger(path)
    ledger.close()
    if is_url(path):
        assert ledger.recovery_path.parent == Path(os.environ["XDG_STATE_HOME"]) / "batchgen"
        database = urlsplit(str(path)).path.lstrip("/")
        assert ledger.recovery_path.name.endswith(f"-{database}.recovery.jsonl")
    else:
        assert ledger.recovery_path == Path(path).with_name("ledger.db.recovery.jsonl")
    assert ledger.rejected_path == ledger.recovery_path.with_name(
        ledger.recovery_path.name + ".rejected"
    )


def test_an_answer_held_in_the_recovery_file_is_recorded_by_the_next_opening(sent, capsys):
    path, job, attempt = sent
    ledger = Ledger(path)
    assert ledger.hold_answer(created(job, attempt)) is None
    assert ledger.hold_answer(completed(job)) is None
    ledger.close()
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


def test_a_line_cut_short_by_a_crash_is_set_aside_and_the_rest_applied(sent, capsys):
    path, job, attempt = sent
    ledger = Ledger(path)
    cut = '{"kind": "completed", "campaign": "c", "job_'
    with recovery_file(ledger).open("a") as f:
        f.write(cut)  # a crash mid-write
    ledger.hold_answer(created(job, attempt))  # a later run's answer, after it
    ledger.close()
    Ledger(path).close()
    assert "recorded 1 answer(s)" in capsys.readouterr().err
    assert rows(path, "SELECT task_id FROM attempts") == [{"task_id": "task-1"}]
    assert ledger.rejected_path.read_text().splitlines() == [cut]


def test_lines_that_are_no_answer_are_moved_to_the_rejected_file_reported_never_dropped(
    sent, capsys
):
    """An unknown kind, a field missing or malformed, a task this ledger does not have: not
    "already there", and not removed: moved beside the file, counted in one line."""
    path, job, attempt = sent
    unknown_kind = {**created(job, attempt), "kind": "teleported"}
    missing_field = {k: v for k, v in created(job, attempt).items() if k != "task_id"}
    malformed = {**created(job, attempt), "attempt": "first"}
    elsewhere = completed(job, task_id="task-of-another-ledger")
    strangers = [unknown_kind, missing_field, malformed, elsewhere]
    ledger = Ledger(path)
    for answer in [*strangers, created(job, attempt)]:
        assert ledger.hold_answer(answer) is None
    ledger.close()

    Ledger(path).close()
    err = capsys.readouterr().err
    assert "recorded 1 answer(s) that a run could not write to the ledger (0 already there)" in err
    assert (
        f"{ledger.recovery_path}: 4 line(s) that are no answer this batchgen can record "
        "(cut short, an unknown kind, a field missing or malformed, or not in this ledger) "
        f"moved to {ledger.rejected_path}; nothing was recorded from them"
    ) in err
    kept = [json.loads(line) for line in ledger.rejected_path.read_text().splitlines()]
    assert kept == strangers
    assert not ledger.recovery_path.exists()
    assert rows(path, "SELECT task_id FROM attempts WHERE task_id IS NOT NULL") == [
        {"task_id": "task-1"}
    ]
    Ledger(path).close()  # the next opening has nothing to say, the rejected lines stay
    assert capsys.readouterr().err == ""
    assert len(ledger.rejected_path.read_text().splitlines()) == 4


def test_a_line_that_cannot_be_set_aside_stays_in_the_recovery_file(sent, capsys):
    path, job, attempt = sent
    stranger = {**created(job, attempt), "kind": "teleported"}
    ledger = Ledger(path)
    ledger.hold_answer(stranger)
    ledger.hold_answer(created(job, attempt))
    ledger.rejected_path.mkdir()  # where the rejected lines go cannot be written
    ledger.close()
    Ledger(path).close()
    err = capsys.readouterr().err
    assert "recorded 1 answer(s)" in err
    assert "1 line(s) that are no answer" in err and "stay in it: cannot write" in err
    lines = [line for line in ledger.recovery_path.read_text().splitlines() if line.strip()]
    assert [json.loads(line) for line in lines] == [stranger]


def test_a_recovery_file_that_holds_nothing_is_removed_and_said_to_keep_nothing(sent, capsys):
    """A full disk can leave a 0-byte file (created, then nothing written): it is no place
    where answers are kept, and it does not stay."""
    path, job, attempt = sent
    ledger = Ledger(path)
    recovery_file(ledger).write_bytes(b"")
    assert ledger.held_count() == 0 and not ledger.holds(created(job, attempt))
    ledger.release_answer(created(job, attempt))  # the run's write worked after all
    assert not ledger.recovery_path.exists()
    ledger.recovery_path.write_bytes(b"\n\n")
    ledger.close()
    Ledger(path).close()
    assert not ledger.recovery_path.exists()
    assert capsys.readouterr().err == ""


def test_a_write_that_fails_is_reported_with_nothing_of_it_applied(ledger_at):
    build_ledger(ledger_at, 1)
    ledger = Ledger(ledger_at)
    job = ledger.unfinished_jobs()[0]

    def half_then_fail() -> None:
        with ledger.transaction() as db:
            db.execute("UPDATE jobs SET status = 'failed'")
            if ledger.on_postgres:  # the error a full disk raises (SQLSTATE 53100)
                db.execute(
                    "DO $$ BEGIN RAISE EXCEPTION 'disk_full_played_by_the_test'"
                    " USING ERRCODE = 'disk_full'; END $$"
                )
            else:  # an OperationalError, as a full disk's or an I/O error's
                db.execute("SELECT * FROM disk_full_played_by_the_test")

    with pytest.raises(LedgerWriteFailed, match="disk_full_played_by_the_test"):
        ledger.try_write(half_then_fail, 0.1)
    assert not ledger.conn.in_transaction
    assert ledger.query("SELECT status FROM jobs") == [{"status": "queued"}]
    assert ledger.try_write(lambda: ledger.begin_attempt(job), 0.1) == 1
    ledger.close()
