"""A PostgreSQL connection that answers as sqlite3's does, and the SQL each engine spells its
own way (batchgen/ledger/db.py), on a real server: PgConnection's placeholders, numbers,
transactions, reconnection, patience, COPY and streams; the write lock; and every
PostgresDialect spelling giving, on the server, what SQLite's gives in sqlite3."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

import psycopg
import pytest
from psycopg import errors

from batchgen.ledger.db import (
    POSTGRES_DIALECT,
    SQLITE_DIALECT,
    STREAM_CHUNK,
    Dialect,
    PgConnection,
    database_errors,
    dialect_of,
    pg_waitable,
)


@pytest.fixture
def pg(postgres_url):
    conn = PgConnection(postgres_url)
    yield conn
    conn.close()


class Patience:
    """A `patience` that records what it is asked to wait for, and tries each once more
    when it fails as the ledger's would wait (pg_waitable)."""

    def __init__(self):
        self.asked = 0

    def __call__(self, action):
        self.asked += 1
        try:
            return action()
        except psycopg.Error as e:
            if not pg_waitable(e):
                raise
            return action()


def backend_pid(conn) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def cut(postgres_url, pid: int) -> None:
    """Cut a connection from the server's side, as a restart or a network cut would (and
    wait, up to 10 s, until its server process is gone)."""
    with closing(PgConnection(postgres_url)) as other:
        ended = other.execute("SELECT pg_terminate_backend(?, 10000)", (pid,)).fetchone()
        assert ended == (True,)


# ------------------------------------------------------------------ placeholders


def test_a_percent_sign_in_sql_without_parameters_is_a_modulo(pg):
    assert pg.execute("SELECT 17 % 5").fetchone() == (2,)


def test_a_percent_sign_with_parameters_is_still_sql_and_question_marks_are_placeholders(pg):
    pg.execute("CREATE TABLE t (name TEXT)")
    pg.executemany("INSERT INTO t VALUES (?)", [("bar",), ("cab",), ("xyz",)])
    found = pg.execute(
        "SELECT name, 17 % ? FROM t WHERE name LIKE '%a%' AND name <> ? ORDER BY name",
        (5, "cab"),
    ).fetchall()
    assert found == [("bar", 2)]


def test_a_question_mark_inside_quotes_is_text_not_a_placeholder(pg):
    assert pg.execute("SELECT 'why?', ?, 'it''s ?'", ("yes",)).fetchone() == (
        "why?",
        "yes",
        "it's ?",
    )


# ------------------------------------------------------------------ values


def test_numbers_come_back_as_sqlite3_gives_them(pg):
    pg.execute("CREATE TABLE t (n BIGINT, dollars NUMERIC(20, 6), whole NUMERIC)")
    pg.executemany("INSERT INTO t VALUES (?, ?, ?)", [(2, 1.25, 3), (40, 0.5, 4)])
    (total, dollars, whole) = pg.execute(
        "SELECT SUM(n), SUM(dollars), SUM(whole) FROM t"
    ).fetchone()
    assert (total, type(total)) == (42, int)  # SUM of BIGINT is a NUMERIC on PostgreSQL
    assert (dollars, type(dollars)) == (1.75, float)
    assert (whole, type(whole)) == (7, int)
    assert pg.execute("SELECT n FROM t ORDER BY n").fetchall() == [(2,), (40,)]


def test_a_bool_parameter_is_stored_as_the_integer_sqlite_stores(pg):
    pg.execute("CREATE TABLE t (n INTEGER, flag INTEGER)")
    pg.execute("INSERT INTO t VALUES (?, ?)", (1, True))
    pg.executemany("INSERT INTO t VALUES (?, ?)", [(2, False), (3, True)])
    assert pg.execute("SELECT n, flag FROM t ORDER BY n").fetchall() == [(1, 1), (2, 0), (3, 1)]
    assert pg.execute("SELECT n FROM t WHERE flag = ? ORDER BY n", (True,)).fetchall() == [
        (1,),
        (3,),
    ]


def test_the_dollar_type_sums_cents_exactly_on_postgresql(pg):
    pg.execute(f"CREATE TABLE t (usd {POSTGRES_DIALECT.dollar_type})")
    pg.executemany("INSERT INTO t VALUES (?)", [(0.1,)] * 3)
    assert pg.execute("SELECT SUM(usd) FROM t").fetchone() == (0.3,)


# ------------------------------------------------------------------ transactions


def test_in_transaction_says_whether_a_transaction_is_open_as_sqlite3_does(pg):
    assert pg.in_transaction is False
    pg.execute("BEGIN")
    assert pg.in_transaction is True
    pg.execute("COMMIT")
    assert pg.in_transaction is False
    pg.execute("BEGIN")
    with pytest.raises(errors.DivisionByZero):
        pg.execute("SELECT 1 / 0")
    assert pg.in_transaction is True  # a failed transaction is open until rolled back
    pg.execute("ROLLBACK")
    assert pg.in_transaction is False


def test_a_statement_outside_a_transaction_is_committed_at_once(pg, postgres_url):
    pg.execute("CREATE TABLE t (n INTEGER)")
    pg.execute("INSERT INTO t VALUES (?)", (1,))
    with closing(PgConnection(postgres_url)) as other:
        assert other.execute("SELECT n FROM t").fetchall() == [(1,)]


def test_a_cut_connection_fails_one_statement_then_the_next_one_reconnects(pg, postgres_url):
    first = backend_pid(pg)
    cut(postgres_url, first)
    with pytest.raises(psycopg.OperationalError) as failed:
        pg.execute("SELECT 1")
    assert pg_waitable(failed.value)
    assert pg.execute("SELECT 2").fetchone() == (2,)
    assert backend_pid(pg) != first


def test_a_reconnected_read_only_connection_is_still_read_only(postgres_url):
    with closing(PgConnection(postgres_url, read_only=True)) as reader:
        cut(postgres_url, backend_pid(reader))
        with pytest.raises(psycopg.OperationalError):
            reader.execute("SELECT 1")
        with pytest.raises(errors.ReadOnlySqlTransaction):
            reader.execute("CREATE TABLE t (n INTEGER)")


def test_a_closed_connection_is_not_opened_again(pg):
    pg.close()
    with pytest.raises(psycopg.OperationalError):
        pg.execute("SELECT 1")


def test_a_read_only_connection_reads_and_refuses_to_write(postgres_url):
    with closing(PgConnection(postgres_url)) as writer:
        writer.execute("CREATE TABLE t (n INTEGER)")
        writer.execute("INSERT INTO t VALUES (1)")
    with closing(PgConnection(postgres_url, read_only=True)) as reader:
        assert reader.execute("SELECT n FROM t").fetchall() == [(1,)]
        with pytest.raises(errors.ReadOnlySqlTransaction):
            reader.execute("INSERT INTO t VALUES (?)", (2,))
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)


# ------------------------------------------------------------------ patience


def test_a_statement_outside_a_transaction_waits_through_patience_across_a_cut(pg, postgres_url):
    pg.patience = patience = Patience()
    first = backend_pid(pg)
    assert patience.asked == 1
    cut(postgres_url, first)
    assert pg.execute("SELECT ?", (3,)).fetchone() == (3,)  # failed once, tried again
    assert patience.asked == 2
    assert backend_pid(pg) != first


def test_a_statement_in_a_transaction_is_never_waited_for(pg, postgres_url):
    pg.execute("CREATE TABLE t (n INTEGER)")
    pg.patience = patience = Patience()
    for begin, end in [("BEGIN", "COMMIT"), ("  begin", " rollback"), ("Begin", "Commit")]:
        pg.execute(begin)
        pg.execute("INSERT INTO t VALUES (?)", (1,))
        pg.execute("SELECT n FROM t").fetchall()
        pg.execute(end)
    assert patience.asked == 0
    pg.execute("BEGIN")
    cut(postgres_url, backend_pid(pg))
    with pytest.raises(psycopg.OperationalError):  # its caller decides: not retried here
        pg.execute("INSERT INTO t VALUES (?)", (2,))
    assert patience.asked == 0


def test_begin_commit_and_rollback_are_never_waited_for(pg, postgres_url):
    cut(postgres_url, backend_pid(pg))
    pg.patience = patience = Patience()
    with pytest.raises(psycopg.OperationalError):
        pg.execute("BEGIN")
    assert patience.asked == 0
    pg.execute("BEGIN")  # on a new connection
    pg.execute("COMMIT")
    pg.execute("COMMIT")  # none open: a warning from the server, no error
    pg.execute("ROLLBACK")
    assert patience.asked == 0


def test_a_stream_outside_a_transaction_waits_through_patience_and_one_inside_does_not(
    pg, postgres_url
):
    cut(postgres_url, backend_pid(pg))
    pg.patience = patience = Patience()
    assert list(pg.stream("SELECT 1")) == [(1,)]
    assert patience.asked == 1
    pg.execute("BEGIN")
    assert list(pg.stream("SELECT 2")) == [(2,)]
    pg.execute("COMMIT")
    assert patience.asked == 1


# ------------------------------------------------------------------ COPY and streams


def test_copy_rows_inserts_every_row_as_execute_would(pg):
    pg.execute("CREATE TABLE t (n INTEGER, name TEXT, flag INTEGER, usd NUMERIC(20, 6))")
    pg.copy_rows(
        "t",
        ["n", "name", "flag", "usd"],
        iter([(1, "plain", True, 0.25), (2, None, False, None), (3, "tab\there, 'q'", 1, 2)]),
    )
    assert pg.execute("SELECT * FROM t ORDER BY n").fetchall() == [
        (1, "plain", 1, 0.25),
        (2, None, 0, None),
        (3, "tab\there, 'q'", 1, 2.0),
    ]


def test_copy_rows_fills_only_the_columns_named(pg):
    pg.execute("CREATE TABLE t (n INTEGER, name TEXT DEFAULT 'unnamed', m INTEGER)")
    pg.copy_rows("t", ["m", "n"], [(10, 1)])
    assert pg.execute("SELECT n, name, m FROM t").fetchall() == [(1, "unnamed", 10)]


def test_a_stream_gives_every_row_in_order_with_its_columns(pg):
    rows = pg.stream(
        "SELECT i, 'row ' || i AS label FROM generate_series(1, ?) AS i ORDER BY i",
        (3 * STREAM_CHUNK + 7,),
    )
    assert [column.name for column in rows.description] == ["i", "label"]
    assert list(rows) == [(i, f"row {i}") for i in range(1, 3 * STREAM_CHUNK + 8)]


def test_a_stream_of_no_rows_has_no_rows(pg):
    assert list(pg.stream("SELECT 1 AS one WHERE 1 = ?", (2,))) == []


def test_a_stream_without_parameters_keeps_its_percent_signs(pg):
    assert list(pg.stream("SELECT 17 % 5, 'a%b' LIKE 'a%'")) == [(2, True)]


def test_a_stream_gives_its_rows_before_the_server_has_finished_the_query(pg):
    """Rows arrive before the server fails on a later one: the stream is not the whole
    result, held at once. The error comes where the rows stop, as an error."""
    failing_at = 4 * STREAM_CHUNK + STREAM_CHUNK // 2
    rows = iter(
        pg.stream(
            "SELECT CASE WHEN i < ? THEN i ELSE 1 / (i - i) END FROM generate_series(1, ?) AS i",
            (failing_at, 10 * STREAM_CHUNK),
        )
    )
    received = []
    with pytest.raises(errors.DivisionByZero):
        for row in rows:
            received.append(row[0])
    assert len(received) >= STREAM_CHUNK
    assert received == list(range(1, len(received) + 1))
    assert pg.execute("SELECT 5").fetchone() == (5,)  # the connection is usable again


# ------------------------------------------------------------------ the write lock


def test_a_write_waits_for_anothers_write_lock_then_fails_as_waitable(postgres_url):
    with (
        closing(PgConnection(postgres_url)) as first,
        closing(PgConnection(postgres_url)) as second,
    ):
        second.set_lock_wait(0.05)
        xid = POSTGRES_DIALECT.begin_write(first)
        assert type(xid) is int
        assert xid == first.execute("SELECT txid_current()").fetchone()[0]
        with pytest.raises(psycopg.Error) as failed:
            POSTGRES_DIALECT.begin_write(second)
        assert pg_waitable(failed.value)
        assert isinstance(failed.value, errors.LockNotAvailable)
        assert second.in_transaction is False  # the failed BEGIN rolled back
        first.execute("COMMIT")
        later = POSTGRES_DIALECT.begin_write(second)
        assert type(later) is int and later > xid
        second.execute("COMMIT")


def test_set_lock_wait_is_the_servers_lock_timeout_in_milliseconds(pg):
    pg.set_lock_wait(2.5)
    assert pg.execute("SHOW lock_timeout").fetchone() == ("2500ms",)
    pg.set_lock_wait(0)  # never 0, which is PostgreSQL's "wait for ever"
    assert pg.execute("SHOW lock_timeout").fetchone() == ("1ms",)


def test_a_sqlite_write_begins_immediately_and_has_no_transaction_id(tmp_path):
    conn = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    assert SQLITE_DIALECT.begin_write(conn) is None
    assert conn.in_transaction
    conn.execute("ROLLBACK")
    conn.close()


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("error", "waitable"),
    [
        (errors.LockNotAvailable(), True),
        (errors.DeadlockDetected(), True),
        (errors.SerializationFailure(), True),
        (errors.QueryCanceled(), True),
        (psycopg.OperationalError("server closed the connection"), True),
        (errors.AdminShutdown(), True),
        (psycopg.IntegrityError(), False),
        (errors.UniqueViolation(), False),
        (errors.DivisionByZero(), False),
        (psycopg.ProgrammingError(), False),
        (sqlite3.OperationalError("database is locked"), False),
        (ValueError("no database"), False),
    ],
)
def test_a_postgresql_error_that_passes_if_waited_for_is_told_from_one_that_does_not(
    error, waitable
):
    assert pg_waitable(error) is waitable


def test_every_database_error_is_caught_whichever_the_ledger():
    caught = database_errors()
    assert isinstance(sqlite3.OperationalError(), caught)
    assert isinstance(errors.UniqueViolation(), caught)
    assert not isinstance(ValueError(), caught)


def test_the_dialect_is_told_by_the_connection(pg):
    assert dialect_of(pg) is POSTGRES_DIALECT
    assert dialect_of(sqlite3.connect(":memory:")) is SQLITE_DIALECT


# ------------------------------------------------------------------ the same answers


ITEMS = [  # n, v (a text), p (a JSON text or NULL), urls (a JSON array of strings), at, doc
    (
        3,
        'say "hi"',
        '{"a":1}',
        '["u3","b\\u00e9"]',
        "2026-12-07T23:59:59.123456Z",
        '{"error":null,"c2pa":{"state":"invalid"},"marked":true}',
    ),
    (1, "plain", None, "[]", "2026-01-31T00:00:00Z", None),
    (
        4,
        "ünïcode ✓ \\ back",
        "[1,2]",
        '["x"]',
        "2025-02-28T12:00:00Z",
        '{"error":"unreadable","marked":false}',
    ),
    (
        2,
        "tab\tnew\nline\x01",
        "null",
        '["B","a","é","a"]',
        "2026-12-07T00:00:00.5Z",
        '{"c2pa":{"state":"valid"},"marked":true}',
    ),
    (5, None, '"s"', '["z","y"]', "2024-02-29T23:00:00Z", "{}"),
]
SCHEMA = "CREATE TABLE items (n INTEGER, v TEXT, p TEXT, urls TEXT, at TEXT, doc TEXT)"


@pytest.fixture
def lite(tmp_path):
    conn = sqlite3.connect(tmp_path / "items.db", isolation_level=None)
    yield conn
    conn.close()


@pytest.fixture
def both(pg, lite):
    """The same items in a SQLite database and on the PostgreSQL server; `ask(query)`
    runs query(dialect) on each and gives both answers."""
    for conn in (lite, pg):
        conn.execute(SCHEMA)
        conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", ITEMS)

    def ask(query, params=()):
        return (
            lite.execute(query(SQLITE_DIALECT), params).fetchall(),
            pg.execute(query(POSTGRES_DIALECT), params).fetchall(),
        )

    return ask


# SQL texts the spellings take
NULL_AS_JSON, PLAIN = "COALESCE(i.p, 'null')", "v = 'plain'"
COMMA_SPACE, COMMA, DASH = "', '", "','", "'-'"
A, ESCAPE, BRACKET = "'a'", "'\\u'", "'['"
ERROR, STATE, MARKED = "$.error", "$.c2pa.state", "$.marked"
ORDERED = "(SELECT * FROM items ORDER BY n) AS i"  # SQLite aggregates in this order

SPELLINGS = {
    "json_array_agg of texts, in order": lambda d: (
        f"SELECT {d.json_array_agg(d.json_text('i.v'), order='i.n')} FROM {ORDERED}"
    ),
    "json_array_agg of JSON, in order": lambda d: (
        f"SELECT {d.json_array_agg(d.json(NULL_AS_JSON), order='i.n')} FROM {ORDERED}"
    ),
    "json_array_agg without an order": lambda d: (
        f"SELECT {d.json_array_agg(d.json_text('i.v'))} FROM {ORDERED} WHERE i.n = 4"
    ),
    "json_array_agg of no rows": lambda d: (
        f"SELECT {d.json_array_agg(d.json_text('i.v'), order='i.n')} FROM {ORDERED} WHERE 1 = 0"
    ),
    "json_values": lambda d: (
        f"SELECT DISTINCT value FROM items, {d.json_values('items.urls')} ORDER BY value"
    ),
    "json_values compared": lambda d: (
        f"SELECT items.n, value FROM items, {d.json_values('items.urls')}"
        " WHERE value > 'Z' ORDER BY items.n, value"
    ),
    "json_text": lambda d: f"SELECT n, {d.json_text('v')} FROM items ORDER BY n",
    "flag": lambda d: (
        f"SELECT n, {d.flag('n > 2')}, {d.flag(PLAIN)} FROM items WHERE v IS NOT NULL ORDER BY n"
    ),
    "flag summed": lambda d: f"SELECT SUM({d.flag('n % 2 = 1')}) FROM items",
    "day": lambda d: f"SELECT n, {d.day('at')} FROM items ORDER BY n",
    "json_items": lambda d: (
        f"SELECT items.n, u.key, u.value FROM items CROSS JOIN {d.json_items('items.urls', 'u')}"
        " ORDER BY items.n, u.key"
    ),
    "json_array_length": lambda d: f"SELECT n, {d.json_array_length('urls')} FROM items ORDER BY n",
    "text_agg in order": lambda d: (
        f"SELECT {d.text_agg(d.json_text('i.v'), COMMA_SPACE, order='i.n')} FROM {ORDERED}"
    ),
    "text_agg of numbers": lambda d: (
        f"SELECT {d.text_agg('i.n', DASH, order='i.n')} FROM {ORDERED}"
    ),
    "text_agg without an order": lambda d: (
        f"SELECT {d.text_agg('i.v', COMMA)} FROM {ORDERED} WHERE i.n = 1"
    ),
    "text_agg of no rows": lambda d: (
        f"SELECT {d.text_agg('i.v', COMMA, order='i.n')} FROM {ORDERED} WHERE 1 = 0"
    ),
    "zero_padded": lambda d: (
        f"SELECT n, {d.zero_padded('n * 7', 2)}, {d.zero_padded('n * 12345 % 1000000', 6)},"
        f" {d.zero_padded('0', 3)} FROM items ORDER BY n"
    ),
    "instr": lambda d: (
        f"SELECT n, {d.instr('urls', A)}, {d.instr('urls', ESCAPE)}, {d.instr('urls', BRACKET)}"
        " FROM items ORDER BY n"
    ),
    "json_value": lambda d: (
        f"SELECT n, {d.json_value('doc', ERROR)}, {d.json_value('doc', ERROR)} IS NULL,"
        f" {d.json_value('doc', STATE)}, {d.json_value('doc', STATE)} = 'invalid'"
        " FROM items ORDER BY n"
    ),
    "json_true": lambda d: (
        f"SELECT n, CASE WHEN {d.json_true('doc', MARKED)} THEN 'yes' ELSE 'no' END,"
        f" CASE WHEN NOT {d.json_true('doc', MARKED)} THEN 'not' ELSE 'null' END"
        " FROM items ORDER BY n"
    ),
    "json_valid": lambda d: (
        f"SELECT n, CASE WHEN {d.json_valid('doc')} THEN 'yes' ELSE 'no' END,"
        f" CASE WHEN NOT {d.json_valid('doc')} THEN 'not' ELSE 'else' END FROM items ORDER BY n"
    ),
    "json as JSON in text": lambda d: (
        f"SELECT n, {d.json_array_agg(d.json('p'))} FROM items WHERE p IS NOT NULL GROUP BY n"
        " ORDER BY n"
    ),
}


@pytest.mark.parametrize("query", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_each_postgresql_spelling_gives_what_sqlites_gives(both, query):
    on_sqlite, on_postgresql = both(query)
    assert on_postgresql == on_sqlite
    assert on_sqlite  # a comparison of something


@pytest.mark.parametrize("part", ["PLA", "pla", "Say", "ÜN", "ün", "✓ \\ B", "x", ""])
def test_contains_text_folds_ascii_letters_only_on_both(both, part):
    """The review page's search: `?` is what the reviewer typed."""
    on_sqlite, on_postgresql = both(
        lambda d: f"SELECT n FROM items WHERE {d.contains_text('v', '?')} ORDER BY n", (part,)
    )
    assert on_postgresql == on_sqlite


def test_a_json_object_with_a_json_array_value_parses_the_same_on_both(both):
    def query(d):
        detail = d.json_object(
            f"'n', i.n, 'v', i.v, 'p', {d.json(NULL_AS_JSON)},"
            f" 'urls', (SELECT {d.json_array_value('u.value', 'u.key')}"
            f" FROM {d.json_items('i.urls', 'u')})"
        )
        return f"SELECT {detail} FROM {ORDERED} ORDER BY i.n"

    on_sqlite, on_postgresql = both(query)
    # sqlite3 gives the JSON's text, psycopg the value its json type loads as
    assert [row for (row,) in on_postgresql] == [json.loads(row) for (row,) in on_sqlite]
    assert on_postgresql[3][0] == {"n": 4, "v": "ünïcode ✓ \\ back", "p": [1, 2], "urls": ["x"]}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_data_version_changes_when_another_connection_commits_and_only_then(
    kind, tmp_path, postgres_url
):
    if kind == "sqlite":
        reader = sqlite3.connect(tmp_path / "v.db", isolation_level=None)
        writer = sqlite3.connect(tmp_path / "v.db", isolation_level=None)
    else:
        reader, writer = PgConnection(postgres_url), PgConnection(postgres_url)
    dialect = dialect_of(reader)
    with closing(reader), closing(writer):
        writer.execute("CREATE TABLE t (n INTEGER)")
        before = dialect.data_version(reader)
        assert dialect.data_version(reader) == before
        writer.execute("INSERT INTO t VALUES (1)")
        after = dialect.data_version(reader)
        assert after != before
        assert dialect.data_version(reader) == after
        reader.execute("INSERT INTO t VALUES (2)")  # a change of its own
        assert dialect.data_version(reader) != after


def test_the_same_tables_and_columns_are_found_on_both(both, pg, lite):
    for conn in (lite, pg):
        conn.execute("CREATE TABLE other (a INTEGER, b TEXT)")
        conn.execute("CREATE VIEW seen AS SELECT a FROM other")
    assert SQLITE_DIALECT.tables(lite) == POSTGRES_DIALECT.tables(pg) == {"items", "other"}
    for table in ("items", "other"):
        assert SQLITE_DIALECT.columns(lite, table) == POSTGRES_DIALECT.columns(pg, table)
    assert POSTGRES_DIALECT.columns(pg, "other") == {"a", "b"}
    assert POSTGRES_DIALECT.columns(pg, "nothing") == set()


def test_every_spelling_of_the_dialect_is_compared():
    spelled = {
        name
        for name, member in vars(Dialect).items()
        if callable(member) and not name.startswith("_")
    }
    compared = {"begin_write", "tables", "columns", "contains_text", "json_object"}
    compared |= {"json_array_value", "data_version"} | {key.split()[0] for key in SPELLINGS}
    assert spelled <= compared
