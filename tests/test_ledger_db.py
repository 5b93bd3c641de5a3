"""Where a ledger lives and how its SQL is spoken to each engine (batchgen/ledger/db.py):
pure logic, no database."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import psycopg
import pytest

from batchgen.errors import LedgerError
from batchgen.ledger.db import (
    POSTGRES_DIALECT,
    SQLITE_DIALECT,
    STREAM_CHUNK,
    WRITE_LOCK,
    _chunked,
    companion,
    database_errors,
    is_url,
    load_psycopg,
    password,
    pg_sql,
    pg_waitable,
    redacted,
)


@pytest.mark.parametrize(
    ("location", "url"),
    [
        ("postgresql://u@h/d", True),
        ("postgres://u@h/d", True),
        ("postgresql:///?service=team", True),
        ("batchgen.db", False),
        ("./postgresql://x", False),
        (Path("/tmp/postgresql"), False),
        ("mysql://u@h/d", False),
    ],
)
def test_a_postgresql_url_is_told_from_a_sqlite_path(location, url):
    assert is_url(location) is url


@pytest.mark.parametrize(
    ("location", "shown", "secret"),
    [
        ("postgresql://ann:s3cret@db:6543/ledger", "postgresql://ann:***@db:6543/ledger", "s3cret"),
        ("postgresql://ann:p%40ss@db/l", "postgresql://ann:***@db/l", "p@ss"),
        ("postgresql://ann:p@ss@db/l", "postgresql://ann:***@db/l", "p@ss"),  # @ not encoded
        ("postgresql://:onlypw@db/l", "postgresql://:***@db/l", "onlypw"),
        (
            "postgresql://ann@db/l?sslmode=require&password=qq&application_name=x",
            "postgresql://ann@db/l?sslmode=require&password=***&application_name=x",
            "qq",
        ),
        ("postgresql://db/l?password=first", "postgresql://db/l?password=***", "first"),
        ("postgresql://ann@db/l", "postgresql://ann@db/l", None),
        ("postgresql://ann@db/l?mypassword=x", "postgresql://ann@db/l?mypassword=x", None),
        ("ledger:pw@x.db", "ledger:pw@x.db", None),
    ],
)
def test_a_password_in_a_url_is_found_and_never_shown(location, shown, secret):
    assert redacted(location) == shown
    assert password(location) == secret


def test_files_that_go_with_a_sqlite_ledger_are_kept_beside_it(tmp_path):
    assert companion(tmp_path / "team.db", ".recovery.jsonl") == tmp_path / "team.db.recovery.jsonl"


def test_files_that_go_with_a_postgresql_ledger_are_kept_in_the_users_state_directory(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    found = companion("postgresql://ann:s3cret@db.example.com:6543/ledger", ".recovery.jsonl")
    assert found == tmp_path / "batchgen" / "db.example.com-6543-ledger.recovery.jsonl"
    assert companion("postgresql://db/other", ".x").name == "db-5432-other.x"
    assert companion("postgresql://db/XY", ".x").name == "db-5432-XY.x"
    assert companion("postgresql:///?service=team", ".x").name == "team-5432-postgres.x"
    assert companion("postgresql://ann@/", ".x").name == "local-5432-ann.x"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert companion("postgresql://db/l", ".x") == (
        tmp_path / "home" / ".local" / "state" / "batchgen" / "db-5432-l.x"
    )


def test_a_name_with_odd_characters_makes_one_plain_file_name(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert companion("postgresql://db/a%2Fb c", ".x").name == "db-5432-a_2Fb_c.x"


@pytest.mark.parametrize(
    ("sql", "spoken"),
    [
        ("SELECT * FROM jobs WHERE id = ?", "SELECT * FROM jobs WHERE id = %s"),
        ("VALUES (?, ?)", "VALUES (%s, %s)"),
        ("SELECT abs(x) % 100 FROM t WHERE a = ?", "SELECT abs(x) %% 100 FROM t WHERE a = %s"),
        ("SELECT 'why?' , ? FROM t", "SELECT 'why?' , %s FROM t"),
        ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
        ("SELECT '100%', ?", "SELECT '100%%', %s"),
        ("SELECT 'a%', 'b%', ?", "SELECT 'a%%', 'b%%', %s"),
        ('SELECT "odd?name" FROM t WHERE a = ?', 'SELECT "odd?name" FROM t WHERE a = %s'),
    ],
)
def test_placeholders_are_spoken_to_psycopg_and_quoted_text_is_left_alone(sql, spoken):
    assert pg_sql(sql) == spoken


def test_the_write_lock_is_one_fixed_signed_64_bit_number():
    assert -(2**63) <= WRITE_LOCK < 2**63
    assert WRITE_LOCK == int.from_bytes(
        __import__("hashlib").sha256(b"batchgen ledger").digest()[:8], "big", signed=True
    )


def test_each_engine_spells_what_differs_in_its_own_words():
    s, p = SQLITE_DIALECT, POSTGRES_DIALECT
    assert (s.name, p.name) == ("sqlite", "postgresql")
    assert (s.dollar_type, p.dollar_type) == ("REAL", "NUMERIC(20, 6)")
    assert s.json_array_agg("f.path", order="f.n") == "json_group_array(f.path)"
    assert p.json_array_agg("x", order="n") == (
        "COALESCE('[' || string_agg((x)::text, ',' ORDER BY n) || ']', '[]')"
    )
    assert p.json_array_agg("x") == "COALESCE('[' || string_agg((x)::text, ',') || ']', '[]')"
    assert s.json_values("j.tags") == "json_each(j.tags)"
    assert p.json_values("j.tags") == (
        'LATERAL (SELECT e.value COLLATE "C" AS value'
        " FROM json_array_elements_text((j.tags)::json) AS e(value)) AS value"
    )
    assert s.json_text("a") == "json_quote(a)"
    assert p.json_text("a") == "COALESCE(to_json((a)::text)::text, 'null')"
    assert s.flag("a = 1") == "(a = 1)"
    assert p.flag("a = 1") == "(CASE WHEN a = 1 THEN 1 ELSE 0 END)"
    assert s.day("t") == "date(t)"
    assert p.day("t") == "substr(t, 1, 10)"


@pytest.mark.parametrize(
    ("psycopg_version", "libpq_version", "chunked"),
    [
        ("3.2.0", 170000, True),
        ("3.3.9", 180006, True),
        ("3.10.1", 170002, True),
        ("4.0", 170000, True),
        ("3.1.19", 170000, False),  # psycopg before 3.2: a row at a time
        ("3.2.0", 160009, False),  # libpq before 17: a row at a time
        ("2.9", 150000, False),
    ],
)
def test_a_stream_takes_rows_a_chunk_at_a_time_where_libpq_and_psycopg_can(
    monkeypatch, psycopg_version, libpq_version, chunked
):
    monkeypatch.setattr(psycopg, "__version__", psycopg_version)
    monkeypatch.setattr(psycopg.pq, "version", lambda: libpq_version)
    assert _chunked() == ({"size": STREAM_CHUNK} if chunked else {})


def test_without_psycopg_a_sqlite_ledger_works_and_a_postgresql_one_says_what_to_install(
    monkeypatch,
):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` fails
    assert database_errors() == (sqlite3.Error,)
    assert pg_waitable(sqlite3.OperationalError("database is locked")) is False
    with pytest.raises(LedgerError, match=r"pip install 'batchgen\[postgres\]'"):
        load_psycopg()
