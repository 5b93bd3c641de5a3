"""The ledger file is batchgen's own (PRODUCT.md §5): a SQLite file that is not a batchgen
ledger, or one a newer batchgen wrote, is refused and left byte for byte as it was;
reading commands never write; a ledger another program keeps locked is waited for, with a
line every few seconds; a damaged ledger is one clear line, exit 1, never a traceback.

Every command here is the real `batchgen` in a subprocess, on a real SQLite file.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from batchgen.ledger import migrations
from tests.builders import build_ledger
from tests.e2e import FAST, batchgen, grok_batch, on_sandbox, rows, spawn
from tests.old_ledgers import written_before


def fingerprint(path: Path) -> tuple[bytes, bytes]:
    """The file's bytes, and its write-ahead log's (a reader of a WAL ledger may leave an
    empty `-wal` and a `-shm` index beside it: SQLite's bookkeeping, not content)."""
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes(), wal.read_bytes() if wal.exists() else b""


def one_clean_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def every_command(tmp_path: Path) -> list[tuple[str, ...]]:
    manifest = str(grok_batch(tmp_path / "m.yaml", 2))
    return [
        ("status",),
        ("status", "--json"),
        ("report",),
        ("report", "--jobs", "--format", "json"),
        ("plan", manifest),
        ("ingest", manifest),
        ("run", manifest, *FAST),
        ("resume", *FAST),
        ("download", "--out", str(tmp_path / "out")),
        ("retry",),
    ]


# ---------------------------------------------------------------------- foreign and newer


def test_a_sqlite_file_that_is_not_a_ledger_is_refused_by_every_command_and_left_as_it_was(
    sandbox, tmp_path
):
    foreign = tmp_path / "notes.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    db.execute("INSERT INTO notes (text) VALUES ('my own data')")
    db.commit()
    db.close()
    before = fingerprint(foreign)
    for args in every_command(tmp_path):
        result = on_sandbox(sandbox, *args, ledger=foreign)
        one_clean_line(result, str(foreign), "not a batchgen ledger")
        assert fingerprint(foreign) == before, args
    assert sandbox.sim.truth().submissions == []


def test_a_file_that_is_not_sqlite_at_all_is_refused_and_left_as_it_was(sandbox, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("shopping list\n" * 400)
    before = fingerprint(text)
    for args in every_command(tmp_path):
        one_clean_line(on_sandbox(sandbox, *args, ledger=text), "not a batchgen ledger")
        assert fingerprint(text) == before, args


def test_a_ledger_from_a_newer_batchgen_is_refused_by_every_command_and_left_as_it_was(
    sandbox, tmp_path
):
    ledger = tmp_path / "l.db"
    build_ledger(ledger, 2)
    db = sqlite3.connect(ledger)
    db.execute("INSERT INTO _migrations VALUES ('m999_from_the_future', '2030-01-01')")
    db.commit()
    db.close()
    before = fingerprint(ledger)
    for args in every_command(tmp_path):
        result = on_sandbox(sandbox, *args, ledger=ledger)
        one_clean_line(result, "newer batchgen", "m999_from_the_future")
        assert fingerprint(ledger) == before, args
    assert sandbox.sim.truth().submissions == []


def test_reading_commands_write_nothing_not_even_the_journal_mode(sandbox, tmp_path):
    # A ledger copied or vacuumed by another tool into rollback-journal mode: a reading
    # command must leave it so (switching to WAL rewrites the file's header).
    ledger = tmp_path / "l.db"
    manifest = grok_batch(tmp_path / "m.yaml", 3)
    assert on_sandbox(sandbox, "run", str(manifest), *FAST, ledger=ledger).returncode == 0
    db = sqlite3.connect(ledger)
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()
    before = fingerprint(ledger)
    for args in (
        ("status",),
        ("status", "--json"),
        ("report",),
        ("report", "--jobs", "--format", "csv"),
        ("plan", str(manifest)),
    ):
        result = batchgen(*args, ledger=ledger)
        assert result.returncode == 0, result.stderr
        assert fingerprint(ledger) == before, args


def test_reading_commands_do_not_migrate_an_older_ledger_and_a_run_does(
    sandbox, tmp_path, monkeypatch
):
    ledger = tmp_path / "l.db"
    # As the batchgen before m010_runners left it, with a runner lock held on another host.
    written_before(migrations.m010_runners, ledger, monkeypatch, lambda: build_ledger(ledger, 2))
    db = sqlite3.connect(ledger)
    db.execute(
        "INSERT INTO runner VALUES (1, 1, 'elsewhere', 'resume', '2026-01-01T00:00:00Z', NULL,"
        " NULL)"
    )
    db.commit()
    db.close()
    before = fingerprint(ledger)
    for args in (("status",), ("status", "--json"), ("report", "--jobs")):
        assert batchgen(*args, ledger=ledger).returncode == 0
        assert fingerprint(ledger) == before, args
    # The lock of the batchgen before is gone with its table: several runners may share it.
    assert on_sandbox(sandbox, "resume", *FAST, ledger=ledger).returncode == 0
    names = [r["name"] for r in rows(ledger, "SELECT name FROM _migrations")]
    assert "m010_runners" in names
    assert not rows(ledger, "SELECT name FROM sqlite_master WHERE name = 'runner'")


# ---------------------------------------------------------------------- locked by another program

LOCK = (
    "import sqlite3, sys\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('BEGIN IMMEDIATE')\n"
    "db.execute('UPDATE jobs SET prompt = prompt')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
    "db.execute('COMMIT')\n"
)


def lock_holder(ledger: Path) -> subprocess.Popen[str]:
    """Another program (plain sqlite3) holding the ledger's write lock until stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK, str(ledger)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def lines_of(stream) -> queue.Queue[str | None]:
    """Each line a process writes to `stream`, as it comes (None at the end)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue[str | None], word: str, seen: list[str]) -> None:
    while True:
        line = lines.get(timeout=120)
        assert line is not None, "ended before saying it waits: " + "".join(seen)
        seen.append(line)
        if word in line:
            return


@pytest.mark.parametrize("command", ["resume", "run"])
def test_a_ledger_locked_by_another_program_is_waited_for_saying_so_then_the_run_goes_on(
    sandbox, tmp_path, command
):
    ledger = tmp_path / "l.db"
    manifest = grok_batch(tmp_path / "m.yaml", 3)
    assert batchgen("ingest", str(manifest), ledger=ledger).returncode == 0
    holder = lock_holder(ledger)
    args = ("run", str(manifest)) if command == "run" else ("resume",)
    process = spawn(*args, *FAST, ledger=ledger, base_url=sandbox.base_url, key=sandbox.key)
    seen: list[str] = []
    try:
        assert process.stderr is not None
        lines = lines_of(process.stderr)
        wait_for_line(lines, "waiting", seen)
        assert "another program holds a lock on the ledger" in seen[-1]
        assert sandbox.sim.truth().submissions == []
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    process.wait(timeout=120)
    while (line := lines.get(timeout=30)) is not None:
        seen.append(line)
    assert process.returncode == 0, "".join(seen)
    assert "Traceback" not in "".join(seen)
    assert rows(ledger, "SELECT COUNT(*) AS n FROM jobs WHERE status = 'completed'")[0]["n"] == 3


def test_a_read_while_another_program_holds_the_write_lock_answers_at_once(tmp_path):
    ledger = tmp_path / "l.db"
    build_ledger(ledger, 2)
    holder = lock_holder(ledger)
    try:
        result = batchgen("status", "--json", ledger=ledger, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "waiting" not in result.stderr
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


# ---------------------------------------------------------------------- a damaged ledger


def damage_the_jobs_pages(ledger: Path) -> None:
    """Overwrite the b-tree page headers of the jobs table and its indexes (their root
    pages: each one page on a small ledger), as bad disk sectors would."""
    db = sqlite3.connect(ledger)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    roots = [
        r for (r,) in db.execute("SELECT rootpage FROM sqlite_master WHERE tbl_name = 'jobs'") if r
    ]
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    assert len(roots) >= 3 and 1 not in roots
    with ledger.open("r+b") as f:
        for root in roots:
            f.seek((root - 1) * page_size)
            f.write(b"\xff" * 64)


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--json"),
        ("report",),
        ("report", "--jobs"),
        ("resume",),
        ("download",),
        ("retry",),
    ],  # fmt: skip
    ids=lambda a: " ".join(a),
)
def test_damaged_data_pages_are_one_clean_line_and_exit_1(sandbox, tmp_path, args):
    ledger = tmp_path / "l.db"
    manifest = grok_batch(tmp_path / "m.yaml", 4)
    assert on_sandbox(sandbox, "run", str(manifest), *FAST, ledger=ledger).returncode == 0
    damage_the_jobs_pages(ledger)
    if args == ("download",):
        args = ("download", "--out", str(tmp_path / "out"))
    result = on_sandbox(sandbox, *args, *(FAST if args == ("resume",) else ()), ledger=ledger)
    one_clean_line(result, str(ledger), "damaged")


# ---------------------------------------------------------------------- the .db file alone


def money_in(ledger: Path) -> dict[str, str]:
    """Spent, in flight, unknown and refunded, read by plain sqlite3 from `ledger`."""
    from batchgen.money import usd

    [row] = rows(
        ledger,
        "SELECT COALESCE(SUM(CASE WHEN state IN ('completed', 'failed') THEN cost_micro_usd"
        " END), 0) AS spent_usd, COALESCE(SUM(CASE WHEN state = 'running' THEN cost_micro_usd"
        " END), 0) AS in_flight_usd, COALESCE(SUM(CASE WHEN state IN ('unknown', 'sending')"
        " THEN unit_price_micro_usd END), 0) AS unknown_usd,"
        " COALESCE(SUM(refunded_micro_usd), 0) AS refunded_usd FROM attempts",
    )
    return {column: usd(micros) for column, micros in row.items()}


def copied_alone(ledger: Path, to: Path) -> Path:
    """A copy of the ledger's .db file only, without its -wal (as `cp` or a backup of one
    file makes it, and as `datasette -i` reads it)."""
    to.write_bytes(ledger.read_bytes())
    return to


def test_a_copy_of_the_db_file_alone_holds_the_money_report_shows_after_a_writing_command(
    tmp_path,
):
    # Another program (Datasette, the review page, a SQL client) has the ledger open the
    # whole time: batchgen's connection is not the last one, so SQLite's own checkpoint
    # on closing does not happen.
    ledger = tmp_path / "l.db"
    manifest = grok_batch(tmp_path / "m.yaml", 4)
    assert batchgen("ingest", str(manifest), ledger=ledger).returncode == 0
    browser = sqlite3.connect(ledger)
    try:
        browser.execute("SELECT COUNT(*) FROM jobs").fetchall()
        result = batchgen("run", str(manifest), "--sandbox", *FAST, ledger=ledger)
        assert result.returncode == 0, result.stderr
        copy = copied_alone(ledger, tmp_path / "copy.db")
        reported = json.loads(batchgen("report", "--format", "json", ledger=ledger).stdout)
        money = {k: reported["totals"][k] for k in money_in(copy)}
        assert money_in(copy) == money and money["spent_usd"] == "0.40"

        more = grok_batch(tmp_path / "more.yaml", 2, campaign="more")
        assert batchgen("ingest", str(more), ledger=ledger).returncode == 0
        copy = copied_alone(ledger, tmp_path / "copy2.db")
        assert rows(copy, "SELECT COUNT(*) AS n FROM jobs WHERE campaign = 'more'") == [{"n": 2}]
    finally:
        browser.close()


def test_a_reader_in_the_middle_of_a_read_never_fails_or_holds_a_writing_command(tmp_path):
    ledger = tmp_path / "l.db"
    manifest = grok_batch(tmp_path / "m.yaml", 2)
    assert batchgen("ingest", str(manifest), ledger=ledger).returncode == 0
    reader = sqlite3.connect(ledger, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM jobs").fetchall()  # holds its snapshot
        more = grok_batch(tmp_path / "more.yaml", 2, campaign="more")
        result = batchgen("ingest", str(more), ledger=ledger, timeout=20)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert rows(ledger, "SELECT COUNT(*) AS n FROM jobs") == [{"n": 4}]
