"""The ledger's base: the connection, its transactions and events, the shared dataclasses
and the small helpers every part of the ledger uses.

The other modules of this package add the ledger's methods as mixins of `LedgerBase`;
`batchgen.ledger.Ledger` puts them together.
"""

from __future__ import annotations

import functools
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from batchgen.errors import LedgerError, NoLedger
from batchgen.job import canonical_json
from batchgen.keys import Redactor
from batchgen.ledger.db import (
    POSTGRESQL,
    Connection,
    PgConnection,
    database_errors,
    dialect_of,
    is_url,
    load_psycopg,
    password,
    pg_waitable,
    redacted,
)
from batchgen.ledger.migrations import JOB_STATUSES, known_migrations, migrate

DEFAULT_PATH = "batchgen.db"
DEFAULT_OUT = "out"  # where result files are saved, and found by `review` (PRODUCT §9)
UNFINISHED = ("queued", "submitting", "running")
LOCK_WAIT_MS = 2000  # SQLite's own wait for a lock, before batchgen says it waits
BUSY_TIMEOUT_MS = 30_000  # what an open ledger connection then waits for a lock
LOCK_NOTICE_EVERY = 5.0  # seconds between two "waiting for the ledger" lines
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_NOTADB = 5, 6, 11, 26

T = TypeVar("T")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LedgerJob:
    """A job as the scheduler sees it: enough to submit and poll it."""

    campaign: str
    id: str
    model: str
    kind: str
    request: dict[str, Any]
    fingerprint: str
    price_micros: int
    duration: int | None
    status: str
    task_id: str | None
    attempts: int
    submitted_at: str | None = None
    # The label of the API key that created its task (attempts.key_label): its polls go
    # with that key. None for a job without a task, or a task recorded before m007.
    key_label: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.campaign, self.id)


@dataclass
class Money:
    """Sums over attempts, in micro-dollars (see docs/ledger.md for each meaning)."""

    spent: int = 0
    in_flight: int = 0
    unknown: int = 0
    refunded: int = 0


@dataclass
class IngestResult:
    new: int
    unchanged: int
    replaced: int


class LedgerBase:
    """The ledger's connection: opened (and migrated) on construction, written in
    `BEGIN IMMEDIATE` transactions."""

    # Money follows the attempt-state rules in migrations.py, written once here: spent,
    # in flight, unknown and refunded, as SQL over `attempts a`.
    _ATTEMPT_MONEY = (
        "CASE WHEN a.state IN ('completed', 'failed') THEN a.cost_micro_usd ELSE 0 END",
        "CASE WHEN a.state = 'running' THEN a.cost_micro_usd ELSE 0 END",
        "CASE WHEN a.state IN ('unknown', 'sending') THEN a.unit_price_micro_usd ELSE 0 END",
        "a.refunded_micro_usd",
    )

    def __init__(
        self,
        path: str | Path,
        create: bool = True,
        notify: Callable[[str], None] | None = None,
        *,
        read_only: bool = False,
    ):
        """Open (creating it if `create`) and migrate the ledger; `read_only`: open an
        existing one with SQLite's mode=ro, for reading commands, which never write.
        `path`: a SQLite file, or a PostgreSQL URL (batchgen.ledger.db)."""
        self.conn: Connection
        self.location = str(path)  # as given: a file's path, or a URL with its password
        self.name = redacted(path)  # as shown and stored
        self.path = Path(path) if not is_url(path) else Path(self.name)
        self._writes = not read_only  # a reading command's ledger never writes
        self.notify = notify or _to_stderr
        # Every key in force (the runner adds them): no text is stored with one in it.
        self.redact = Redactor()
        self.redact.add(password(path) or "", "password")
        if is_url(path):
            self._connect_postgres(read_only, create)
            return
        if read_only and not self.path.is_file():
            raise NoLedger(f"{self.path}: no ledger here")
        if not create and not self.path.exists():
            raise LedgerError(f"{self.path}: no ledger here (run `batchgen ingest` or `run` first)")
        try:
            if read_only:
                uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
            else:
                self.conn = sqlite3.connect(
                    self.path, isolation_level=None, timeout=30, check_same_thread=False
                )
        except sqlite3.DatabaseError as e:
            verb = "read" if read_only else "open"
            raise LedgerError(f"{self.path}: cannot {verb} the ledger: {e}") from e
        try:
            self.conn.execute(f"PRAGMA busy_timeout={LOCK_WAIT_MS}")
            if read_only:
                self._patiently(lambda: check_ours(self.conn, self.name, empty_ok=False))
            else:
                self._patiently(self._open)
            self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise unusable(self.path, e) from e
        except BaseException:
            self.conn.close()
            raise

    def _connect_postgres(self, read_only: bool, create: bool) -> None:
        """Connect to a PostgreSQL ledger, waiting (saying so) while the server cannot be
        reached, then check it is ours and, for writing, bring its schema up to date."""
        psycopg = load_psycopg()

        def connect() -> PgConnection:
            try:
                return PgConnection(self.location, read_only=read_only)
            except psycopg.OperationalError as e:
                if _refused_for_good(e):
                    raise LedgerError(
                        f"{self.name}: cannot connect to the ledger: {_first_line(e)}"
                    ) from e
                raise

        self.conn = conn = self._patiently(connect)
        try:
            conn.set_lock_wait(LOCK_WAIT_MS / 1000)
            if read_only or not create:
                self._patiently(lambda: check_ours(conn, self.name, empty_ok=False))
            if not read_only:
                self._patiently(self._open)
            conn.set_lock_wait(BUSY_TIMEOUT_MS / 1000)
            conn.patience = self._patiently
        except psycopg.Error as e:
            self.conn.close()
            raise LedgerError(f"{self.name}: cannot use the ledger: {_first_line(e)}") from e
        except BaseException:
            self.conn.close()
            raise

    @property
    def dialect(self) -> Any:
        return dialect_of(self.conn)

    @property
    def on_postgres(self) -> bool:
        return bool(self.dialect.name == POSTGRESQL)

    def _open(self) -> None:
        """Check that the file is a ledger of ours before anything writes to it (a foreign
        database or a newer batchgen's ledger is left exactly as it is), then set it up and
        bring its schema up to date."""
        check_ours(self.conn, self.name, empty_ok=True)
        if not self.on_postgres:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        migrate(self.conn)

    def _patiently(self, action: Callable[[], T]) -> T:
        """Do `action`, waiting while another program keeps the ledger locked: a line every
        few seconds says so (PRODUCT.md §5), never an error. Ctrl-C stops the wait."""
        started, told = time.monotonic(), None
        while True:
            tried = time.monotonic()
            try:
                return action()
            except database_errors() as e:
                if not is_locked(e):
                    raise
            if time.monotonic() - tried < 0.1:
                time.sleep(0.2)  # refused at once, without SQLite's own wait: do not spin
            if told is None or time.monotonic() - told >= LOCK_NOTICE_EVERY:
                told = time.monotonic()
                what = (
                    "cannot reach the ledger's server or it holds a lock"
                    if self.on_postgres_location
                    else "another program holds a lock on the ledger"
                )
                self.notify(
                    f"{self.name}: {what}; waiting for it ({told - started:.0f} s so far;"
                    " Ctrl-C to stop)"
                )

    def lock_wait(self, seconds: float) -> None:
        """How long a write waits for another's lock before failing as locked."""
        if isinstance(self.conn, PgConnection):
            self.conn.set_lock_wait(seconds)
        else:
            self.conn.execute(f"PRAGMA busy_timeout = {max(0, int(seconds * 1000))}")

    @property
    def on_postgres_location(self) -> bool:
        return is_url(self.location)

    def close(self) -> None:
        """Close the connection; a writing one first checkpoints (see `_checkpoint`)."""
        if self._writes and not self.on_postgres_location:
            self._checkpoint()
        self.conn.close()

    def _checkpoint(self) -> None:
        """Copy the write-ahead log into the .db file and empty it, so that the file alone
        holds every commit: a copy of it, `datasette -i`, a backup of one file. SQLite does
        it on closing only the last connection, and a reader (Datasette, the review page)
        may hold another. Never waits and never fails the command: whatever a reader's
        open snapshot keeps in the log stays there for the next checkpoint."""
        try:
            self.conn.execute("PRAGMA busy_timeout=0")
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass  # in a transaction, locked, damaged: the log keeps it, as before

    @contextmanager
    def transaction(self, patient: bool = False) -> Iterator[Connection]:
        """One `BEGIN IMMEDIATE` write; `patient`: wait, saying so, while another program
        holds the lock (for commands outside a run, where Ctrl-C still stops the wait)."""
        begin = self.dialect.begin_write
        if patient:
            xid = self._patiently(lambda: begin(self.conn))
        else:
            xid = begin(self.conn)
        try:
            yield self.conn
        except BaseException:
            # SQLite may have rolled back already (a full disk): keep the real error.
            if self.conn.in_transaction:
                with suppress(*database_errors()):
                    self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("COMMIT")
        except database_errors():
            if xid is None or not self._committed_after_all(xid):
                raise
            # The server committed it and the connection went before it could say so.

    def _committed_after_all(self, xid: int) -> bool:
        """Whether the PostgreSQL transaction `xid` committed, its COMMIT's answer lost with
        the connection (a restart, a network cut): asked again on a new connection (waiting
        while the server cannot be reached), since doing a write twice, or thinking it done
        when it was not, are both wrong."""
        while True:
            (status,) = self._patiently(
                lambda: self.conn.execute("SELECT txid_status(?)", (xid,)).fetchone()
            )
            if status != "in progress":
                return bool(status == "committed")
            time.sleep(0.1)  # its backend is still ending it

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read several things as of one moment: in WAL mode every statement of a read
        transaction sees the same committed state, whatever a runner commits meanwhile."""
        if self.on_postgres:
            self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        else:
            self.conn.execute("BEGIN")
        try:
            yield
        finally:
            with suppress(*database_errors()):
                self.conn.execute("COMMIT")

    @functools.cached_property
    def _money_table(self) -> str:
        """Where the money sums are read: `attempt_totals` (m006), or on a ledger that a
        reading command finds not yet migrated (it never writes), the attempts themselves.
        The money rules give the same sums on either (see migrations.py, m006)."""
        tables = self.dialect.tables(self.conn)
        return "attempt_totals" if "attempt_totals" in tables else "attempts"

    def _event(
        self, kind: str, campaign: str | None = None, job_id: str | None = None, **detail: Any
    ) -> None:
        self.conn.execute(
            "INSERT INTO events (at, campaign, job_id, kind, detail) VALUES (?, ?, ?, ?, ?)",
            (
                now(),
                campaign,
                job_id,
                kind,
                self.redact(canonical_json(detail)) if detail else None,
            ),
        )

    def query(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        return list(
            _dicts(self.conn.execute(sql, params if isinstance(params, dict) else list(params)))
        )


def _dicts(cursor: sqlite3.Cursor) -> Iterator[dict[str, Any]]:
    """The rows of a query as dicts by column name (as sqlite-utils' `query` gives them)."""
    keys = [column[0] for column in cursor.description]
    return (dict(zip(keys, row, strict=True)) for row in cursor)


def _campaign_filter(
    campaigns: list[str] | None, column: str = "campaign"
) -> tuple[str, list[Any]]:
    if not campaigns:
        return "", []
    return f"AND {column} IN ({', '.join('?' * len(campaigns))})", list(campaigns)


def job_counts(db: Connection, campaigns: list[str] | None = None) -> dict[str, int]:
    """Jobs per status, in one statement (one moment of the ledger).

    A year's ledger is mostly completed jobs: every other status is counted on the
    `jobs_by_status` index, and completed is the rest of the total, which SQLite counts
    from its smallest index without reading a row. So the answer costs the unfinished,
    failed and held jobs, not the million done.
    """
    where, params = _campaign_filter(campaigns)
    others = [status for status in JOB_STATUSES if status != "completed"]
    # No WHERE at all for the whole ledger: `WHERE 1=1` would lose the fast count.
    total = f"SELECT COUNT(*) FROM jobs {'WHERE 1=1 ' + where if where else ''}"
    rows = db.execute(
        f"SELECT ({total}), s.status, s.n FROM (SELECT 1) one LEFT JOIN"
        " (SELECT status, COUNT(*) AS n FROM jobs"
        f"  WHERE status IN ({', '.join('?' * len(others))}) {where} GROUP BY status) s"
        " ON 1 = 1",
        [*params, *others, *params],
    ).fetchall()
    counts = dict.fromkeys(JOB_STATUSES, 0)
    for _, status, n in rows:
        if status is not None:
            counts[status] = n
    counts["completed"] = rows[0][0] - sum(counts.values())
    return counts


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _primary_code(error: sqlite3.Error) -> int | None:
    """SQLite's primary result code (the low byte of the extended one Python reports)."""
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_locked(error: BaseException) -> bool:
    """Is this SQLite's "busy" or "locked" (another connection holds the lock), or on
    PostgreSQL a lock not granted in time or a server that cannot be reached now (a
    restart, a network cut): all of which pass if waited for?"""
    if isinstance(error, sqlite3.Error):
        return _primary_code(error) in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return pg_waitable(error)


def _refused_for_good(error: BaseException) -> bool:
    """A connection refused for a reason waiting does not cure: a wrong password, a
    database or role that does not exist, a malformed URL."""
    text = str(error).lower()
    return any(
        words in text
        for words in ("password", "does not exist", "authentication", "invalid", "no pg_hba")
    )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def unusable(path: str | Path, error: BaseException) -> LedgerError:
    """One clear line for a ledger file SQLite cannot use (damaged, not a database, ...)."""
    if not isinstance(error, sqlite3.Error):
        return LedgerError(f"{redacted(path)}: cannot use the ledger: {_first_line(error)}")
    code = _primary_code(error)
    if code == _SQLITE_NOTADB:
        return LedgerError(f"{path}: not a batchgen ledger (not an SQLite database at all)")
    if code == _SQLITE_CORRUPT:
        return LedgerError(
            f"{path}: the ledger file is damaged ({error}); batchgen stopped. "
            f"Keep a copy; `sqlite3 {path} .recover` may rescue its content"
        )
    return LedgerError(f"{path}: cannot use the ledger: {error}")


def check_ours(db: Any, path: str | Path, empty_ok: bool) -> None:
    """Refuse, reading only, a database that is not a batchgen ledger, or a ledger written
    by a newer batchgen (one that recorded a migration this one does not know). An empty
    database is a new ledger when `empty_ok`."""
    tables = dialect_of(db).tables(db)
    if not tables:
        if empty_ok:
            return
        raise NoLedger(
            f"{path}: no ledger here, the {'database' if is_url(path) else 'file'} is empty"
            " (run `batchgen ingest` first)"
        )
    names: set[str] = set()
    if "_migrations" in tables:
        try:
            names = {row[0] for row in db.execute("SELECT name FROM _migrations")}
        except database_errors() as e:
            if is_locked(e):
                raise
    if "m001_initial" not in names:
        raise LedgerError(
            f"{redacted(path)}: not a batchgen ledger (a database with other tables); "
            "it was left unchanged: give batchgen its own file with --ledger"
        )
    newer = sorted(names - known_migrations())
    if newer:
        raise LedgerError(
            f"{path}: written by a newer batchgen (migration {newer[0]} is unknown to "
            f"batchgen {_version()}); it was left unchanged: upgrade batchgen to use it"
        )


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("batchgen")
    except metadata.PackageNotFoundError:
        return "(unknown version)"
