"""The ledger's schema, as recorded migrations: one `mNNN_` function per change, applied once.

A migration never changes once released; a new column is a new migration. `migrate`
records each applied name in `_migrations`, so an old ledger file is brought up to date
by the next batchgen that opens it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

JOB_STATUSES = ("queued", "submitting", "running", "completed", "failed", "held")

# What an attempt's state means for money (see README "The ledger"):
#   sending    request intent committed, no answer yet (a crash leaves it: unknown outcome)
#   running    task created and charged, not finished        -> in_flight
#   completed  task completed                                 -> spent
#   failed     task failed (refunded: cost 0, refunded = price) -> spent (cost) / refunded
#   unknown    request left, no usable answer                 -> unknown (possible cost)
#   rejected   400: the service refused it                    -> nothing
#   error      500: answered, no task                         -> nothing
#   not_sent   429, 401, 402, connect error: no task          -> nothing (not an attempt)
ATTEMPT_STATES = (
    "sending",
    "running",
    "completed",
    "failed",
    "unknown",
    "rejected",
    "error",
    "not_sent",
)


def m001_initial(db: sqlite3.Connection) -> None:
    statuses = ", ".join(f"'{s}'" for s in JOB_STATUSES)
    states = ", ".join(f"'{s}'" for s in ATTEMPT_STATES)
    _run_script(
        db,
        f"""
    CREATE TABLE campaigns (
        name             TEXT PRIMARY KEY,
        manifest_path    TEXT NOT NULL,
        manifest_sha256  TEXT NOT NULL,
        budget_micro_usd INTEGER,            -- NULL: no cap
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL
    );
    CREATE TABLE jobs (
        campaign         TEXT NOT NULL REFERENCES campaigns(name),
        id               TEXT NOT NULL,
        position         INTEGER NOT NULL,   -- order of ingestion within the campaign
        model            TEXT NOT NULL,
        kind             TEXT NOT NULL,      -- video | image
        prompt           TEXT NOT NULL,
        duration         INTEGER,
        ratio            TEXT,
        variant          TEXT,
        ref_mode         TEXT,
        resolution       TEXT,
        media            TEXT,               -- JSON list of {{type, url}}
        tags             TEXT NOT NULL DEFAULT '[]',  -- JSON list
        request          TEXT NOT NULL,      -- the JSON body POSTed
        fingerprint      TEXT NOT NULL,      -- SHA-256 of request + tags
        price_micro_usd  INTEGER NOT NULL,   -- what one accepted attempt costs
        status           TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ({statuses})),
        reason           TEXT,               -- why it waits or failed (budget, balance, ...)
        task_id          TEXT,               -- the current attempt's task
        progress         INTEGER,
        result_urls      TEXT,               -- JSON list
        cost_micro_usd   INTEGER NOT NULL DEFAULT 0,  -- charged for its completed task
        attempts         INTEGER NOT NULL DEFAULT 0,  -- attempts counted since ingest or retry
        last_error       TEXT,
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        submitted_at     TEXT,               -- when its current task was created
        finished_at      TEXT,
        PRIMARY KEY (campaign, id)
    );
    CREATE INDEX jobs_by_status ON jobs (status, campaign, position);
    CREATE INDEX jobs_by_position ON jobs (campaign, position);
    CREATE TABLE attempts (
        id                   INTEGER PRIMARY KEY,
        campaign             TEXT NOT NULL,
        job_id               TEXT NOT NULL,
        started_at           TEXT NOT NULL,  -- committed before the request is sent
        answered_at          TEXT,
        fingerprint          TEXT NOT NULL,  -- of the job content sent
        http_status          INTEGER,
        outcome              TEXT,           -- what the answer meant, in words
        counted              INTEGER NOT NULL DEFAULT 1,  -- counts toward --max-attempts
        task_id              TEXT,
        unit_price_micro_usd INTEGER NOT NULL,
        cost_micro_usd       INTEGER NOT NULL DEFAULT 0,  -- charged and kept
        refunded_micro_usd   INTEGER NOT NULL DEFAULT 0,
        state                TEXT NOT NULL CHECK (state IN ({states})),
        error                TEXT,
        finished_at          TEXT,
        FOREIGN KEY (campaign, job_id) REFERENCES jobs (campaign, id)
    );
    CREATE INDEX attempts_by_job ON attempts (campaign, job_id);
    CREATE INDEX attempts_by_state ON attempts (state, campaign);
    CREATE TABLE events (
        id       INTEGER PRIMARY KEY,
        at       TEXT NOT NULL,
        campaign TEXT,
        job_id   TEXT,
        kind     TEXT NOT NULL,
        detail   TEXT
    );
    CREATE INDEX events_by_job ON events (campaign, job_id);
    CREATE TABLE files (
        campaign      TEXT NOT NULL,
        job_id        TEXT NOT NULL,
        n             INTEGER NOT NULL,      -- index in the job's result_urls
        url           TEXT NOT NULL,
        path          TEXT,
        size          INTEGER,
        sha256        TEXT,
        downloaded_at TEXT,
        error         TEXT,
        PRIMARY KEY (campaign, job_id, n)
    );
    CREATE TABLE runner (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        pid        INTEGER NOT NULL,
        host       TEXT NOT NULL,
        command    TEXT NOT NULL,
        started_at TEXT NOT NULL
    );
    """,
    )


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it commits first, and a migration must stay in one transaction.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def m002_observed_times(db: sqlite3.Connection) -> None:
    """The generation time one process saw a task take, followed without a break from
    its submission's answer to its completion: what pacing learns from. NULL for a task
    taken over on resume (its time since submission includes the time no process ran)
    and for every attempt recorded before this column existed."""
    _run_script(
        db,
        """
    ALTER TABLE attempts ADD COLUMN observed_seconds REAL;
    CREATE INDEX attempts_observed ON attempts (id) WHERE observed_seconds IS NOT NULL
    """,
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [m001_initial, m002_observed_times]


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply every migration not yet recorded in this file, each in its own transaction."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied = []
    for migration in MIGRATIONS:
        if migration.__name__ in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated between our read and our lock.
            if db.execute(
                "SELECT 1 FROM _migrations WHERE name = ?", (migration.__name__,)
            ).fetchone():
                db.execute("ROLLBACK")
                continue
            migration(db)
            db.execute(
                "INSERT INTO _migrations VALUES (?, ?)",
                (migration.__name__, datetime.now(UTC).isoformat()),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(migration.__name__)
    return applied
