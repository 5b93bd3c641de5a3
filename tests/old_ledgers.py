"""Ledgers as an older batchgen wrote them, for tests of the migrations that came after.

Today's ledger code writes columns that later migrations added (`attempts.key_label`,
m007; `attempts.runner_id`, m010; `verdicts.reviewer`, m011). To write an older ledger
with it, `written_before` applies the migrations before the one named, plus those later
ones the writing needs, lets the test write, then takes the later ones back out (column
and record), so the file has the older schema exactly.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.ledger import migrations

# Later migrations today's write code needs, and how to take each back out.
NEEDED_TO_WRITE: list[tuple[Callable[[sqlite3.Connection], None], str]] = [
    (
        migrations.m007_key_labels,
        """
        DROP VIEW key_costs;
        DROP TRIGGER attempts_key_total_insert;
        DROP TRIGGER attempts_key_total_delete;
        DROP TRIGGER attempts_key_total_update;
        DROP TABLE key_totals;
        ALTER TABLE attempts DROP COLUMN key_label;
        """,
    ),
    (
        migrations.m010_runners,
        """
        DROP INDEX attempts_in_flight;
        ALTER TABLE attempts DROP COLUMN runner_id;
        DROP TABLE runners;
        CREATE TABLE runner (
            id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL, host TEXT NOT NULL,
            command TEXT NOT NULL, started_at TEXT NOT NULL, machine TEXT, process_start TEXT
        );
        """,
    ),
    (
        migrations.m011_reviewers,
        """
        DROP VIEW current_verdicts;
        CREATE VIEW current_verdicts AS
            SELECT v.campaign, v.job_id, v.task_id, v.attempt_id, v.verdict, v.note, v.at
            FROM verdicts v
            WHERE v.id = (SELECT MAX(w.id) FROM verdicts w WHERE w.campaign = v.campaign
                          AND w.job_id = v.job_id AND w.task_id = v.task_id);
        DROP INDEX verdicts_by_reviewer;
        ALTER TABLE verdicts DROP COLUMN reviewer;
        """,
    ),
]


def written_before(
    migration: Callable[[sqlite3.Connection], None],
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write: Callable[[], None],
) -> None:
    """Run `write` (which writes the ledger at `path`) as if `migration` and every later
    one did not exist yet."""
    before = migrations.MIGRATIONS[: migrations.MIGRATIONS.index(migration)]
    extra = [(m, undo) for m, undo in NEEDED_TO_WRITE if m not in before]
    monkeypatch.setattr(migrations, "MIGRATIONS", before + [m for m, _ in extra])
    try:
        write()
    finally:
        monkeypatch.undo()
    db = sqlite3.connect(path)
    try:
        for m, undo in reversed(extra):
            db.executescript(undo)
            db.execute("DELETE FROM _migrations WHERE name = ?", (m.__name__,))
            db.commit()
    finally:
        db.close()
