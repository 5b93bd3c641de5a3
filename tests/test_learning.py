"""What the ledger keeps of generation times (migration m002_observed_times), what a new
run learns from it, and the run's ETA from the same learned times."""

from __future__ import annotations

import sqlite3

import pytest

from batchgen.client import Client
from batchgen.ledger import Ledger, migrations
from batchgen.pacing import Follow, Learned, Started
from batchgen.progress import describe
from batchgen.scheduler import Scheduler, Settings
from tests.builders import complete, make_ledger, numbered

GROK = ("grok-video-3", 5)


def test_an_old_ledger_gains_the_column_and_its_old_tasks_teach_nothing(tmp_path, monkeypatch):
    """SQLite's alone: ledgers from before m002 are SQLite files (PostgreSQL came later)."""
    path = tmp_path / "old.db"
    monkeypatch.setattr(migrations, "MIGRATIONS", [migrations.m001_initial])
    make_ledger(path, numbered(1)).close()
    monkeypatch.undo()
    db = sqlite3.connect(path)  # a task as the old batchgen left it: 599 s answer to finish
    db.execute(
        "INSERT INTO attempts (campaign, job_id, started_at, answered_at, finished_at,"
        " fingerprint, unit_price_micro_usd, state, task_id) VALUES ('c', 'j0',"
        " '2026-01-01T00:00:00Z', '2026-01-01T00:00:01Z', '2026-01-01T00:10:00Z', 'f', 1,"
        " 'completed', 't0')"
    )
    db.commit()
    db.close()

    ledger = Ledger(path)
    applied = [r["name"] for r in ledger.query("SELECT name FROM _migrations ORDER BY name")]
    assert applied == sorted(m.__name__ for m in migrations.MIGRATIONS)
    assert ledger.query("SELECT observed_seconds FROM attempts") == [{"observed_seconds": None}]
    assert ledger.observed_times() == {} and ledger.generation_seconds() == {}


def test_only_times_observed_from_submission_to_completion_are_read_back(ledger_at):
    ledger = make_ledger(ledger_at, numbered(6))
    for i, observed in enumerate([10.0, None, 11.0, 599.0, 9.0]):
        complete(ledger, f"j{i}", task=f"t{i}", observed=observed)
    assert ledger.observed_times() == {GROK: [10.0, 11.0, 599.0, 9.0]}  # oldest first
    assert ledger.generation_seconds() == {GROK: 10.5}  # a median
    newest = "SELECT id FROM attempts WHERE observed_seconds IS NOT NULL ORDER BY id DESC LIMIT 5"
    assert "attempts_observed" in plan(ledger, newest)


def plan(ledger: Ledger, sql: str) -> str:
    """How the database would run `sql`, as text. PostgreSQL's planner reads a table this
    small whole whatever its indexes: told not to, it shows the index it can use."""
    if not ledger.on_postgres:
        return "\n".join(row["detail"] for row in ledger.query(f"EXPLAIN QUERY PLAN {sql}"))
    ledger.conn.execute("SET enable_seqscan = off")
    return "\n".join(row["QUERY PLAN"] for row in ledger.query(f"EXPLAIN {sql}"))


def test_a_new_run_starts_from_the_observed_times_of_the_ledger(ledger_at):
    ledger = make_ledger(ledger_at, numbered(6))
    for i in range(3):
        complete(ledger, f"j{i}", task=f"t{i}", observed=2.0 + i / 10)
    scheduler = Scheduler(ledger, Client("https://okaypic.test", "okpk_test"), Settings())
    evidence = scheduler.learned.durations.evidence(GROK)
    assert evidence is not None and evidence.typical == pytest.approx(2.1)


def test_a_runner_learns_the_times_other_runners_record_once_each(ledger_at):
    ledger = make_ledger(ledger_at, numbered(6))
    complete(ledger, "j0", task="t0", observed=30.0)  # before this runner started: its history
    scheduler = Scheduler(ledger, Client("https://okaypic.test", "okpk_test"), Settings())
    scheduler.runner_id = "me"
    complete(ledger, "j1", task="t1", observed=2.0)  # another runner's, meanwhile
    complete(ledger, "j2", task="t2", observed=2.0)
    with ledger.transaction() as db:  # and one of this runner's own: learned as it completed
        db.execute("UPDATE attempts SET runner_id = CASE WHEN task_id = 't2' THEN 'me'"
                   " ELSE 'other' END")  # fmt: skip
    scheduler._learn_from_others()
    scheduler._learn_from_others()  # seen already: not counted twice
    assert list(scheduler.learned.durations.samples[GROK]) == [30.0, 2.0]


def test_the_eta_spreads_the_learned_times_of_what_is_left_over_the_slots(ledger_at):
    ledger = make_ledger(ledger_at, numbered(6))
    clock = [100.0]
    scheduler = Scheduler(
        ledger, Client("https://okaypic.test", "okpk_test"), Settings(), clock=lambda: clock[0]
    )
    assert scheduler.eta({GROK: 6}) is None  # nothing learned yet: no ETA
    scheduler.learned = Learned(history={GROK: [2.0, 2.0, 2.0]})
    assert scheduler.eta({GROK: 6}) == pytest.approx(4.0)  # 6 x 2 s on 3 slots
    running = Follow(Started(99.5, 99.5), watching=99.5, own=True)  # 1.5 s left
    scheduler.following[("c", "j0")] = (GROK, running)
    assert scheduler.eta({GROK: 3}) == pytest.approx((1.5 + 6.0) / 3)
    assert scheduler.eta({}) == pytest.approx(1.5)  # no sooner than the task in flight
    assert ledger.queued_shapes() == {GROK: 6}


def test_the_runs_display_shows_the_eta_of_the_learned_times(ledger_at):
    from batchgen.runner import _Eta, _snapshot

    ledger = make_ledger(ledger_at, numbered(6))
    scheduler = Scheduler(ledger, Client("https://okaypic.test", "okpk_test"), Settings())
    eta = _Eta(ledger, None, scheduler)
    assert _snapshot(ledger, None, eta).eta_seconds is None  # nothing learned yet
    scheduler.learned = Learned(history={GROK: [2.0, 2.0, 2.0]})
    assert _snapshot(ledger, None, eta).eta_seconds == pytest.approx(4.0)
    assert "ETA 4s" in describe(_snapshot(ledger, None, eta))
