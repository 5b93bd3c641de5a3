"""`batchgen ledger copy SRC DST` (PRODUCT.md §5): a ledger moved between SQLite and
PostgreSQL exactly, both ways; a run on the copy goes on numbering after the copied ids;
whatever it refuses, it says in one line and leaves DST as it was."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from batchgen.ledger import Ledger, copying, migrations
from batchgen.ledger.copying import COPIED, NOT_COPIED, TOTALS, copy_ledger
from batchgen.ledger.db import SQLITE_DIALECT, PgConnection, dialect_of, is_url
from batchgen.ledger.recovery import RECOVERY_SUFFIX
from tests.builders import every_kind_of_job
from tests.e2e import FAST, batchgen, grok_batch, on_sandbox


@pytest.fixture(autouse=True)
def state_home(monkeypatch, tmp_path):
    """A PostgreSQL ledger's companion files (the recovery file) in the test's folder."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


# --- what a ledger holds, read back ----------------------------------------------------------


def connection(location: str | Path) -> Any:
    if is_url(location):
        return PgConnection(str(location), read_only=True)
    return sqlite3.connect(f"file:{location}?mode=ro", uri=True)


def content(location: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every copied table's rows and the totals, in one order, whatever the database."""
    db = connection(location)
    try:
        tables: dict[str, list[tuple[Any, ...]]] = {}
        for table, key in COPIED:  # in order of its key: the same bytes order on both
            columns = ", ".join(sorted(dialect_of(db).columns(db, table)))
            tables[table] = [
                tuple(row)
                for row in db.execute(f"SELECT {columns} FROM {table} ORDER BY {', '.join(key)}")
            ]
        for table in TOTALS:
            columns = ", ".join(sorted(dialect_of(db).columns(db, table)))
            tables[table] = sorted(tuple(r) for r in db.execute(f"SELECT {columns} FROM {table}"))
        return tables
    finally:
        db.close()


def a_ledger_of_every_kind(path: Path, sandbox: Any) -> Path:
    """A real sandbox run (some tasks failed and refunded, their files saved), then every
    status, odd text, two more campaigns, verdicts current, withdrawn and stale
    (tests/builders.py) in the same ledger."""
    manifest = grok_batch(path.parent / "batch.yaml", 8, campaign="night", budget="5")
    result = on_sandbox(sandbox, "run", str(manifest), *FAST, ledger=path)
    assert result.returncode in (0, 1), result.stderr
    every_kind_of_job(path).close()
    return path


def copied(source: str | Path, destination: str | Path, *args: str) -> dict[str, Any]:
    """`batchgen ledger copy SRC DST --json`, which must succeed: its answer."""
    result = batchgen(
        "ledger", "copy", str(source), str(destination), "--json", *args,
        ledger=Path(os.devnull),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def refused(source: str | Path, destination: str | Path) -> str:
    """`batchgen ledger copy SRC DST`, which must refuse in one line, exit 1: that line."""
    result = batchgen("ledger", "copy", str(source), str(destination), ledger=Path(os.devnull))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    return line


# --- the copy, both ways ----------------------------------------------------------------------


def test_a_sandbox_run_copied_to_postgresql_and_back_is_the_same_row_for_row(
    tmp_path, make_sandbox, postgres_url
):
    sandbox = make_sandbox(time_scale=0.01, fail_rate=0.3, seed=4)
    first = a_ledger_of_every_kind(tmp_path / "first.db", sandbox)
    second = tmp_path / "second.db"

    there = copied(first, postgres_url)
    back = copied(postgres_url, second)

    original = content(first)
    assert content(postgres_url) == original  # money exact: integer micro-dollars
    assert content(second) == original
    assert len(original["attempts"]) > 20 and original["verdicts"] and original["files"]
    counts = {table: len(original[table]) for table, _ in COPIED}
    assert there == {"source": str(first), "destination": postgres_url, "rows": counts}
    assert back["rows"] == counts


def test_every_report_is_the_same_on_the_original_its_postgresql_copy_and_the_copy_of_that(
    tmp_path, sandbox, postgres_url
):
    first = a_ledger_of_every_kind(tmp_path / "first.db", sandbox)
    second = tmp_path / "second.db"
    copied(first, postgres_url)
    copied(postgres_url, second)
    for by in ("campaign", "model", "tag", "status", "key", "verdict", "reviewer"):
        for fmt in ("json", "csv"):
            for jobs in ([], ["--jobs"]) if by == "campaign" else ([],):
                args = ["report", "--by", by, "--format", fmt, *jobs]
                original = batchgen(*args, ledger=first)
                assert original.returncode == 0, original.stderr
                for copy in (postgres_url, second):
                    assert batchgen(*args, ledger=copy).stdout == original.stdout, (copy, args)
    status = batchgen("status", "--json", ledger=first).stdout
    assert batchgen("status", "--json", ledger=postgres_url).stdout == status
    assert batchgen("status", "--json", ledger=second).stdout == status


def test_a_run_on_either_copy_numbers_its_rows_after_the_copied_ones(
    tmp_path, sandbox, postgres_url
):
    """On PostgreSQL the copied ids leave its identities behind unless moved on: the next
    job, attempt, verdict or event would take id 1 again, and collide."""
    first = a_ledger_of_every_kind(tmp_path / "first.db", sandbox)
    second = tmp_path / "second.db"
    copied(first, postgres_url)
    copied(postgres_url, second)
    before = content(first)
    more = grok_batch(tmp_path / "more.yaml", 3, campaign="more")
    for ledger in (postgres_url, str(second)):
        run = on_sandbox(sandbox, "run", str(more), *FAST, ledger=ledger)
        assert run.returncode == 0, run.stderr
        resume = on_sandbox(sandbox, "resume", "--campaign", "more", *FAST, ledger=ledger)
        assert resume.returncode == 0, resume.stderr
        after = content(ledger)
        for table in ("jobs", "attempts", "events"):
            assert set(before[table]) < set(after[table]), table  # every copied row kept
        db = connection(ledger)
        try:
            refs = [r[0] for r in db.execute("SELECT ref FROM jobs WHERE campaign = 'more'")]
            oldest = max(r[0] for r in db.execute("SELECT ref FROM jobs WHERE campaign != 'more'"))
        finally:
            db.close()
        assert len(refs) == 3 and min(refs) > oldest
        assert kept_attempt_totals(ledger) == summed_attempt_totals(ledger)  # triggers at work


def kept_attempt_totals(location: str | Path) -> list[tuple[Any, ...]]:
    db = connection(location)
    try:
        return sorted(
            tuple(row)
            for row in db.execute(
                "SELECT campaign, state, attempts, cost_micro_usd, unit_price_micro_usd,"
                " refunded_micro_usd FROM attempt_totals"
            )
        )
    finally:
        db.close()


def summed_attempt_totals(location: str | Path) -> list[tuple[Any, ...]]:
    db = connection(location)
    try:
        return sorted(
            tuple(row)
            for row in db.execute(
                "SELECT campaign, state, COUNT(*), SUM(cost_micro_usd),"
                " SUM(unit_price_micro_usd), SUM(refunded_micro_usd)"
                " FROM attempts GROUP BY campaign, state"
            )
        )
    finally:
        db.close()


def test_rows_are_copied_a_page_at_a_time_in_order_of_their_keys(
    tmp_path, monkeypatch, postgres_url
):
    """Pages of 2 rows: every table crosses pages, files on their three-column key."""
    monkeypatch.setattr(copying, "PAGE", 2)
    first = tmp_path / "first.db"
    every_kind_of_job(first).close()
    copy_ledger(str(first), postgres_url)
    copy_ledger(postgres_url, str(tmp_path / "second.db"))
    assert content(postgres_url) == content(first) == content(tmp_path / "second.db")


def test_every_table_of_a_ledger_is_copied_or_said_why_not(tmp_path, postgres_url):
    """A table a later migration adds must be named in batchgen/ledger/copying.py."""
    named = {table for table, _ in COPIED} | set(NOT_COPIED)
    Ledger(tmp_path / "new.db").close()
    db = sqlite3.connect(tmp_path / "new.db")
    assert SQLITE_DIALECT.tables(db) == named
    db.close()
    Ledger(postgres_url).close()
    pg = connection(postgres_url)
    assert dialect_of(pg).tables(pg) == named
    pg.close()


def test_a_live_runners_row_is_not_copied_and_a_dead_runners_tasks_are_adopted_on_the_copy(
    tmp_path,
):
    first = tmp_path / "first.db"
    every_kind_of_job(first).close()
    with sqlite3.connect(first) as db:  # a runner gone for an hour, owning a running task
        db.execute(
            "INSERT INTO runners VALUES ('gone', 'elsewhere', 1, NULL, NULL, 'run', '[\"studio\"]',"
            " 30, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')"
        )
        db.execute("UPDATE attempts SET runner_id = 'gone' WHERE state = 'running'")
    copy_ledger(str(first), str(tmp_path / "second.db"))
    db = sqlite3.connect(tmp_path / "second.db")
    assert db.execute("SELECT COUNT(*) FROM runners").fetchone() == (0,)
    assert db.execute("SELECT COUNT(*) FROM attempts WHERE runner_id = 'gone'").fetchone()[0] > 0
    db.close()


# --- refusals: one line, exit 1, DST as it was ------------------------------------------------


def test_a_destination_that_holds_a_ledger_is_refused_and_left_as_it_was(tmp_path, postgres_url):
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    every_kind_of_job(first).close()
    every_kind_of_job(second).close()
    copy_ledger(str(first), postgres_url)
    kept, kept_there = second.read_bytes(), content(postgres_url)
    assert "second.db: not empty" in refused(first, second)
    assert "not empty" in refused(first, postgres_url)
    assert second.read_bytes() == kept and content(postgres_url) == kept_there


def test_a_destination_that_is_another_programs_database_is_refused_and_left_as_it_was(
    tmp_path,
):
    first, foreign = tmp_path / "first.db", tmp_path / "photos.db"
    every_kind_of_job(first).close()
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE photos (name TEXT)")
    kept = foreign.read_bytes()
    assert "not a batchgen ledger" in refused(first, foreign)
    assert foreign.read_bytes() == kept


def test_an_empty_database_or_an_empty_ledger_is_a_destination(tmp_path, postgres_url):
    first, empty = tmp_path / "first.db", tmp_path / "empty.db"
    every_kind_of_job(first).close()
    Ledger(empty).close()
    assert copied(first, empty)["rows"]["jobs"] == 14
    assert copied(first, postgres_url)["rows"]["jobs"] == 14  # the fixture's: no table at all


def test_a_copy_that_fails_half_way_leaves_the_destination_without_a_row(tmp_path, postgres_url):
    """PostgreSQL takes no NUL character in a text, which SQLite keeps: the last table's
    last row fails, after every other row went in."""
    first = tmp_path / "first.db"
    every_kind_of_job(first).close()
    with sqlite3.connect(first) as db:
        db.execute(
            "UPDATE events SET detail = ? WHERE id = (SELECT MAX(id) FROM events)", ("a\x00b",)
        )
    line = refused(first, postgres_url)
    assert "the copy failed" in line and "nothing was copied" in line
    assert all(rows == [] for rows in content(postgres_url).values())


def test_a_password_in_a_url_is_never_printed(tmp_path, postgres_url):
    first = tmp_path / "first.db"
    every_kind_of_job(first).close()
    parts = urlsplit(postgres_url)  # the test server trusts its user: any password will do
    secret = "s3cr3t-pw"
    host = f"{parts.hostname}:{parts.port}"
    url = urlunsplit(parts._replace(netloc=f"{parts.username}:{secret}@{host}"))
    shown = urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    there = batchgen("ledger", "copy", str(first), url, ledger=Path(os.devnull))
    assert there.returncode == 0, there.stderr
    assert there.stdout == f"copied {first} to {shown}: campaigns 2, jobs 14, attempts 13," \
        " verdicts 7, files 3, events 23\n"  # fmt: skip
    back = batchgen(
        "ledger", "copy", url, str(tmp_path / "back.db"), "--json", ledger=Path(os.devnull)
    )
    assert json.loads(back.stdout)["source"] == shown
    assert secret not in there.stdout + there.stderr + back.stdout + back.stderr


def test_a_ledger_is_not_copied_onto_itself(tmp_path):
    first = tmp_path / "first.db"
    Ledger(first).close()
    kept = first.read_bytes()
    assert "SRC and DST are the same ledger" in refused(first, tmp_path / "." / "first.db")
    assert first.read_bytes() == kept


def test_a_folder_is_no_destination(tmp_path):
    first = tmp_path / "first.db"
    Ledger(first).close()
    (tmp_path / "folder").mkdir()
    assert "folder: a folder" in refused(first, tmp_path / "folder")
    assert list((tmp_path / "folder").iterdir()) == []


def test_a_missing_source_is_refused_and_no_destination_is_made(tmp_path):
    line = refused(tmp_path / "nothing.db", tmp_path / "copy.db")
    assert "nothing.db" in line
    assert not (tmp_path / "copy.db").exists()


def test_a_bad_url_is_refused_in_one_line_without_its_password(tmp_path, postgres_url):
    first = tmp_path / "first.db"
    every_kind_of_job(first).close()
    parts = urlsplit(postgres_url)
    secret = "s3cr3t-pw"
    wrong = urlunsplit(
        parts._replace(netloc=f"{parts.username}:{secret}@{parts.hostname}:{parts.port}",
                       path="/no_such_database")
    )  # fmt: skip
    for source, destination in ((first, wrong), (wrong, tmp_path / "copy.db")):
        line = refused(source, destination)
        assert secret not in line and "no_such_database" in line
    assert not (tmp_path / "copy.db").exists()
    unparsable = urlunsplit(parts._replace(netloc=f"{parts.hostname}:port"))
    line = refused(first, unparsable)
    assert line.startswith("error: ")


def test_a_source_a_runner_is_using_is_refused(tmp_path):
    first = tmp_path / "first.db"
    ledger = every_kind_of_job(first)
    ledger.register_runner("run", ["studio"], lease=3600)  # this process: alive
    ledger.close()
    line = refused(first, tmp_path / "copy.db")
    assert "in use by 1 runner(s)" in line and f"pid {os.getpid()}" in line
    assert not (tmp_path / "copy.db").exists()


def test_a_source_with_answers_not_yet_recorded_is_refused(tmp_path):
    first = tmp_path / "first.db"
    every_kind_of_job(first).close()
    first.with_name(first.name + RECOVERY_SUFFIX).write_text('{"kind": "created"}\n')
    assert "not recorded yet" in refused(first, tmp_path / "copy.db")
    assert not (tmp_path / "copy.db").exists()


def test_a_source_of_an_older_batchgen_is_refused_and_left_as_it_was(tmp_path):
    old = tmp_path / "old.db"
    db = sqlite3.connect(old, isolation_level=None)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    for migration in migrations.MIGRATIONS[:-1]:
        migrations._apply(db, migration)
    db.close()
    kept = old.read_bytes()
    last = migrations.MIGRATIONS[-1].__name__
    assert f"(migration {last} not applied)" in refused(old, tmp_path / "copy.db")
    assert old.read_bytes() == kept and not (tmp_path / "copy.db").exists()
