"""The tests' throwaway PostgreSQL server (tests/postgres.py, the postgres_cluster and
postgres_url fixtures): a real server, not run as root, a new empty database for each test,
isolated from the others, and no server left behind, even by a killed test process."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests import postgres

ROOT = Path(__file__).resolve().parent.parent


def user_tables(url: str) -> list[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return [name for (name,) in rows]


def accepts_connections(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=10) as connection:
            connection.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


urls_seen: list[str] = []


# One worker, one cluster: the second test would see the first one's table if it were given
# the same database.
@pytest.mark.xdist_group("postgres_cluster")
@pytest.mark.parametrize("turn", ["first", "second"])
def test_each_test_gets_a_new_empty_database_of_its_own(postgres_url, turn):
    assert postgres_url not in urls_seen
    urls_seen.append(postgres_url)
    assert postgres_url.startswith("postgresql://batchgen@127.0.0.1:")
    assert user_tables(postgres_url) == []
    with psycopg.connect(postgres_url) as connection:
        connection.execute("CREATE TABLE jobs (id integer PRIMARY KEY)")
        connection.execute("INSERT INTO jobs VALUES (1)")
    assert user_tables(postgres_url) == ["public.jobs"]


def test_two_databases_on_one_server_accept_connections_and_share_nothing(
    postgres_cluster, postgres_url
):
    other = postgres.new_database(postgres_cluster)
    try:
        assert other != postgres_url
        with psycopg.connect(postgres_url) as first, psycopg.connect(other) as second:
            first.execute("CREATE TABLE jobs (id integer)")
            first.commit()
            names = [c.execute("SELECT current_database()").fetchone()[0] for c in (first, second)]
            assert names[0] != names[1]
        assert user_tables(postgres_url) == ["public.jobs"]
        assert user_tables(other) == []
    finally:
        postgres.drop_database(postgres_cluster, other)
    assert not accepts_connections(other)  # dropped


def test_the_server_does_not_run_as_root_but_as_the_postgres_user_when_tests_run_as_root(
    postgres_url,
):
    with psycopg.connect(postgres_url) as connection:
        server_pid, data_directory = connection.execute(
            "SELECT pg_backend_pid(), current_setting('data_directory')"
        ).fetchone()
        server_uid = Path(f"/proc/{server_pid}").stat().st_uid  # the process serving us
    expected = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert server_uid == expected != 0
    assert Path(data_directory).stat().st_uid == expected


def test_a_stopped_cluster_leaves_no_server_and_no_directory():
    cluster = postgres.start_cluster()
    assert accepts_connections(cluster.url("postgres"))
    cluster.stop()
    assert not accepts_connections(cluster.url("postgres"))
    assert not cluster.base.exists()
    cluster.stop()  # again: nothing to do


def test_a_durable_cluster_keeps_its_data_on_disk_and_fsyncs_it_as_a_server_does():
    cluster = postgres.start_cluster(durable=True)
    try:
        assert cluster.base.parent == Path(tempfile.gettempdir())
        with psycopg.connect(cluster.url("postgres")) as connection:
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                assert connection.execute(f"SHOW {setting}").fetchone() == ("on",)
    finally:
        cluster.stop()
    assert not cluster.base.exists()


def test_a_cluster_whose_test_process_was_killed_is_stopped_by_the_next_start():
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tests.postgres import start_cluster\n"
            "cluster = start_cluster()\n"
            "print(cluster.base, cluster.url('postgres'), flush=True)\n"
            "input()\n",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    base, url = child.stdout.readline().split()
    child.send_signal(signal.SIGKILL)  # no atexit, no fixture teardown
    child.wait(timeout=30)
    assert accepts_connections(url)  # left behind

    cluster = postgres.start_cluster()
    try:
        assert not accepts_connections(url)
        assert not Path(base).exists()
        assert accepts_connections(cluster.url("postgres"))
    finally:
        cluster.stop()


def test_without_postgresql_a_test_is_skipped_saying_how_to_install_it(monkeypatch):
    monkeypatch.setattr(postgres, "server_bindir", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        postgres.cluster_for_tests()


def test_without_postgresql_ci_fails_rather_than_skipping(monkeypatch):
    monkeypatch.setattr(postgres, "server_bindir", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as outcome:
        postgres.cluster_for_tests()  # (a skip, uncaught, would pass as a skip)
    assert outcome.type is pytest.fail.Exception
    assert "CI must run the PostgreSQL tests" in str(outcome.value)
    assert "apt-get install postgresql" in str(outcome.value)
