"""A PostgreSQL server that goes away mid-run (PRODUCT.md §10): a restart, connections cut
at random moments. It is handled like a locked ledger: the run waits, saying so, keeps
every answer (the recovery file), carries on when the server is back, and never shows a
traceback. Every promise is read from the sandbox's own record (tests/promises.py).

PostgreSQL's alone: a SQLite file has no server to lose (its locks are
tests/test_contention.py's).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
import pytest

from batchgen.ledger import Ledger
from tests.e2e import FAST, StderrWatch, batchgen, grok_batch, rows, spawn, wait_for
from tests.promises import check_the_promises

KEY = "okpk_outage_1111"


def completed_jobs(url: str) -> int:
    return int(rows(url, "SELECT COUNT(*) AS n FROM jobs WHERE status = 'completed'")[0]["n"])


def start_run(make_sandbox: Any, url: str, tmp_path: Any, jobs: int, **knobs: Any) -> Any:
    sandbox = make_sandbox(keys={KEY: 100_000_000}, **knobs)
    manifest = grok_batch(tmp_path / "m.yaml", jobs)
    ingested = batchgen("ingest", str(manifest), ledger=url)
    assert ingested.returncode == 0, ingested.stderr
    process = spawn("resume", *FAST, ledger=url, base_url=sandbox.base_url, key=KEY)
    return sandbox, process, StderrWatch(process)


def test_a_server_restart_mid_run_is_waited_for_and_the_run_carries_on(
    make_sandbox, postgres_cluster, postgres_url, tmp_path
):
    """The server stops while tasks are in flight and comes back 2 s later: the run says it
    waits, then follows every task to its end; nothing is submitted twice."""
    sandbox, process, stderr = start_run(make_sandbox, postgres_url, tmp_path, 12, time_scale=0.03)
    wait_for(lambda: len(sandbox.sim.truth().submissions) >= 3, what="3 tasks submitted")
    postgres_cluster.pg_ctl("-m", "fast", "stop")
    try:
        time.sleep(3)  # the outage: the sandbox's tasks go on meanwhile
    finally:
        log = str(postgres_cluster.base / "server.log")  # its output not held by the test
        postgres_cluster.pg_ctl("-w", "-l", log, "restart")
    assert process.wait(timeout=120) == 0, stderr.text()
    text = process.stdout.read() + stderr.text()
    assert "Traceback" not in text, text
    # Said, by a read that waits for the server or by a write that keeps trying:
    assert "waiting for it" in text or "cannot write the ledger" in text, text
    truth = sandbox.sim.truth()
    assert len(truth.submissions) == 12  # one task per job: nothing sent twice
    assert completed_jobs(postgres_url) == 12
    check_the_promises(truth, postgres_url, (KEY,))


def cut_connections(url: str, stop: threading.Event, seed: int) -> int:
    """Terminate every other connection to the database at random moments (every 0.05 to
    0.4 s) until `stop`: a network cut in the middle of whatever the run was doing, a
    COMMIT's answer included. Returns how many connections were cut."""
    draw, cut = random.Random(seed), 0
    with psycopg.connect(url, autocommit=True) as admin:
        while not stop.wait(draw.uniform(0.05, 0.4)):
            cut += len(
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchall()
            )
    return cut


def test_connections_cut_at_random_moments_lose_no_answer_and_pay_nothing_twice(
    make_sandbox, postgres_url, tmp_path
):
    """Every connection of the run is cut again and again, at random moments: each write
    either held or is done again once (a COMMIT whose answer was lost is asked about), and
    every promise holds."""
    sandbox, process, stderr = start_run(make_sandbox, postgres_url, tmp_path, 20, time_scale=0.02)
    stop, cuts = threading.Event(), []
    cutter = threading.Thread(
        target=lambda: cuts.append(cut_connections(postgres_url, stop, seed=23)), daemon=True
    )
    cutter.start()
    try:
        assert process.wait(timeout=180) == 0, stderr.text()
    finally:
        stop.set()
        cutter.join(timeout=10)
    text = stderr.text()
    assert "Traceback" not in text, text
    assert cuts and cuts[0] > 0  # the run's connections were cut
    truth = sandbox.sim.truth()
    assert completed_jobs(postgres_url) == 20
    check_the_promises(truth, postgres_url, (KEY,))


def probes(url: str) -> int:
    return int(rows(url, "SELECT COUNT(*) AS n FROM events WHERE kind = 'probe'")[0]["n"])


def test_a_write_cut_before_its_commit_fails_and_leaves_nothing(postgres_url):
    """The connection is cut inside a write: the write fails (the run retries it, keeping
    its answer meanwhile), nothing of it is in the ledger, and the next write works."""
    ledger = Ledger(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        with pytest.raises(psycopg.OperationalError):
            with ledger.transaction() as db:
                db.execute("INSERT INTO events (at, kind) VALUES ('now', 'probe')")
                (pid,) = db.execute("SELECT pg_backend_pid()").fetchone()
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert probes(postgres_url) == 0
    with ledger.transaction() as db:
        db.execute("INSERT INTO events (at, kind) VALUES ('now', 'probe')")
    assert probes(postgres_url) == 1
    ledger.close()


def test_a_commit_whose_answer_is_lost_is_known_to_have_held(postgres_url, monkeypatch):
    """The server commits, and the connection goes before its answer arrives (the one
    moment a write's outcome is unknown): the ledger asks the server about that
    transaction on a new connection, and takes the write as done, once."""
    ledger = Ledger(postgres_url)
    real = ledger.conn._execute

    def commit_then_cut(sql: str, params: Any) -> Any:
        result = real(sql, params)
        if sql == "COMMIT":
            ledger.conn._conn.close()  # the answer never arrives
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return result

    monkeypatch.setattr(ledger.conn, "_execute", commit_then_cut)
    with ledger.transaction() as db:
        db.execute("INSERT INTO events (at, kind) VALUES ('now', 'probe')")
    monkeypatch.undo()
    assert probes(postgres_url) == 1
    ledger.close()
