"""`batchgen ledger copy SRC DST`: a ledger moved exactly between SQLite and PostgreSQL, in
either direction (PRODUCT.md §5): every campaign, job, attempt, verdict, file and event,
with its ids, so that `report` gives the same answers on both.

SRC is read as of one moment (a read transaction), never written. DST must be new or
empty; it is created and migrated by `Ledger(DST)`, then filled in one write transaction,
table after table in the order their foreign keys need, a page of rows at a time (a
million-job ledger is never held in memory).

What is not copied, and why:
- the totals (attempt_totals, key_totals, verdict_totals): made again from the copied
  rows, by DST's own triggers as the rows arrive on SQLite, summed once after them on
  PostgreSQL (where the triggers cost more than the copy); they are then checked equal to
  SRC's, in the same transaction (a difference rolls the copy back);
- `runners`: the processes using SRC, which do not use the copy. A SRC with a live runner
  is refused (its copy would miss what the runner is about to record); a dead runner's
  attempts in flight keep its id, and the first `resume` on the copy adopts them, as it
  would on SRC;
- `_migrations`: DST records its own (the same names; when DST was migrated).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from batchgen.errors import LedgerError
from batchgen.keys import Redactor
from batchgen.ledger import Ledger
from batchgen.ledger.base import _first_line, check_ours, unusable
from batchgen.ledger.db import (
    SQLITE_DIALECT,
    PgConnection,
    companion,
    database_errors,
    dialect_of,
    is_url,
    password,
    redacted,
)
from batchgen.ledger.migrations import MIGRATIONS
from batchgen.ledger.recovery import RECOVERY_SUFFIX

# The tables copied, in the order their foreign keys need, each with the key it is read
# in order of (a page at a time: the rows after the last key read).
COPIED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("campaigns", ("name",)),
    ("jobs", ("ref",)),
    ("attempts", ("id",)),
    ("verdicts", ("id",)),
    ("files", ("campaign", "job_id", "n")),
    ("events", ("id",)),
)
TOTALS = ("attempt_totals", "key_totals", "verdict_totals")  # kept by triggers, then checked
NOT_COPIED = ("runners", "_migrations", *TOTALS)
# The integer keys PostgreSQL numbers with an identity: moved past the copied ids.
IDENTITIES = (("jobs", "ref"), ("attempts", "id"), ("verdicts", "id"), ("events", "id"))
# On PostgreSQL the totals' triggers, which cost a statement or two per row (a third of a
# millisecond each), are off while the rows go in; the totals are then summed once over
# the copied rows, as migrations m006, m007 and m009 first filled them.
TOTALLED = ("attempts", "verdicts")
_MONEY = "SUM(cost_micro_usd), SUM(unit_price_micro_usd), SUM(refunded_micro_usd)"
TOTALS_SQL = (
    "INSERT INTO attempt_totals (campaign, state, attempts, cost_micro_usd,"
    f" unit_price_micro_usd, refunded_micro_usd) SELECT campaign, state, COUNT(*), {_MONEY}"
    " FROM attempts GROUP BY campaign, state",
    "INSERT INTO key_totals (campaign, key_label, state, attempts, cost_micro_usd,"
    " unit_price_micro_usd, refunded_micro_usd, refusals)"
    f" SELECT campaign, COALESCE(key_label, ''), state, COUNT(*), {_MONEY},"
    " SUM(CASE WHEN outcome = 'refused' THEN 1 ELSE 0 END)"
    " FROM attempts GROUP BY campaign, COALESCE(key_label, ''), state",
    # completed jobs by the verdict of the latest verdicts row on their current result
    "INSERT INTO verdict_totals (campaign, verdict, results)"
    " SELECT v.campaign, v.verdict, COUNT(*) FROM verdicts v"
    " JOIN jobs j ON j.campaign = v.campaign AND j.id = v.job_id AND j.task_id = v.task_id"
    " WHERE j.status = 'completed' AND v.verdict IS NOT NULL"
    " AND v.id = (SELECT MAX(w.id) FROM verdicts w WHERE w.campaign = v.campaign"
    " AND w.job_id = v.job_id AND w.task_id = v.task_id)"
    " GROUP BY v.campaign, v.verdict",
)
PAGE = 5000  # rows read and written at a time


@dataclass
class Copied:
    """What a copy did: where from, where to (passwords redacted), rows per table."""

    source: str
    destination: str
    rows: dict[str, int]

    def line(self) -> str:
        counts = ", ".join(f"{table} {n}" for table, n in self.rows.items())
        return f"copied {self.source} to {self.destination}: {counts}"

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination, "rows": self.rows}


def copy_ledger(source: str, destination: str) -> Copied:
    """Copy the ledger at `source` into `destination` (a SQLite path or a PostgreSQL URL,
    new or empty). A refusal or a failure is a LedgerError in one line, without a password;
    DST is then left as it was, or, if the copy itself failed, empty."""
    redact = Redactor()
    for location in (source, destination):
        redact.add(password(location) or "", "password")
    try:
        return _copy(source, destination)
    except LedgerError as e:
        raise LedgerError(redact(str(e))) from None
    except database_errors() as e:
        raise LedgerError(
            redact(
                f"{redacted(source)} -> {redacted(destination)}: the copy failed"
                f" ({_first_line(e)});"
                f" nothing was copied into {redacted(destination)}"
            )
        ) from None


def _copy(source: str, destination: str) -> Copied:
    if _same(source, destination):
        raise LedgerError(f"{redacted(source)}: SRC and DST are the same ledger")
    src = Ledger.read_only(source)
    try:
        _refuse_older(src)
        _refuse_unrecorded_answers(src)
        _refuse_unless_empty(destination)
        with src.snapshot():  # one moment of SRC, whatever its runners commit meanwhile
            _refuse_live_runners(src)
            dst = Ledger(destination)
            try:
                rows = _fill(src, dst)
            finally:
                dst.close()
    finally:
        src.close()
    return Copied(src.name, redacted(destination), rows)


def _fill(src: Ledger, dst: Ledger) -> dict[str, int]:
    """Every copied table's rows, in one transaction on DST; then its identities moved on
    and its totals checked against SRC's."""
    rows: dict[str, int] = {}
    with dst.transaction(patient=True) as db:
        _refuse_rows(db, dst.name)  # under DST's write lock: nobody filled it meanwhile
        if dst.on_postgres:  # the totals are summed once at the end instead (see TOTALS_SQL)
            for table in TOTALLED:
                db.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        for table, key in COPIED:
            columns = _same_columns(src, dst, table)
            rows[table] = _insert(db, table, columns, _pages(src.conn, table, columns, key))
        if dst.on_postgres:
            for table in TOTALLED:
                db.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
            for statement in TOTALS_SQL:
                db.execute(statement)
            for table, column in IDENTITIES:
                db.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                    f" COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
                )
        for table in TOTALS:
            if _totals(src.conn, table) != _totals(db, table):
                raise LedgerError(
                    f"{dst.name}: the copy's {table} differ from {src.name}'s"
                    " (the sums over its rows); nothing was copied"
                )
    return rows


def _pages(
    db: Any, table: str, columns: Sequence[str], key: Sequence[str]
) -> Iterator[list[tuple[Any, ...]]]:
    """The table's rows in order of `key`, a page at a time (each page a query of its own:
    no cursor is held open across pages, on either database)."""
    listed, keyed = ", ".join(columns), ", ".join(key)
    at = [columns.index(column) for column in key]
    last: list[Any] | None = None
    while True:
        after = f"WHERE ({keyed}) > ({', '.join('?' * len(key))})" if last is not None else ""
        page = [
            tuple(row)
            for row in db.execute(
                f"SELECT {listed} FROM {table} {after} ORDER BY {keyed} LIMIT {PAGE}", last or []
            )
        ]
        if page:
            yield page
        if len(page) < PAGE:
            return
        last = [page[-1][i] for i in at]


def _insert(db: Any, table: str, columns: Sequence[str], pages: Iterator[list[Any]]) -> int:
    count = 0
    for page in pages:
        if isinstance(db, PgConnection):
            db.copy_rows(table, columns, page)  # COPY: PostgreSQL's fast path
        else:
            marks = ", ".join("?" * len(columns))
            db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", page)
        count += len(page)
    return count


def _same_columns(src: Ledger, dst: Ledger, table: str) -> list[str]:
    """The table's columns, which SRC and DST must both have (both are at this batchgen's
    schema), in one order."""
    theirs, ours = src.dialect.columns(src.conn, table), dst.dialect.columns(dst.conn, table)
    if theirs != ours:
        raise LedgerError(
            f"{src.name}: its table {table} has other columns than a new ledger's"
            f" ({', '.join(sorted(theirs ^ ours))}); nothing was copied"
        )
    return sorted(theirs)


def _totals(db: Any, table: str) -> list[tuple[Any, ...]]:
    columns = sorted(dialect_of(db).columns(db, table))
    return sorted(tuple(row) for row in db.execute(f"SELECT {', '.join(columns)} FROM {table}"))


# ------------------------------------------------------------------------ refusals


def _same(source: str, destination: str) -> bool:
    if is_url(source) or is_url(destination):
        return source == destination
    return Path(source).resolve() == Path(destination).resolve()


def _refuse_older(src: Ledger) -> None:
    """A SRC of an older batchgen (not yet migrated to this one's schema) is refused: its
    copy would not be exact. Any command that writes brings it up to date."""
    applied = {row[0] for row in src.conn.execute("SELECT name FROM _migrations")}
    pending = [m.__name__ for m in MIGRATIONS if m.__name__ not in applied]
    if pending:
        raise LedgerError(
            f"{src.name}: a ledger of an older batchgen (migration {pending[0]} not applied);"
            " bring it up to date with a command that writes (`batchgen download`), then copy"
        )


def _refuse_unrecorded_answers(src: Ledger) -> None:
    """Answers a run kept in SRC's recovery file are not in SRC yet: recorded first."""
    waiting = companion(src.location, RECOVERY_SUFFIX)
    if waiting.is_file() and waiting.stat().st_size:
        raise LedgerError(
            f"{src.name}: answers of a run are not recorded yet ({waiting}); a command that"
            " writes records them (`batchgen download`), then copy"
        )


def _refuse_live_runners(src: Ledger) -> None:
    live = src.runners()
    if live:
        runner = live[0]
        raise LedgerError(
            f"{src.name}: in use by {len(live)} runner(s) (pid {runner['pid']} on"
            f" {runner['host']}, since {runner['since']}); copy it once they have stopped"
        )


def _refuse_unless_empty(location: str) -> None:
    """DST must be new, or a database (or an empty ledger) without rows: looked at
    read-only, so that a refused DST is left exactly as it was."""
    name = redacted(location)
    if not is_url(location):
        path = Path(location)
        if path.is_dir():
            raise LedgerError(f"{path}: a folder; DST is a ledger file's path or a URL")
        if not path.exists() or path.stat().st_size == 0:
            return
    db = _look_at(location)
    try:
        if not dialect_of(db).tables(db):
            return  # an empty database: the copy's to fill
        check_ours(db, name, empty_ok=True)  # not another program's database, nor newer
        _refuse_rows(db, name)
    finally:
        db.close()


def _refuse_rows(db: Any, name: str) -> None:
    tables = dialect_of(db).tables(db)
    held = [
        table
        for table in (*(table for table, _ in COPIED), "runners")
        if table in tables and db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
    ]
    if held:
        (jobs,) = db.execute("SELECT COUNT(*) FROM jobs").fetchone() if "jobs" in tables else (0,)
        raise LedgerError(
            f"{name}: not empty (a ledger of {jobs} job(s)); a copy goes into a new file or an"
            " empty database, never over a ledger"
        )


def _look_at(location: str) -> Any:
    """A read-only connection to an existing DST, or one clear line why not."""
    if is_url(location):
        try:
            return PgConnection(location, read_only=True)
        except database_errors() as e:
            raise LedgerError(f"{redacted(location)}: cannot connect: {_first_line(e)}") from None
    path = Path(location)
    try:
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
        SQLITE_DIALECT.tables(db)
    except sqlite3.DatabaseError as e:
        raise unusable(path, e) from None
    return db
