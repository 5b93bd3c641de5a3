"""Where a ledger lives, and the connection to it: a SQLite file or a PostgreSQL database.

The ledger's SQL is written once, in the SQL both engines speak (`?` placeholders,
`ON CONFLICT`, `RETURNING`, `CASE`); the few things spelled differently (JSON arrays,
a day of a timestamp, a write's lock, the schema's types) are the methods of `Dialect`.
A PostgreSQL connection is wrapped to look like sqlite3's (`execute`, `executemany`,
`in_transaction`, rows as tuples, integer sums as int), so the rest of the ledger does
not know which it has.

Writes are serialized on both. SQLite has one writer at a time (`BEGIN IMMEDIATE`); on
PostgreSQL every write transaction first takes one transaction-level advisory lock of the
database (`pg_advisory_xact_lock`), so a claim reads and decides exactly as it does on
SQLite, whatever the isolation level. Reads never wait (WAL; MVCC).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

SQLITE, POSTGRESQL = "sqlite", "postgresql"


class Connection(Protocol):
    """What the ledger uses of a connection: sqlite3's, which PgConnection also offers."""

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, rows: Any, /) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


URL_SCHEMES = ("postgresql://", "postgres://")
# The advisory lock every PostgreSQL write transaction takes: a number of our own
# (the first 8 bytes of SHA-256 of "batchgen ledger", as a signed 64-bit integer).
WRITE_LOCK = int.from_bytes(hashlib.sha256(b"batchgen ledger").digest()[:8], "big", signed=True)


def is_url(location: str | Path) -> bool:
    """Is this ledger location a PostgreSQL URL (else a SQLite file's path)?"""
    return str(location).startswith(URL_SCHEMES)


def redacted(location: str | Path) -> str:
    """The location as it may be shown or stored: a password in a URL (before the host,
    or as its `password=` parameter) becomes `***`."""
    text = str(location)
    if not is_url(text):
        return text
    parts = urlsplit(text)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    return urlunsplit(parts._replace(query=query))


def password(location: str | Path) -> str | None:
    """The password written in a PostgreSQL URL, if any (to be redacted wherever shown)."""
    if not is_url(location):
        return None
    parts = urlsplit(str(location))
    if parts.password:
        return unquote(parts.password)
    return parse_qs(parts.query).get("password", [None])[0]


def companion(location: str | Path, suffix: str) -> Path:
    """Where a file that goes with the ledger is kept (the recovery file, the sandbox's
    state): beside a SQLite file; for a PostgreSQL ledger, on this machine, in the user's
    state directory ($XDG_STATE_HOME/batchgen, else ~/.local/state/batchgen), named after
    the server and database, since what it keeps (answers not yet recorded) is this
    machine's."""
    if not is_url(location):
        path = Path(location)
        return path.with_name(path.name + suffix)
    parts = urlsplit(str(location))
    service = parse_qs(parts.query).get("service", [""])[0]  # a pg_service.conf entry
    server = f"{parts.hostname or service or 'local'}-{parts.port or 5432}"
    database = parts.path.lstrip("/") or parts.username or "postgres"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{server}-{database}")
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "batchgen" / (name + suffix)


class Dialect:
    """SQL that SQLite spells one way and PostgreSQL another; SQLite's is the default."""

    name = SQLITE
    dollar_type = "REAL"  # dollars in the views; sums over them stay exact on PostgreSQL

    def begin_write(self, db: Any) -> int | None:
        """Begin a write transaction, holding the write lock; the PostgreSQL transaction's
        id (None on SQLite): what tells, if its COMMIT goes unanswered, whether it held."""
        db.execute("BEGIN IMMEDIATE")
        return None

    def json_array_agg(self, expression: str, order: str = "") -> str:
        """The JSON text of the values of `expression` over a query's rows ('[]' for none),
        in `order` (SQLite aggregates in its subquery's order, which the caller gives)."""
        return f"json_group_array({expression})"

    def json_values(self, json_array: str) -> str:
        """A FROM item: the elements of a JSON array of strings, as the column `value`."""
        return f"json_each({json_array})"

    def json_text(self, expression: str) -> str:
        """A text as a JSON string literal (quoted and escaped); NULL as `null`."""
        return f"json_quote({expression})"

    def flag(self, condition: str) -> str:
        """1 where `condition` holds, else 0."""
        return f"({condition})"

    def day(self, timestamp: str) -> str:
        """The UTC day (YYYY-MM-DD) of one of the ledger's ISO 8601 timestamps."""
        return f"date({timestamp})"

    def tables(self, db: Any) -> set[str]:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}

    def columns(self, db: Any, table: str) -> set[str]:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}

    def json(self, text: str) -> str:
        """A JSON text as JSON, to be nested in `json_object` or gathered by `json_array_agg`
        (else it is a string)."""
        return f"json({text})"

    def json_items(self, json_array: str, alias: str) -> str:
        """A FROM item named `alias`: the elements of a JSON array of strings, as `value`,
        with `key` their index from 0 (join it with CROSS JOIN)."""
        return f"json_each({json_array}) {alias}"

    def json_array_length(self, json_array: str) -> str:
        return f"json_array_length({json_array})"

    def text_agg(self, expression: str, separator: str, order: str = "") -> str:
        """The texts of `expression` over a query's rows joined by `separator` (SQL), NULL
        for none, in `order` (SQLite joins in its subquery's order, which the caller gives)."""
        return f"group_concat({expression}, {separator})"

    def zero_padded(self, number: str, width: int) -> str:
        """A non-negative integer's digits, with zeros in front up to `width`."""
        return f"printf('%0{width}d', {number})"

    def instr(self, text: str, part: str) -> str:
        """Where `part` first is in `text`, from 1; 0 when it is not."""
        return f"instr({text}, {part})"

    def json_object(self, arguments: str) -> str:
        """A JSON object from `arguments`, SQL of `'key', value, ...` (a value given by
        `json` or `json_array_value` nested as JSON). Parsed, the same on both ledgers;
        PostgreSQL spaces its text otherwise."""
        return f"json_object({arguments})"

    def json_array_value(self, expression: str, order: str) -> str:
        """`json_array_agg` as a value to nest in `json_object` (SQLite aggregates in its
        rows' order; PostgreSQL in `order`)."""
        return f"json_group_array({expression})"

    def json_valid(self, text: str) -> str:
        """Whether `text` (a column batchgen fills with json.dumps) holds JSON."""
        return f"json_valid({text})"

    def json_value(self, json_text: str, path: str) -> str:
        """The value at `path` ('$.a.b') of a JSON text, NULL when absent or null: to be
        tested for NULL or compared with a text (PostgreSQL gives every value as text)."""
        return f"json_extract({json_text}, '{path}')"

    def json_true(self, json_text: str, path: str) -> str:
        """Whether the value at `path` ('$.a') of a JSON text is true."""
        return f"json_extract({json_text}, '{path}')"

    def contains_text(self, text: str, part: str) -> str:
        """Whether `part` occurs in `text`, ASCII letters matched whatever their case (as
        SQLite's lower() folds them)."""
        return f"instr(lower({text}), lower({part})) > 0"

    def data_version(self, db: Any) -> str:
        """A marker that changes whenever the ledger changes (read in a snapshot: as of
        it): cheap, the same cost on a million jobs as on ten. SQLite's data_version (a
        commit by another connection) and this connection's total changes."""
        (version,) = db.execute("PRAGMA data_version").fetchone()
        return f"{version}.{db.total_changes}"


class PostgresDialect(Dialect):
    name = POSTGRESQL
    dollar_type = "NUMERIC(20, 6)"

    def begin_write(self, db: Any) -> int | None:
        return int(db.begin_write())

    def json_array_agg(self, expression: str, order: str = "") -> str:
        # Spelled as SQLite writes it (no spaces), so both ledgers give the same text.
        ordered = f" ORDER BY {order}" if order else ""
        return f"COALESCE('[' || string_agg(({expression})::text, ','{ordered}) || ']', '[]')"

    def json_values(self, json_array: str) -> str:
        # Collated "C" as the ledger's text columns are: compared and sorted as SQLite does.
        return (
            f'LATERAL (SELECT e.value COLLATE "C" AS value'
            f" FROM json_array_elements_text(({json_array})::json) AS e(value)) AS value"
        )

    def json_text(self, expression: str) -> str:
        return f"COALESCE(to_json(({expression})::text)::text, 'null')"

    def flag(self, condition: str) -> str:
        return f"(CASE WHEN {condition} THEN 1 ELSE 0 END)"

    def day(self, timestamp: str) -> str:
        return f"substr({timestamp}, 1, 10)"

    def tables(self, db: Any) -> set[str]:
        rows = db.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
        return {row[0] for row in rows}

    def columns(self, db: Any, table: str) -> set[str]:
        rows = db.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        )
        return {row[0] for row in rows}

    def json(self, text: str) -> str:
        return f"({text})::json"

    def json_items(self, json_array: str, alias: str) -> str:
        return (
            f'LATERAL (SELECT e.value COLLATE "C" AS value, e.number - 1 AS key'
            f" FROM json_array_elements_text(({json_array})::json) WITH ORDINALITY"
            f" AS e(value, number)) {alias}"
        )

    def json_array_length(self, json_array: str) -> str:
        return f"json_array_length(({json_array})::json)"

    def text_agg(self, expression: str, separator: str, order: str = "") -> str:
        ordered = f" ORDER BY {order}" if order else ""
        return f"string_agg(({expression})::text, {separator}{ordered})"

    def zero_padded(self, number: str, width: int) -> str:
        return f"lpad(({number})::text, {width}, '0')"

    def instr(self, text: str, part: str) -> str:
        return f"strpos({text}, {part})"

    def json_object(self, arguments: str) -> str:
        return f"json_build_object({arguments})"

    def json_array_value(self, expression: str, order: str) -> str:
        return f"COALESCE(json_agg(({expression}) ORDER BY {order}), '[]'::json)"

    def json_valid(self, text: str) -> str:
        # PostgreSQL before 16 cannot test a text for JSON without failing on one that
        # is not; batchgen writes these columns with json.dumps (and `ledger copy` copies
        # them), so a text there is JSON.
        return f"(({text}) IS NOT NULL)"

    def json_value(self, json_text: str, path: str) -> str:
        keys = ",".join(path.removeprefix("$.").split("."))
        return f"(({json_text})::json #>> '{{{keys}}}')"

    def json_true(self, json_text: str, path: str) -> str:
        return f"({self.json_value(json_text, path)} = 'true')"

    def contains_text(self, text: str, part: str) -> str:
        # "C": ASCII letters only are folded, as SQLite does, whatever the server's locale
        return f'strpos(lower(({text})::text COLLATE "C"), lower(({part})::text COLLATE "C")) > 0'

    def data_version(self, db: Any) -> str:
        # The snapshot itself (xmin:xmax:in-progress ids): two reads under the same one
        # see the same data, and any commit (of this ledger, or of another database on
        # the server) gives a new one. Never a change missed; at worst a read again.
        (snapshot,) = db.execute("SELECT pg_current_snapshot()::text").fetchone()
        return str(snapshot)


SQLITE_DIALECT, POSTGRES_DIALECT = Dialect(), PostgresDialect()


def dialect_of(db: Any) -> Dialect:
    return POSTGRES_DIALECT if isinstance(db, PgConnection) else SQLITE_DIALECT


# ------------------------------------------------------------------------ PostgreSQL


@lru_cache(maxsize=1024)
def pg_sql(sql: str) -> str:
    """sqlite3's `?` placeholders as psycopg's `%s` (a `%` of the SQL doubled); a `?`
    inside a quoted string or identifier is left as it is."""
    parts = re.split(r"""('(?:[^']|'')*'|"(?:[^"]|"")*")""", sql)
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("%", "%%").replace("?", "%s")
    for i in range(1, len(parts), 2):
        parts[i] = parts[i].replace("%", "%%")
    return "".join(parts)


class PgConnection:
    """A psycopg 3 connection that answers as a sqlite3 connection does (autocommit,
    explicit BEGIN/COMMIT, `?` placeholders, integer sums as int, bools sent as 0/1)."""

    def __init__(self, url: str, read_only: bool = False, connect_timeout: int = 10):
        self.url, self.read_only, self.connect_timeout = url, read_only, connect_timeout
        self.lock_wait_ms = 30_000  # set_lock_wait
        self._closed = False
        self._conn = self._connect()
        # How a statement outside a transaction waits while the server cannot be reached
        # (the ledger's `_patiently`: a line every few seconds, Ctrl-C stops it). A
        # transaction is never waited for here: its caller decides (a run's writes fail at
        # once, their answers kept in the recovery file, and are tried again).
        self.patience: Callable[[Callable[[], Any]], Any] | None = None

    def _connect(self) -> Any:
        conn = load_psycopg().connect(
            self.url, autocommit=True, connect_timeout=self.connect_timeout
        )
        _adapt(conn)
        # No JIT compilation: the ledger's large reads (status --json, report --jobs) run
        # small subqueries per job, which JIT only delays (2 of the 5 s of 200,000 jobs).
        conn.execute("SET jit = off")
        if self.read_only:
            conn.execute("SET default_transaction_read_only = on")
        return conn

    def _live(self) -> Any:
        """The connection, opened again if the server dropped it (a restart, a network
        cut): a statement then fails only while the server cannot be reached."""
        if (self._conn.broken or self._conn.closed) and not self._closed:
            self._conn = self._connect()
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        if self.patience is None or self.in_transaction or sql.lstrip()[:5].upper() in _TXN:
            return self._execute(sql, params)
        return self.patience(lambda: self._once_more_if_cut(sql, params))

    def _once_more_if_cut(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> Any:
        """A statement outside a transaction, sent again at once on a new connection if the
        server had dropped this one (which shows only when it is used): a read, as every
        write is a transaction of its own."""
        try:
            return self._execute(sql, params)
        except load_psycopg().OperationalError:
            if not self._conn.broken:
                raise
        return self._execute(sql, params)

    def _execute(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> Any:
        if not params:  # psycopg reads no placeholders (nor doubled %) in SQL sent alone
            return self._live().execute(sql)
        return self._live().execute(pg_sql(sql), _plain(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        cursor = self._live().cursor()
        cursor.executemany(pg_sql(sql), [_plain(row) for row in rows])
        return cursor

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Insert rows with COPY (ingest's fast path on PostgreSQL)."""
        with self._live().cursor() as cursor:
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(_plain(row))

    def stream(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Streamed:
        """The rows of a query as the server sends them, STREAM_CHUNK at a time (libpq's
        chunked mode; a row at a time before libpq 17 or psycopg 3.2): never all held at
        once, as sqlite3's cursor never holds them (`execute` holds every row). Until its
        last row is read, the connection runs nothing else."""

        def start() -> Streamed:
            cursor = self._live().cursor()
            query = (pg_sql(sql), _plain(params)) if params else (sql,)
            rows = cursor.stream(*query, **_chunked())
            first = next(rows, None)  # the columns are known once rows come
            return Streamed(cursor.description or [], first, rows)

        if self.patience is None or self.in_transaction:
            return start()
        return self.patience(start)  # type: ignore[no-any-return]

    @property
    def in_transaction(self) -> bool:
        import psycopg.pq

        # A connection the server dropped holds no transaction any more (UNKNOWN): the
        # next statement opens a new one, and a read there waits for the server.
        status = psycopg.pq.TransactionStatus
        return self._conn.info.transaction_status in (status.INTRANS, status.INERROR, status.ACTIVE)

    def set_lock_wait(self, seconds: float) -> None:
        """How long a write waits for the write lock (or a migration for a table's lock)
        before failing as locked: kept here, and set in each write transaction."""
        self.lock_wait_ms = max(1, int(seconds * 1000))

    def begin_write(self) -> int:
        """Begin a write transaction, its lock wait, and the write lock, in one round trip
        to the server (a write's other statements are its own); the transaction's id."""
        cursor = self._execute(
            f"BEGIN; SET LOCAL lock_timeout = {self.lock_wait_ms};"
            f" SELECT pg_advisory_xact_lock({WRITE_LOCK}), txid_current()",
            (),
        )
        try:
            while cursor.nextset():  # BEGIN and SET answer nothing; the SELECT comes last
                pass
            (_, xid) = cursor.fetchone()
        except BaseException:
            with suppress(Exception):
                self._execute("ROLLBACK", ())
            raise
        return int(xid)

    def close(self) -> None:
        self._closed = True
        self._conn.close()


_TXN = ("BEGIN", "COMMI", "ROLLB")
STREAM_CHUNK = 1000  # rows a stream receives at a time


class Streamed:
    """A query's rows as they come, and its columns (`description`, as a cursor's)."""

    def __init__(self, description: Sequence[Any], first: Any, rest: Iterator[Any]):
        self.description = description
        self._rows = itertools.chain(() if first is None else (first,), rest)

    def __iter__(self) -> Iterator[Any]:
        return self._rows


def _chunked() -> dict[str, int]:
    """`Cursor.stream`'s rows at a time, where libpq (17) and psycopg (3.2) can."""
    psycopg = load_psycopg()
    version = tuple(int(part) for part in re.findall(r"\d+", psycopg.__version__)[:2])
    return {"size": STREAM_CHUNK} if psycopg.pq.version() >= 170000 and version >= (3, 2) else {}


def _plain(params: Sequence[Any] | dict[str, Any]) -> Any:
    """Parameters as PostgreSQL takes them: a bool as the integer SQLite would store."""
    if isinstance(params, dict):
        return {k: int(v) if isinstance(v, bool) else v for k, v in params.items()}
    return [int(v) if isinstance(v, bool) else v for v in params]


def load_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover - the extra is part of the test install
        from batchgen.errors import LedgerError

        raise LedgerError(
            "a PostgreSQL ledger needs psycopg: pip install 'batchgen[postgres]'"
        ) from e
    return psycopg


def _adapt(conn: Any) -> None:
    """Numbers as sqlite3 gives them: a NUMERIC without a fraction (a SUM of integers) as
    int, with one (dollars) as float; timestamps are the ledger's own text."""
    from psycopg.adapt import Loader

    class NumericAsSqlite(Loader):
        def load(self, data: Any) -> int | float:
            text = bytes(data).decode()
            return float(text) if "." in text or "e" in text.lower() else int(text)

    conn.adapters.register_loader("numeric", NumericAsSqlite)


# ------------------------------------------------------------------------ errors


def database_errors() -> tuple[type[BaseException], ...]:
    """Every error a ledger's database may raise (sqlite3's, and psycopg's if installed)."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def pg_waitable(error: BaseException) -> bool:
    """A PostgreSQL error that passes if waited for: a lock not granted in time, a
    deadlock or serialization failure, a server gone away or refusing connections."""
    try:
        import psycopg
        from psycopg import errors
    except ImportError:
        return False
    if not isinstance(error, psycopg.Error):
        return False
    if isinstance(error, errors.LockNotAvailable | errors.DeadlockDetected):
        return True
    if isinstance(error, errors.SerializationFailure | errors.QueryCanceled):
        return True
    return isinstance(error, psycopg.OperationalError)
